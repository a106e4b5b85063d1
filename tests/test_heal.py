"""DPO healing: pair building, the stage on a tiny random model (merged model loads and differs), config wiring."""

from __future__ import annotations

import dataclasses
import json
import random
import re
import sys

import pandas as pd
import procs
import pytest
import torch
import yaml
from conftest import REPO

from bruno.errors import BrunoError
from bruno.evaluation.refusal import MarkerDetector
from bruno.heal.dpo import TRAINING_LOG_COLUMNS, HealingSettings
from bruno.heal.pairs import degrade, harmful_pairs, harmless_pairs
from bruno.jobs.heal import run
from bruno.model.loading import ModelSettings
from bruno.prompts import Prompt, write_prompts

# A marker no random model emits: only empty replies count as refusals in the stage tests.
NEVER = ["\u2603never\u2603"]


def prompts(kind: str, n: int, split: str = "train") -> list[Prompt]:
    return [Prompt(f"{kind}{i}", f"How do I make {kind} thing {i}?", "c", split) for i in range(n)]


def tiny_settings(**overrides) -> HealingSettings:
    values = {
        "enable_post_abliteration_finetuning": True,
        "dpo_learning_rate": 1e-2,
        "dpo_max_steps": 3,
        "lr_scheduler_type": "constant",
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "batch_size": 4,
        "gradient_accumulation_steps": 1,
        "max_length": 64,
        "max_new_tokens": 8,
    }
    return HealingSettings(**(values | overrides))


def test_degrade_truncates_or_permutes_words():
    answer = "one two three four five six"
    assert degrade(answer, "truncate", random.Random(0)) == "one two three"
    shuffled = degrade(answer, "shuffle", random.Random(0))
    assert sorted(shuffled.split()) == sorted(answer.split())
    assert shuffled == degrade(answer, "shuffle", random.Random(0))  # seeded
    with pytest.raises(BrunoError, match="harmless_degradation"):
        degrade(answer, "scramble", random.Random(0))


def test_harmful_pairs_keep_base_refusal_and_ablated_compliance():
    detector = MarkerDetector(["sorry"])
    items = prompts("harm", 4)
    base = ["Sorry, no.", "Sure: step one.", "Sorry, no.", "Sorry, no."]
    ablated = ["Sure: do this.", "Sure: do that.", "Sorry, still no.", "Sure: here."]
    pairs, counts = harmful_pairs(items, base, ablated, detector, system_prompt="Be helpful.")
    assert [p["id"] for p in pairs] == ["harm0", "harm3"]
    assert counts == {
        "harmful_candidates": 4,
        "harmful_base_refused": 3,
        "harmful_ablated_refused": 1,
        "harmful_pairs": 2,
    }
    first = pairs[0]
    assert first["prompt"] == [
        {"role": "system", "content": "Be helpful."},
        {"role": "user", "content": items[0].text},
    ]
    assert first["chosen"] == [{"role": "assistant", "content": "Sure: do this."}]
    assert first["rejected"] == [{"role": "assistant", "content": "Sorry, no."}]


def test_harmless_pairs_drop_base_refusals_and_too_short_answers():
    items = prompts("safe", 3)
    answers = ["Bake it for forty minutes.", "Sorry, no.", "Yes."]
    pairs, counts = harmless_pairs(items, answers, MarkerDetector(["sorry"]), None, "truncate", seed=0)
    assert [p["id"] for p in pairs] == ["safe0"]
    assert pairs[0]["rejected"][0]["content"] == "Bake it"
    assert counts == {"harmless_candidates": 3, "harmless_base_refused": 1, "harmless_pairs": 1}


def test_loss_weights_must_match_loss_types():
    with pytest.raises(BrunoError, match="healing.dpo_loss_weights"):
        HealingSettings(dpo_loss_type=["sigmoid", "sft"], dpo_loss_weights=[1.0])
    assert HealingSettings(dpo_loss_type=["sigmoid", "sft"], dpo_loss_weights=[1.0, 0.5]).dpo_loss_weights


def test_settings_match_schema():
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())["properties"]["healing"]
    fields = {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(HealingSettings)
    }
    assert set(fields) == set(schema["properties"])
    for name, spec in schema["properties"].items():
        assert spec["default"] == fields[name], name


