"""Search space, warm start, selection rule, fingerprinting, and resume after SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import optuna
import procs
import pytest
import torch
from conftest import REPO
from optuna.trial import TrialState, create_trial

from bruno.errors import BrunoError
from bruno.prompts import Prompt, write_prompts
from bruno.search.select import SelectionSettings, select_trial
from bruno.search.space import SearchSettings, SearchSpace
from bruno.search.study import open_study

COMPONENTS = ["attn.o_proj", "mlp.down_proj"]
RANGES = {
    "attn.o_proj": {
        "max_weight": [0.8, 1.5],
        "max_weight_position": [0.6, 1.0],
        "min_weight": [0.0, 1.0],
        "min_weight_distance": [0.0, 0.6],
    },
    "mlp.down_proj": {
        "max_weight": [-0.25, 1.5],
        "max_weight_position": [0.6, 1.0],
        "min_weight": [0.0, 1.0],
        "min_weight_distance": [0.0, 0.6],
    },
}


def space(n_layers=11, scopes=("global", "per layer")):
    return SearchSpace.resolve(
        SearchSettings(ranges=RANGES, direction_scopes=list(scopes)), n_layers, COMPONENTS
    )


def test_ranges_scale_with_depth():
    s = space(11)  # last layer index 10
    assert s.direction_index == pytest.approx((4.0, 9.0))
    assert s.kernels["attn.o_proj"]["max_weight_position"] == pytest.approx((6.0, 10.0))
    assert s.kernels["attn.o_proj"]["min_weight_distance"] == pytest.approx((1.0, 6.0))  # floor of one layer


def test_to_params_clamps_mlp_and_scales_min_weight():
    s = space()
    values = {
        "direction_scope": "global",
        "direction_index": 5.0,
        **{
            f"attn.o_proj.{k}": v
            for k, v in dict(
                max_weight=1.2, max_weight_position=8, min_weight=0.5, min_weight_distance=2
            ).items()
        },
        **{
            f"mlp.down_proj.{k}": v
            for k, v in dict(
                max_weight=-0.1, max_weight_position=8, min_weight=0.5, min_weight_distance=2
            ).items()
        },
    }
    params = s.to_params(values)
    assert params.kernels["attn.o_proj"].min_weight == pytest.approx(0.6)
    assert params.kernels["mlp.down_proj"].max_weight == 0.0
    assert all(w == 0.0 for w in params.layer_weights(11)["mlp.down_proj"])
    per_layer = s.to_params({**values, "direction_scope": "per layer"})
    assert per_layer.direction_index is None  # recorded as unused, never silently applied


def test_single_scope_drops_dead_parameters():
    dists = space(scopes=("per layer",)).distributions()
    assert "direction_index" not in dists and "direction_scope" not in dists
    assert "direction_scope" not in space(scopes=("global",)).distributions()


def test_full_strength_warm_start_is_in_range_and_full():
    s = space(6)
    values = s.full_strength()
    for name, dist in s.distributions().items():
        if hasattr(dist, "low"):
            assert dist.low <= values[name] <= dist.high, name
    weights = s.to_params(values).layer_weights(6)
    assert all(w == pytest.approx(1.0) for ws in weights.values() for w in ws)


def _trial(number, kl, refusal):
    t = create_trial(values=[kl, refusal], params={}, distributions={})
    t.number = number
    return t


def test_selection_rule():
    trials = [_trial(0, 0.30, 0.0), _trial(1, 0.05, 0.04), _trial(2, 0.01, 0.5), _trial(3, 0.05, 0.0)]
    best, info = select_trial(trials, SelectionSettings(max_refusal_rate=0.05))
    assert best.number == 1 and info["qualified_trials"] == 3  # lowest KL among qualified, earliest on ties
    best, info = select_trial(trials, SelectionSettings(max_refusal_rate=0.0))
    assert best.number == 3
    best, info = select_trial(
        [_trial(0, 0.2, 0.3), _trial(1, 0.1, 0.3), _trial(2, 0.01, 0.6)], SelectionSettings(0.05)
    )
    assert best.number == 1 and "fewest refusals" in info["rule"]
    with pytest.raises(BrunoError, match="no COMPLETE"):
        select_trial([], SelectionSettings())


def test_fingerprint_mismatch_is_an_error(tmp_path):
    sampler = optuna.samplers.TPESampler(seed=0)
    open_study(tmp_path / "s.db", {"search_space": "a", "objectives": ["kl"]}, 2, sampler)
    open_study(tmp_path / "s.db", {"search_space": "a", "objectives": ["kl"]}, 2, sampler)  # same: resumes
    with pytest.raises(BrunoError, match="changed: search_space"):
        open_study(tmp_path / "s.db", {"search_space": "b", "objectives": ["kl"]}, 2, sampler)


def test_stale_journal_lock_of_a_killed_run_is_released(tmp_path):
    from optuna.storages.journal import JournalFileOpenLock

    from bruno.search.study import release_stale_lock

    journal = tmp_path / "journal.log"
    assert not release_stale_lock(journal)  # nothing to release
    assert JournalFileOpenLock(str(journal)).acquire()  # as left by a process killed while appending
    assert release_stale_lock(journal)
    assert JournalFileOpenLock(str(journal)).acquire()  # free again, without waiting for the grace period
    assert not release_stale_lock(tmp_path / "study.db")  # SQLite has no lock file


# ----------------------------------------------------------------------------------------------------------------------
# Resume after SIGKILL, on a tiny model, through the real optimize job.

DRIVER = textwrap.dedent(
    """
    import sys
    import torch
    from bruno.jobs import optimize
    from bruno.model.loading import ModelSettings
    from bruno.search.space import SearchSettings
    from bruno.edit.plan import AbliterationSettings
    import json
    args = json.loads(sys.argv[1])
    torch.set_num_threads(1)
    from bruno.evaluation.stage import EvaluationSettings
    evaluation = EvaluationSettings(**args["evaluation"]) if "evaluation" in args else None
    ctx = optimize.prepare(model_path=args["model"], model_settings=ModelSettings(), directions_path=args["directions"],
        harmful_val_path=args["harmful"], harmless_val_path=args["harmless"],
        settings=SearchSettings(n_trials=args["n_trials"], n_startup_trials=3, ranges=args["ranges"], max_new_tokens=args["tokens"], **args.get("extra", {})),
        abliteration=AbliterationSettings(norm_preservation="row"), refusal_markers=["sorry"], evaluation=evaluation)
    mode = args.get("mode", "single")
    from bruno.search.select import SelectionSettings
    selection = SelectionSettings(**args["selection"]) if "selection" in args else None
    if mode == "single":
        optimize.run(ctx, seed=0, storage=args["work"], out_db=args["out"], selection=selection)
    elif mode == "init":
        optimize.init(ctx, seed=0, journal=args["journal"])
    elif mode == "snapshot":  # the optimize job after several workers: confirm, then snapshot
        optimize.snapshot_only(args["journal"], args["out"], ctx, selection)
    else:
        optimize.work(ctx, seed=0, journal=args["journal"], worker=args["worker"])
    """
)


@pytest.fixture
def search_inputs(tmp_path, tiny_model_dir):
    import json

    from bruno.directions.mean import mean_difference, save_directions

    harmful = [Prompt(f"h{i}", f"How do I build weapon number {i}?", "c", "val") for i in range(6)]
    harmless = [Prompt(f"g{i}", f"How do I bake bread number {i}?", "c", "val") for i in range(6)]
    write_prompts(tmp_path / "harmful.jsonl", harmful)
    write_prompts(tmp_path / "harmless.jsonl", harmless)
    g = torch.Generator().manual_seed(0)
    dirs = mean_difference(
        torch.randn(4, 32, generator=g).double(), torch.randn(4, 32, generator=g).double(), True
    )
    save_directions(tmp_path / "directions.pt", {"directions": dirs, "metadata": {}})
    args = {
        "model": str(tiny_model_dir),
        "directions": str(tmp_path / "directions.pt"),
        "harmful": str(tmp_path / "harmful.jsonl"),
        "harmless": str(tmp_path / "harmless.jsonl"),
        "ranges": RANGES,
        "work": str(tmp_path / "journal.log"),  # the rule's working storage
        "out": str(tmp_path / "study.db"),
    }
    return SimpleNamespace(args=args, run=lambda **kw: procs.run(
        [sys.executable, "-c", DRIVER, json.dumps({**args, **kw})], timeout=300, env=_env()
    ), popen=lambda **kw: procs.popen(
        [sys.executable, "-c", DRIVER, json.dumps({**args, **kw})], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env()
    ))  # fmt: skip


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO / "src")}


def _trials(path):
    from bruno.search.study import make_storage

    return optuna.load_study(study_name="abliteration", storage=make_storage(path)).get_trials()


def test_killed_search_resumes_without_losing_trials(search_inputs):
    work = search_inputs.args["work"]
    proc = search_inputs.popen(n_trials=400, tokens=200)  # long trials: the kill lands mid-trial
    deadline = time.time() + 120
    completed = []
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            completed = [t for t in _trials(work) if t.state == TrialState.COMPLETE]
        except Exception:  # study not created yet
            continue
        if len(completed) >= 3:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {t.number: t.values for t in _trials(work) if t.state == TrialState.COMPLETE}
    running = [t.number for t in _trials(work) if t.state == TrialState.RUNNING]
    assert len(before) >= 3 and len(running) <= 1
    target = len(before) + 2
    result = search_inputs.run(n_trials=target, tokens=200)
    assert result.returncode == 0, result.stderr[-2000:]
    after = _trials(work)
    complete = {t.number: t.values for t in after if t.state == TrialState.COMPLETE}
    assert len(complete) == target
    assert all(complete[n] == v for n, v in before.items())  # nothing completed was lost or changed
    for number in running:  # the trial the kill interrupted is marked failed, with the reason
        trial = next(t for t in after if t.number == number)
        assert trial.state == TrialState.FAIL and "RUNNING" in trial.user_attrs["fail_reason"]
    assert os.path.exists(search_inputs.args["out"])  # snapshot written when the search ended


def test_same_seed_same_trials(search_inputs, tmp_path):
    first = search_inputs.run(n_trials=4, tokens=4)
    assert first.returncode == 0, first.stderr[-2000:]
    values_a = [(t.params, t.values) for t in _trials(search_inputs.args["work"])]
    second = search_inputs.run(
        n_trials=4, tokens=4, work=str(tmp_path / "work2.log"), out=str(tmp_path / "study2.db")
    )
    assert second.returncode == 0, second.stderr[-2000:]
    values_b = [(t.params, t.values) for t in _trials(tmp_path / "work2.log")]
    assert values_a == values_b


def test_the_search_job_confirms_its_candidates_for_selection(search_inputs, tmp_path):
    from bruno.jobs import select

    selection = {"confirm_prompts": 3, "confirm_candidates": 2, "confirm_max_new_tokens": 5}
    result = search_inputs.run(n_trials=4, tokens=3, extra={"n_refusal_prompts": 3}, selection=selection)
    assert result.returncode == 0, result.stderr[-2000:]
    study = optuna.load_study(study_name="abliteration", storage=f"sqlite:///{search_inputs.args['out']}")
    confirmation = study.user_attrs["confirmation"]  # in the snapshot select reads
    assert confirmation["settings"]["max_new_tokens"] == 5 and len(confirmation["trials"]) == 2
    assert all(c["n_prompts"] == 3 for c in confirmation["trials"].values())
    best = select.run(search_inputs.args["out"], SelectionSettings(**selection), "v", tmp_path / "best.json")
    assert str(best["trial_number"]) in confirmation["trials"]
    assert best["metrics_confirmation"] == confirmation["trials"][str(best["trial_number"])]
    assert "confirmed" in best["selection"]["rule"]
    with pytest.raises(BrunoError, match="holds no confirmation"):  # a study searched without confirmation
        plain = search_inputs.run(
            n_trials=2, tokens=3, work=str(tmp_path / "w.log"), out=str(tmp_path / "p.db")
        )
        assert plain.returncode == 0, plain.stderr[-2000:]
        select.run(tmp_path / "p.db", SelectionSettings(**selection), "v", tmp_path / "best2.json")
    assert not (tmp_path / "best2.json").exists()


def test_parallel_workers_share_one_journal_study(search_inputs, tmp_path):
    from bruno.search.study import snapshot

    journal = str(tmp_path / "journal.log")
    four = {"n_refusal_prompts": 4}  # of the 6 harmful val prompts: 2 left for the confirmation
    init = search_inputs.run(n_trials=6, tokens=4, mode="init", journal=journal, extra=four)
    assert init.returncode == 0, init.stderr[-2000:]
    workers = [
        search_inputs.popen(n_trials=6, tokens=4, mode="worker", journal=journal, worker=w, extra=four)
        for w in (0, 1)
    ]
    assert [w.wait(timeout=300) for w in workers] == [0, 0]
    snapshot(journal, tmp_path / "merged.db")
    trials = _trials(tmp_path / "merged.db")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert 6 <= len(complete) <= 7  # MaxTrialsCallback may overshoot by workers - 1
    # Which worker ran how many trials depends on timing (under load one may finish all before the other starts).
    assert {t.user_attrs["worker"] for t in complete} <= {0, 1}
    # One study: a worker started after the cap is reached finds the others' trials and adds none.
    late = search_inputs.run(n_trials=6, tokens=4, mode="worker", journal=journal, worker=2, extra=four)
    assert late.returncode == 0, late.stderr[-2000:]
    snapshot(journal, tmp_path / "after.db")
    assert len([t for t in _trials(tmp_path / "after.db") if t.state == TrialState.COMPLETE]) == len(complete)
    # the job that writes the snapshot confirms the candidates when selection asks for it
    selection = {"confirm_prompts": 2, "confirm_candidates": 3}
    final = search_inputs.run(n_trials=6, tokens=4, mode="snapshot", journal=journal, selection=selection,
                              extra=four, out=str(tmp_path / "final.db"))  # fmt: skip
    assert final.returncode == 0, final.stderr[-2000:]
    confirmed = optuna.load_study(study_name="abliteration", storage=f"sqlite:///{tmp_path / 'final.db'}")
    assert len(confirmed.user_attrs["confirmation"]["trials"]) == 3
    assert (
        complete[0].params
        == optuna.load_study(study_name="abliteration", storage=f"sqlite:///{tmp_path / 'merged.db'}")
        .trials[0]
        .params
    )


def test_extra_objectives_make_a_four_objective_study(search_inputs, tmp_path):
    import json

    import yaml

    from bruno.config import validate_config
    from bruno.jobs.select import run as select
    from bruno.search.select import SelectionSettings

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate_config(config)
    evaluation = config["evaluation"]
    for section in ("mmlu", "hallucination"):  # the shipped sets, from the repository
        evaluation[section]["source"]["path"] = str(REPO / evaluation[section]["source"]["path"])
    extra = {"use_hallucination_detection": True, "use_capability_objective": True, "capability_check_n_questions": 8,
             "hallucination_check_n_questions": 3, "hallucination_n_samples": 2}  # fmt: skip
    result = search_inputs.run(n_trials=3, tokens=4, extra=extra, evaluation=evaluation)
    assert result.returncode == 0, result.stderr[-3000:]
    storage = optuna.storages.RDBStorage(f"sqlite:///{search_inputs.args['out']}")
    study = optuna.load_study(study_name="abliteration", storage=storage)
    assert len(study.directions) == 4
    assert study.user_attrs["objectives"] == [
        "kl_divergence",
        "refusal_rate",
        "hallucination_score",
        "capability_loss",
    ]
    assert set(study.user_attrs["base_extra_objectives"]) == {"hallucination_score", "capability_loss"}
    trial = study.get_trials(states=(TrialState.COMPLETE,))[0]
    assert "seconds_capability_loss" in trial.user_attrs and "seconds_hallucination_score" in trial.user_attrs
    best = select(
        search_inputs.args["out"], SelectionSettings(max_refusal_rate=1.0), "v", tmp_path / "best.json"
    )
    assert set(best["metrics_val"]) >= {
        "kl_divergence",
        "refusal_rate",
        "hallucination_score",
        "capability_loss",
    }
    assert best["selection"]["objectives"][2:] == ["hallucination_score", "capability_loss"]
    assert best["selection"]["extra_objectives"] == "constraint" and "extra_limits" in best["selection"]
    assert json.loads((tmp_path / "best.json").read_text())["trial_number"] == best["trial_number"]
    # a changed objective set is a different search: resuming the 4-objective study with 2 objectives is refused
    mismatch = search_inputs.run(n_trials=3, tokens=4)
    assert mismatch.returncode != 0 and "objectives" in mismatch.stderr


def test_selection_with_extra_objectives():
    objectives = ["kl_divergence", "refusal_rate", "hallucination_score", "capability_loss"]

    def trial(number, kl, refusal, hall, cap):
        t = create_trial(values=[kl, refusal, hall, cap], params={}, distributions={})
        t.number = number
        return t

    base = {"hallucination_score": 0.2, "capability_loss": 0.1}
    trials = [trial(0, 0.01, 0.0, 0.5, 0.1), trial(1, 0.02, 0.0, 0.21, 0.11), trial(2, 0.02, 0.0, 0.21, 0.10)]
    best, info = select_trial(trials, SelectionSettings(), objectives, base)
    assert best.number == 1 and info["trials_within_extra_limits"] == 2  # trial 0 hallucinates too much
    best, info = select_trial(trials, SelectionSettings(extra_objectives="tie_break"), objectives, base)
    assert best.number == 0
    best, _ = select_trial(trials[1:], SelectionSettings(extra_objectives="tie_break"), objectives, base)
    assert best.number == 2  # equal KL: lower capability loss wins
    best, info = select_trial(trials[:1], SelectionSettings(), objectives, base)
    assert best.number == 0 and "extra_constraints_dropped" in info


# ----------------------------------------------------------------------------------------------------------------------
# Several trials at once: batched ask/tell and worker processes.


def test_trials_in_flight_are_asked_and_told_in_order(tmp_path):
    from bruno.search.study import TrialFailed, run_study

    study = optuna.create_study(directions=["minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    events = []

    def start(trial, slot):
        events.append(("ask", trial.number, slot))
        trial.suggest_float("x", 0, 1)

    def finish(trial, slot):
        events.append(("tell", trial.number, slot))
        if trial.number == 2:
            raise TrialFailed("bad")
        return (trial.params["x"],)

    run_study(study, start, finish, n_trials=4, max_failed_trials=5, slots=2)
    # a freed slot gets the next trial before the following one is told; the failed trial 2 is made up by trial 4
    assert events == [
        ("ask", 0, 0), ("ask", 1, 1), ("tell", 0, 0), ("ask", 2, 0), ("tell", 1, 1), ("ask", 3, 1),
        ("tell", 2, 0), ("ask", 4, 0), ("tell", 3, 1), ("tell", 4, 0),
    ]  # fmt: skip
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 4
    assert study.trials[2].state == TrialState.FAIL

    def broken(trial, slot):
        raise RuntimeError("evaluator crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        run_study(study, start, broken, n_trials=10, max_failed_trials=5, slots=2)
    assert not [
        t for t in study.trials if t.state == TrialState.RUNNING
    ]  # both trials in flight were told FAIL
    assert [t.state for t in study.trials[-2:]] == [TrialState.FAIL, TrialState.FAIL]


def test_parallel_trials_setting_resolves_per_device():
    from bruno.search.pool import MAX_AUTO_PARALLEL_TRIALS, resolve_parallel_trials

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_parallel_trials(3, cuda, 2, None) == 3  # an explicit number is kept
    assert resolve_parallel_trials(0, cuda, 16, None) == 1  # one process per GPU
    assert resolve_parallel_trials(0, cpu, 2, None) == 2
    assert resolve_parallel_trials(0, cpu, 1, None) == 1
    assert resolve_parallel_trials(0, cpu, 64, None) == MAX_AUTO_PARALLEL_TRIALS
    assert resolve_parallel_trials(0, cpu, 4, 2**60) == 1  # no worker copies of a model that does not fit


def test_auto_parallel_trials_start_no_more_model_copies_than_half_the_memory_holds(monkeypatch):
    import types

    import psutil

    from bruno.search.pool import resolve_parallel_trials

    cpu, weights = torch.device("cpu"), 100 * 2**20
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=1000 * 2**20))
    assert (
        resolve_parallel_trials(0, cpu, 8, weights) == 4
    )  # half of 1000 MiB: 5 copies, one of them the job's
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=500 * 2**20))
    assert (
        resolve_parallel_trials(0, cpu, 8, weights) == 1
    )  # 2 copies fit: the job's and one worker's, so none


def test_trial_worker_error_reaches_the_job(tmp_path):
    import functools

    from bruno.search.pool import TrialWorkers

    workers = TrialWorkers(functools.partial(int, "not a number"), 1, 1)  # the factory raises in the worker
    try:
        with pytest.raises(BrunoError, match="(?s)trial worker 1 failed.*invalid literal"):
            workers.wait_ready()
    finally:
        workers.close()
    assert workers.processes == []


def test_parallel_trials_are_reproducible_and_score_like_one_process(search_inputs, tmp_path):
    from bruno.edit.plan import AbliterationSettings
    from bruno.jobs import optimize
    from bruno.model.loading import ModelSettings

    extra = {"parallel_trials": 2}
    first = search_inputs.run(n_trials=6, tokens=4, extra=extra)
    assert first.returncode == 0, first.stderr[-2000:]
    trials = _trials(search_inputs.args["work"])
    second = search_inputs.run(
        n_trials=6, tokens=4, extra=extra, work=str(tmp_path / "work2.log"), out=str(tmp_path / "study2.db")
    )
    assert second.returncode == 0, second.stderr[-2000:]
    assert [(t.params, t.values) for t in trials] == [
        (t.params, t.values) for t in _trials(tmp_path / "work2.log")
    ]
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    study = optuna.load_study(study_name="abliteration", storage=f"sqlite:///{search_inputs.args['out']}")
    assert study.user_attrs["parallel_trials"] == 2
    # Every trial, whichever process scored it, has the values one in-process evaluator gives its parameters.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the driver's evaluators
    try:
        a = search_inputs.args
        ctx = optimize.prepare(model_path=a["model"], model_settings=ModelSettings(), directions_path=a["directions"],
            harmful_val_path=a["harmful"], harmless_val_path=a["harmless"],
            settings=SearchSettings(n_trials=6, n_startup_trials=3, ranges=a["ranges"], max_new_tokens=4),
            abliteration=AbliterationSettings(norm_preservation="row"), refusal_markers=["sorry"], parallel=False)  # fmt: skip
        assert ctx.pool.workers is None
        for trial in trials:
            result = ctx.evaluator.evaluate(ctx.space.to_params(trial.params, ctx.directions.weight_scale))
            assert trial.values == [result.kl_divergence, result.refusal_rate]
    finally:
        torch.set_num_threads(threads)


def test_parallel_search_stops_its_workers(search_inputs, tmp_path):
    from bruno.edit.plan import AbliterationSettings
    from bruno.jobs import optimize
    from bruno.model.loading import ModelSettings

    a = search_inputs.args
    ctx = optimize.prepare(model_path=a["model"], model_settings=ModelSettings(), directions_path=a["directions"],
        harmful_val_path=a["harmful"], harmless_val_path=a["harmless"],
        settings=SearchSettings(n_trials=4, n_startup_trials=3, ranges=a["ranges"], max_new_tokens=4, parallel_trials=3),
        abliteration=AbliterationSettings(norm_preservation="row"), refusal_markers=["sorry"])  # fmt: skip
    processes = list(ctx.pool.workers.processes)
    assert len(processes) == 3 and ctx.pool.size == 3
    optimize.run(ctx, seed=0, storage=tmp_path / "journal.log", out_db=tmp_path / "study.db")
    assert all(p.poll() == 0 for p in processes)  # the workers ended when the search did
    assert ctx.pool.workers is None
    trials = _trials(tmp_path / "journal.log")
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
