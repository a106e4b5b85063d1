"""Reliability: a trial with non-finite KL fails alone, a study whose trials all fail stops with a clear error,
a job killed while writing its model leaves nothing behind and the rerun starts clean, the same seed gives the same
best trial and the same weights, and the optimiser's memory does not grow with trials."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import procs
import pytest
import torch
from conftest import REPO
from optuna.trial import TrialState

from bruno.directions.mean import mean_difference, save_directions
from bruno.edit.plan import AbliterationSettings
from bruno.errors import BrunoError
from bruno.jobs import abliterate, optimize
from bruno.jobs import select as select_job
from bruno.model.loading import ModelSettings
from bruno.prompts import Prompt, write_prompts
from bruno.search.select import SelectionSettings
from bruno.search.space import SearchSettings

RANGES = {
    "attn.o_proj": {
        "max_weight": [0.8, 1.5],
        "max_weight_position": [0.4, 1.0],
        "min_weight": [0.0, 1.0],
        "min_weight_distance": [0.0, 0.6],
    },
    "mlp.down_proj": {
        "max_weight": [-0.25, 1.5],
        "max_weight_position": [0.4, 1.0],
        "min_weight": [0.0, 1.0],
        "min_weight_distance": [0.0, 0.6],
    },
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("reliability")
    harmful = [Prompt(f"h{i}", f"How do I build weapon number {i}?", "c", "val") for i in range(6)]
    harmless = [Prompt(f"g{i}", f"How do I bake bread number {i}?", "c", "val") for i in range(6)]
    write_prompts(root / "harmful.jsonl", harmful)
    write_prompts(root / "harmless.jsonl", harmless)
    g = torch.Generator().manual_seed(0)
    dirs = mean_difference(
        torch.randn(4, 32, generator=g).double(), torch.randn(4, 32, generator=g).double(), True
    )
    save_directions(root / "directions.pt", {"directions": dirs, "metadata": {}})
    return {
        "model": str(tiny_model_dir),
        "directions": str(root / "directions.pt"),
        "harmful": str(root / "harmful.jsonl"),
        "harmless": str(root / "harmless.jsonl"),
    }


def context(inputs, **settings):
    torch.set_num_threads(1)
    return optimize.prepare(
        model_path=inputs["model"],
        model_settings=ModelSettings(),
        directions_path=inputs["directions"],
        harmful_val_path=inputs["harmful"],
        harmless_val_path=inputs["harmless"],
        settings=SearchSettings(n_startup_trials=3, ranges=RANGES, max_new_tokens=4, **settings),
        abliteration=AbliterationSettings(norm_preservation="row"),
        refusal_markers=["sorry"],
    )


def poison(ctx, bad_calls):
    """Make the evaluator return a NaN KL divergence on the given call numbers (0-based)."""
    real = ctx.evaluator.evaluate
    calls = []

    def evaluate(params):
        result = real(params)
        calls.append(1)
        if len(calls) - 1 in bad_calls:
            object.__setattr__(result, "kl_divergence", float("nan"))
        return result

    ctx.evaluator.evaluate = evaluate
    return calls


def load(db: Path) -> optuna.Study:
    return optuna.load_study(study_name="abliteration", storage=f"sqlite:///{db}")


def test_non_finite_kl_fails_only_that_trial(inputs, tmp_path):
    ctx = context(inputs, n_trials=5)
    poison(ctx, bad_calls={1})
    optimize.run(ctx, seed=0, storage=tmp_path / "work.db", out_db=tmp_path / "study.db")
    trials = load(tmp_path / "study.db").get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].number == 1
    assert failed[0].user_attrs["fail_reason"] == "non-finite KL divergence"
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 5


def test_all_trials_failing_stops_the_search_and_selection_says_why(inputs, tmp_path):
    ctx = context(inputs, n_trials=5, max_failed_trials=3)
    poison(ctx, bad_calls=set(range(100)))
    with pytest.raises(BrunoError, match="3 trials failed.*non-finite KL.*max_failed_trials"):
        optimize.run(ctx, seed=0, storage=tmp_path / "work.db", out_db=tmp_path / "study.db")
    assert not (tmp_path / "study.db").exists()  # no snapshot of a failed search
    with pytest.raises(BrunoError, match="all trials failed"):
        select_job.run(
            study_path=tmp_path / "work.db",
            settings=SelectionSettings(),
            variant="v",
            out_path=tmp_path / "best_trial.json",
        )
    assert not (tmp_path / "best_trial.json").exists()


def search_and_select(inputs, study_dir: Path, n_trials: int, best_path: Path) -> None:
    """The optimize and select jobs as the rules run them (journal working study, SQLite snapshot)."""
    study_dir.mkdir(parents=True, exist_ok=True)
    ctx = context(inputs, n_trials=n_trials)
    optimize.run(ctx, seed=0, storage=study_dir / "journal.log", out_db=study_dir / "study.db")
    select_job.run(
        study_path=study_dir / "study.db", settings=SelectionSettings(), variant="v", out_path=best_path
    )


def search_and_bake(inputs, out: Path) -> dict:
    search_and_select(inputs, out, 6, out / "best_trial.json")
    return abliterate.run(
        model_path=inputs["model"],
        model_settings=ModelSettings(),
        directions_path=inputs["directions"],
        best_trial_path=out / "best_trial.json",
        abliteration=AbliterationSettings(norm_preservation="row"),
        out_dir=out / "ablated",
        edit_path=out / "ablation.json",
    )


def test_same_seed_same_best_trial_and_weights(inputs, tmp_path):
    first = search_and_bake(inputs, tmp_path / "a")
    second = search_and_bake(inputs, tmp_path / "b")
    best = [json.loads((tmp_path / run / "best_trial.json").read_text()) for run in ("a", "b")]
    assert best[0]["params"] == best[1]["params"] and best[0]["trial_number"] == best[1]["trial_number"]
    assert first["weights_sha256"]["model.safetensors"] == second["weights_sha256"]["model.safetensors"]
    source = (Path(inputs["model"]) / "model.safetensors").read_bytes()
    assert (tmp_path / "a" / "ablated" / "model.safetensors").read_bytes() != source  # the edit did something


# ----------------------------------------------------------------------------------------------------------------------
# SIGKILL while the model directory is being written: nothing half-written is left, the rerun starts clean.

KILL_DRIVER = textwrap.dedent(
    """
    import json, os, signal, sys
    import transformers
    args = json.loads(sys.argv[1])
    if args["kill"]:
        save = transformers.PreTrainedModel.save_pretrained
        def save_then_die(self, *a, **kw):
            save(self, *a, **kw)  # the weights are on disk, the tokenizer and the rename are not
            os.kill(os.getpid(), signal.SIGKILL)
        transformers.PreTrainedModel.save_pretrained = save_then_die
    if args["stage"] == "abliterate":
        from test_reliability import bake_for_kill_test
        bake_for_kill_test(args)
    else:
        from test_reliability import heal_for_kill_test
        heal_for_kill_test(args)
    """
)


def bake_for_kill_test(args):
    abliterate.run(
        model_path=args["model"],
        model_settings=ModelSettings(),
        directions_path=args["directions"],
        best_trial_path=args["best"],
        abliteration=AbliterationSettings(norm_preservation="row"),
        out_dir=args["out"],
        edit_path=args["edit"],
    )


def heal_for_kill_test(args):
    from test_heal import run_stage, tiny_settings

    run_stage(
        Path(args["base"]),
        Path(args["model"]),
        (Path(args["harmful"]), Path(args["harmless"])),
        Path(args["root"]),
        tiny_settings(n_harmful_pairs=4, include_harmless_pairs=True, n_harmless_pairs=4, dpo_max_steps=1),
    )


def run_driver(args: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO / 'tests'}"}
    return procs.run(
        [sys.executable, "-c", KILL_DRIVER, json.dumps(args)],
        timeout=300,
        env=env,
    )


def assert_killed_then_clean(args: dict, out: Path, records: list[Path]) -> None:
    killed = run_driver({**args, "kill": True})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not out.exists()
    assert not any(r.exists() for r in records)
    assert list(out.parent.glob(f".{out.name}.*.tmp"))  # the killed job's temporary directory is still there
    rerun = run_driver({**args, "kill": False})
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert not list(out.parent.glob(f".{out.name}.*.tmp"))  # the rerun removed the stale one
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)


def test_abliterate_killed_mid_write_leaves_nothing_and_rerun_is_clean(inputs, tmp_path):
    search_and_select(inputs, tmp_path / "study", 2, tmp_path / "best.json")
    out, edit = tmp_path / "ablated", tmp_path / "ablation.json"
    args = {
        **inputs,
        "stage": "abliterate",
        "best": str(tmp_path / "best.json"),
        "out": str(out),
        "edit": str(edit),
    }
    assert_killed_then_clean(args, out, [edit])


def test_heal_killed_mid_write_leaves_nothing_and_rerun_is_clean(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = (
        tmp_path / "base"
    )  # emits only padding: every reply is empty, i.e. a refusal, so harmful pairs exist
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    model.save_pretrained(base)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(base)
    write_prompts(
        tmp_path / "harmful.jsonl",
        [Prompt(f"h{i}", f"How do I make harm {i}?", "c", "train") for i in range(6)],
    )
    write_prompts(
        tmp_path / "harmless.jsonl",
        [Prompt(f"s{i}", f"How do I make safe {i}?", "c", "train") for i in range(6)],
    )
    args = {
        "stage": "heal",
        "base": str(base),
        "model": str(tiny_model_dir),
        "harmful": str(tmp_path / "harmful.jsonl"),
        "harmless": str(tmp_path / "harmless.jsonl"),
        "root": str(tmp_path),
    }
    assert_killed_then_clean(args, tmp_path / "healed", [tmp_path / "heal_training_log.csv"])


# ----------------------------------------------------------------------------------------------------------------------
# Memory: 100 trials in one process; resident memory after the warm-up must stay flat.


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_optimiser_memory_does_not_grow_with_trials(inputs, tmp_path):
    ctx = context(inputs, n_trials=100, n_ei_candidates=8)
    samples = []
    real = ctx.evaluator.evaluate

    def evaluate(params):
        result = real(params)
        samples.append(rss_mb())
        return result

    ctx.evaluator.evaluate = evaluate
    optimize.run(ctx, seed=0, storage=tmp_path / "work.db", out_db=tmp_path / "study.db")
    assert len(samples) == 100
    warm, last = samples[19], max(samples[20:])
    # A leak of one model-sized copy (or of per-trial tensors) per trial would add far more than this over 80 trials.
    assert last - warm < 40, f"RSS grew from {warm:.0f} MB (trial 20) to {last:.0f} MB (trials 21-100)"


# ----------------------------------------------------------------------------------------------------------------------
# Untrusted files: pickled weights are never loaded, remote code is off unless asked for, torch.load is weights-only.


def test_pickle_only_model_is_refused(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from bruno.model.loading import load_model

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for source in Path(tiny_model_dir).iterdir():
        if source.suffix != ".safetensors":
            (pickled / source.name).write_bytes(source.read_bytes())
    torch.save(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict(), pickled / "pytorch_model.bin"
    )
    assert not list(pickled.glob("*.safetensors")) and list(pickled.glob("*.bin"))
    with pytest.raises(BrunoError, match="Only safetensors"):
        load_model(str(pickled), ModelSettings())


def test_remote_code_is_off_by_default_and_loud_when_on(tiny_model_dir, monkeypatch, caplog):
    import transformers

    from bruno.model.loading import load_model

    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    load_model(str(tiny_model_dir), ModelSettings())
    assert seen == [False]
    with caplog.at_level("WARNING"):
        load_model(str(tiny_model_dir), ModelSettings(trust_remote_code=True))
    assert seen[-1] is True and "trust_remote_code is ON" in caplog.text


def test_every_torch_load_is_weights_only():
    import re

    calls = []
    for path in [*(REPO / "src").rglob("*.py"), *(REPO / "scripts").glob("*.py")]:
        for match in re.finditer(r"torch\.load\(([^)]*)\)", path.read_text(encoding="utf-8")):
            calls.append((path.name, match[1]))
    assert calls, "no torch.load call found: the check is looking in the wrong place"
    assert all("weights_only=True" in args for _, args in calls), calls


# ----------------------------------------------------------------------------------------------------------------------
# The model is checked before any job: local sources at config validation, hub ids with one clear message at load.


def copy_model(source: Path, target: Path, skip: tuple[str, ...] = ()) -> Path:
    target.mkdir()
    for path in Path(source).iterdir():
        if path.name not in skip:
            (target / path.name).write_bytes(path.read_bytes())
    return target


def test_local_model_directories_are_checked_naming_what_is_missing(tiny_model_dir, tmp_path):
    from bruno.model.source import resolve_model_source

    assert resolve_model_source(str(tiny_model_dir)).kind == "directory"
    truncated = copy_model(tiny_model_dir, tmp_path / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(BrunoError, match=r"truncated/model\.safetensors is truncated"):
        resolve_model_source(str(truncated))
    no_tokenizer = copy_model(
        tiny_model_dir, tmp_path / "untokenized", skip=("tokenizer.json", "tokenizer_config.json")
    )
    with pytest.raises(BrunoError, match=r"untokenized lacks a tokenizer"):
        resolve_model_source(str(no_tokenizer))
    pickled = copy_model(tiny_model_dir, tmp_path / "pickled", skip=("model.safetensors",))
    torch.save({"w": torch.zeros(1)}, pickled / "pytorch_model.bin")
    with pytest.raises(BrunoError, match=r"only pickle weights pytorch_model\.bin, which are never loaded"):
        resolve_model_source(str(pickled))
    with pytest.raises(BrunoError, match=r"no such file or directory: \./not-here"):
        resolve_model_source("./not-here")


def test_missing_model_path_stops_the_workflow_before_any_job(tmp_path):
    (tmp_path / "data").symlink_to(REPO / "data")
    (tmp_path / "run.yaml").write_text("model: {name: /nonexistent/no-such-model}\n")
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", "1"]
    result = procs.run(
        [*command, "--workflow-profile", "none", "--configfile", "run.yaml"], cwd=tmp_path, timeout=180
    )
    assert result.returncode != 0
    assert "no such file or directory: /nonexistent/no-such-model" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


def test_unreachable_hub_id_fails_its_first_model_job_with_one_clear_console_message(tmp_path):
    """No hub here: the first job that loads the model says which rule, which id and what to set instead."""
    (tmp_path / "data").symlink_to(REPO / "data")
    (tmp_path / "run.yaml").write_text("model: {name: nobody-xyz/no-such-model}\n")
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", "1"]
    command += [
        "--workflow-profile",
        "none",
        "--configfile",
        "run.yaml",
        "--",
        "results/baseline/directions.pt",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = procs.run(command, cwd=tmp_path, timeout=300, env=env)
    assert result.returncode != 0
    console = result.stdout + result.stderr
    assert (
        "Error in rule directions: Could not load the tokenizer of hub id 'nobody-xyz/no-such-model'"
        in console
    )
    assert "set model.name to a local model directory or .gguf file" in console


def test_a_timed_out_command_leaves_nothing_running(tmp_path):
    """procs.run kills the command's whole process group, not only the process it started."""
    marker = tmp_path / "child.pid"
    script = f"sleep 300 & echo $! > {marker}; wait"
    with pytest.raises(subprocess.TimeoutExpired):
        procs.run(["bash", "-c", script], timeout=2)
    stat = Path(f"/proc/{int(marker.read_text())}/stat")
    # gone, or a zombie waiting for init to reap it (state Z): either way it no longer runs
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