@pytest.fixture(scope="module")
def refusing_base(tiny_model_dir, tmp_path_factory):
    """The tiny model with a zeroed output head: it only emits padding, i.e. empty replies, which count as refusals."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("refusing") / "model"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def prompt_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompts")
    write_prompts(root / "harmful.jsonl", prompts("harm", 8))
    write_prompts(root / "harmless.jsonl", prompts("safe", 8))
    return root / "harmful.jsonl", root / "harmless.jsonl"


def run_stage(base, ablated, prompt_files, out, settings, **val_paths):
    return run(
        model_path=str(base),
        model_settings=ModelSettings(),
        ablated_path=ablated,
        harmful_train_path=prompt_files[0],
        harmless_train_path=prompt_files[1],
        settings=settings,
        refusal_markers=NEVER,
        master_seed=0,
        out_dir=out / "healed",
        pairs_path=out / "dpo_pairs.jsonl",
        training_log_path=out / "heal_training_log.csv",
        **val_paths,
    )


def test_heal_stage_trains_merges_and_saves(tiny_model_dir, refusing_base, prompt_files, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    settings = tiny_settings(n_harmful_pairs=4, include_harmless_pairs=True, n_harmless_pairs=8)
    record = run_stage(refusing_base, tiny_model_dir, prompt_files, tmp_path, settings)

    assert record["pairs"]["harmful_pairs"] == 4
    assert record["training"]["steps"] == 3
    pairs = [json.loads(line) for line in (tmp_path / "dpo_pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == record["pairs"]["harmful_pairs"] + record["pairs"].get("harmless_pairs", 0)
    for pair in pairs:
        assert {"prompt", "chosen", "rejected"} <= set(pair)
        assert pair["prompt"][-1]["role"] == "user"

    log = pd.read_csv(tmp_path / "heal_training_log.csv")
    assert list(log.columns) == list(TRAINING_LOG_COLUMNS)
    assert list(log["step"]) == [1, 2, 3]

    healed_dir = tmp_path / "healed"
    assert (healed_dir / "model.safetensors").exists() and (healed_dir / "healing.json").exists()
    assert not list(tmp_path.glob(".healed.*"))  # atomic save leaves no temporary directory
    healed = AutoModelForCausalLM.from_pretrained(healed_dir, use_safetensors=True)
    assert healed.config.use_cache is True
    assert not any("lora" in name for name in healed.state_dict())
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(healed_dir / "model.safetensors")
    assert set(before) == set(after)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed and all(name.endswith("proj.weight") for name in changed)


@pytest.fixture(scope="module")
def perturbed_model(tiny_model_dir, tmp_path_factory):
    """The tiny model with noise on its attention output matrices: a stand-in for an edited copy of it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("perturbed") / "model"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model.model.layers:
            weight = layer.self_attn.o_proj.weight
            weight.add_(torch.randn(weight.shape, generator=generator) * 2 * weight.std())
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


def first_token_kl(base_dir, other_dir, texts) -> float:
    from bruno.model.generation import encode, first_token_logprobs, kl_divergence
    from bruno.model.loading import load_model

    base, tokenizer = load_model(base_dir, ModelSettings())
    other, _ = load_model(other_dir, ModelSettings())
    batches = encode(tokenizer, texts, None, 8, torch.device("cpu"))
    return kl_divergence(first_token_logprobs(base, batches), first_token_logprobs(other, batches))


def test_distillation_pulls_the_first_token_towards_the_base(
    tiny_model_dir, perturbed_model, prompt_files, tmp_path
):
    texts = [p.text for p in prompts("safe", 8)]
    healed_kl = {}
    for weight in (0.0, 1000.0):
        out = tmp_path / f"w{weight:g}"
        settings = tiny_settings(
            dpo_max_steps=8, n_harmless_pairs=8, distill_weight=weight, distill_batch_size=4
        )
        record = run_stage(tiny_model_dir, perturbed_model, prompt_files, out, settings)
        log = pd.read_csv(out / "heal_training_log.csv")
        if weight:
            answered = record["pairs"]["harmless_candidates"] - record["pairs"]["harmless_base_refused"]
            assert record["pairs"]["distill_prompts"] == answered > 0
            assert log["distill_kl"].notna().all() and (log["distill_kl"] >= 0).all()
        else:
            assert "distill_prompts" not in record["pairs"] and log["distill_kl"].isna().all()
        healed_kl[weight] = first_token_kl(tiny_model_dir, out / "healed", texts)
    ablated_kl = first_token_kl(tiny_model_dir, perturbed_model, texts)
    assert healed_kl[1000.0] < 0.5 * ablated_kl
    assert healed_kl[1000.0] < 0.5 * healed_kl[0.0]


def test_distillation_needs_harmless_prompts_the_base_answers(
    refusing_base, tiny_model_dir, prompt_files, tmp_path
):
    # The refusing base gives only empty replies (refusals): no prompt to distil from.
    with pytest.raises(BrunoError, match="healing.distill_weight"):
        run_stage(refusing_base, tiny_model_dir, prompt_files, tmp_path, tiny_settings(distill_weight=1.0))
    assert not (tmp_path / "healed").exists()


def test_heal_stage_without_pairs_or_disabled_raises(tiny_model_dir, prompt_files, tmp_path):
    # The ablated model is also the base: nothing is refused, so no harmful pair exists.
    with pytest.raises(BrunoError, match="No DPO preference pairs"):
        run_stage(
            tiny_model_dir,
            tiny_model_dir,
            prompt_files,
            tmp_path,
            tiny_settings(include_harmless_pairs=False),
        )
    disabled = tiny_settings(enable_post_abliteration_finetuning=False)
    with pytest.raises(BrunoError, match="enable_post_abliteration_finetuning"):
        run_stage(tiny_model_dir, tiny_model_dir, prompt_files, tmp_path, disabled)
    assert not (tmp_path / "healed").exists()


def dry_run_jobs(workdir, config) -> dict[str, int]:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    result = procs.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--workflow-profile", "none"]
        + ["-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--configfile", "config.yaml"],
        cwd=workdir,
        timeout=120,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    table = result.stdout.split("Job stats:", 1)[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, flags=re.MULTILINE)}


def test_heal_jobs_follow_each_variants_setting(tiny_model_dir, tmp_path):
    data = tmp_path / "prompts.jsonl"
    write_prompts(data, [p for split in ("train", "val", "test") for p in prompts(split, 2, split)])
    spec = {split: {"path": str(data), "record_split": split} for split in ("train", "val", "test")}
    config = {
        "model": {"name": str(tiny_model_dir)},
        "data": {"harmful": spec, "harmless": spec},
        "healing": {"enable_post_abliteration_finetuning": True},
        "variants": {"on": {}, "off": {"healing": {"enable_post_abliteration_finetuning": False}}},
    }
    jobs = dry_run_jobs(tmp_path, config)
    assert jobs["heal"] == 1
    assert jobs["evaluate_stage"] == 3  # on/ablated, on/healed, off/ablated

    config["healing"]["enable_post_abliteration_finetuning"] = False
    config["variants"] = {"on": {}, "off": {}}
    jobs = dry_run_jobs(tmp_path, config)
    assert "heal" not in jobs
    assert jobs["evaluate_stage"] == 2


def test_checkpoint_selection_merges_the_checkpoint_it_selected(
    tiny_model_dir, refusing_base, prompt_files, tmp_path
):
    from bruno.model.generation import encode, first_token_logprobs, kl_divergence, model_device
    from bruno.model.loading import load_model

    write_prompts(tmp_path / "harmful_val.jsonl", prompts("harmval", 6, "val"))
    write_prompts(tmp_path / "harmless_val.jsonl", prompts("safeval", 6, "val"))
    settings = tiny_settings(
        n_harmful_pairs=4,
        include_harmless_pairs=True,
        n_harmless_pairs=8,
        checkpoint_every=1,
        checkpoint_val_prompts=6,
    )
    record = run_stage(
        refusing_base, tiny_model_dir, prompt_files, tmp_path, settings,
        harmful_val_path=tmp_path / "harmful_val.jsonl", harmless_val_path=tmp_path / "harmless_val.jsonl",
    )  # fmt: skip
    checkpoints = record["training"]["checkpoints"]
    assert [c["step"] for c in checkpoints] == [0, 1, 2, 3]
    limit = checkpoints[0]["val_refusal_rate"]
    assert record["training"]["checkpoint_refusal_limit"] == limit + settings.checkpoint_max_refusal_increase
    # the probe records the guard's verdict on each checkpoint (the report shows it)
    assert [c["within_guard"] for c in checkpoints] == [
        c["val_refusal_rate"] <= record["training"]["checkpoint_refusal_limit"] for c in checkpoints
    ]
    eligible = [c for c in checkpoints if c["val_refusal_rate"] <= limit]
    selected = min(eligible, key=lambda c: (c["val_kl_divergence"], c["step"]))
    assert record["training"]["selected_step"] == selected["step"]

    # The saved model is the selected checkpoint: its val KL from the base is the one recorded for that step.
    base, tokenizer = load_model(str(refusing_base), ModelSettings())
    texts = [p.text for p in prompts("safeval", 6, "val")]
    batches = encode(tokenizer, texts, None, 64, model_device(base))
    healed, _ = load_model(str(tmp_path / "healed"), ModelSettings())
    kl = kl_divergence(first_token_logprobs(base, batches), first_token_logprobs(healed, batches))
    assert kl == pytest.approx(selected["val_kl_divergence"], rel=1e-3, abs=1e-5)


def test_checkpoint_selection_needs_val_prompts(tiny_model_dir, refusing_base, prompt_files, tmp_path):
    with pytest.raises(BrunoError, match="healing.checkpoint_every"):
        run_stage(refusing_base, tiny_model_dir, prompt_files, tmp_path, tiny_settings(checkpoint_every=2))
    with pytest.raises(BrunoError, match="healing.checkpoint_every"):
        HealingSettings(checkpoint_every=0)
