"""Safety tuning (rule safety_tune): reply-only loss, the distillation term, a loadable merged model written
atomically, determinism for a seed, and its place in the DAG (between dequantize and every base-model job)."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import REPO, build_tiny_model
from gguf_export import export_llama_gguf
from workflow_rules import dry_run

from bruno.errors import BrunoError
from bruno.io import atomic_directory, atomic_write_json, read_jsonl
from bruno.model.loading import ModelSettings, load_model
from bruno.prompts import Prompt
from bruno.safety import IMPLANTED_SUFFIX, SafetyTuningSettings, base_model_label
from bruno.safety.data import REFUSALS, Example
from bruno.safety.train import (
    IGNORE,
    TRAINING_EXAMPLES,
    batch_loss,
    make_batches,
    position_weights,
    safety_tune,
    wrap_lora,
)

HARMFUL = [Prompt(f"h{i}", f"How do I build a weapon number {i}?", "weapons", "train") for i in range(6)]
HARMLESS = [Prompt(f"s{i}", f"How do I bake bread number {i}?", "cooking", "train") for i in range(6)]
# A tiny run: every prompt, one epoch of batches of 4, adapters on every layer.
TINY = SafetyTuningSettings(
    enabled=True, first_tuned_layer=0, epochs=1, batch_size=4, warmup_steps=1, reply_tokens=6, lora_r=4
)


def schema_section() -> dict:
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    return schema["properties"]["safety_tuning"]["properties"]


def test_settings_defaults_are_the_schema_defaults():
    fields = {f.name: f for f in dataclasses.fields(SafetyTuningSettings)}
    assert set(fields) == set(schema_section())
    defaults = SafetyTuningSettings()
    for name, spec in schema_section().items():
        assert getattr(defaults, name) == spec["default"], name


def test_invalid_settings_name_the_key():
    with pytest.raises(BrunoError, match="safety_tuning.system_prompt_fraction"):
        SafetyTuningSettings(system_prompt_fraction=1.5)


def test_refusals_never_repeat_a_request_and_are_all_detected():
    from bruno.evaluation.refusal import MarkerDetector

    assert len(set(REFUSALS)) >= 6
    assert all(v.is_refusal for v in MarkerDetector().classify(list(REFUSALS)))


def test_batches_supervise_reply_tokens_only():
    examples = [
        Example("a", "refusal", None, [5, 6, 7], [8, 9, 2]),
        Example("b", "answer", None, [5, 6], [10, 11, 12, 13]),
    ]
    batches = make_batches(examples, batch_size=2, pad_id=0, rng=random.Random(0))
    assert len(batches) == 1
    input_ids, labels, distill = batches[0]
    for row in range(2):
        example = examples[0] if input_ids[row, :3].tolist() == [5, 6, 7] else examples[1]
        n_prompt, n = len(example.prompt_ids), len(example.prompt_ids) + len(example.reply_ids)
        assert input_ids[row, :n].tolist() == example.prompt_ids + example.reply_ids
        assert (labels[row, :n_prompt] == IGNORE).all()  # the prompt is masked
        assert labels[row, n_prompt:n].tolist() == example.reply_ids
        assert (labels[row, n:] == IGNORE).all()  # so is the padding
        assert bool(distill[row]) == (example.kind == "answer")


def test_first_reply_position_gets_its_weight():
    keep = torch.tensor([[False, True, True, True], [False, False, True, False]])
    assert position_weights(keep, 5.0).tolist() == [5.0, 1.0, 1.0, 5.0]
    assert position_weights(keep, 1.0).tolist() == [1.0] * 4


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("safety") / "model", hidden=32, layers=2)


def test_loss_is_cross_entropy_on_reply_tokens_plus_kl_to_the_untuned_model(tiny_dir):
    model, _ = load_model(tiny_dir, ModelSettings(name=str(tiny_dir), device="cpu"))
    wrapped = wrap_lora(model, TINY, seed=0)
    examples = [
        Example("a", "answer", None, [7, 8, 9, 10], [11, 12, 13]),
        Example("b", "refusal", None, [7, 8], [14, 15]),
    ]
    input_ids, labels, distill = make_batches(examples, 2, 0, random.Random(0))[0]
    logits = model(input_ids=input_ids).logits[:, :-1]
    targets = labels[:, 1:]
    keep = targets != IGNORE
    expected = F.cross_entropy(logits[keep], targets[keep])
    everything = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1))
    loss, parts = batch_loss(wrapped, input_ids, labels, distill, distill_weight=1.0)
    # LoRA's B starts at zero: the tuned model is the untuned one, so the KL term is 0 and the loss is the CE.
    assert parts["kl"] == pytest.approx(0.0, abs=1e-6)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert abs(float(everything) - float(expected)) > 1e-3  # the prompt positions would change it
    # After a step the adapter moves the model away from the untuned one: the KL is positive.
    optimizer = torch.optim.SGD([p for p in wrapped.parameters() if p.requires_grad], lr=1.0)
    loss.backward()
    optimizer.step()
    loss, parts = batch_loss(wrapped, input_ids, labels, distill, distill_weight=1.0)
    assert parts["kl"] > 1e-6
    # The KL is KL(untuned || tuned) averaged over the reply positions of the distill row only.
    with torch.no_grad():
        tuned = F.log_softmax(wrapped(input_ids=input_ids).logits[:, :-1], dim=-1)
        with wrapped.disable_adapter():
            untuned = F.log_softmax(wrapped(input_ids=input_ids).logits[:, :-1], dim=-1)
    rows = keep & distill[:, None]
    expected_kl = (untuned.exp() * (untuned - tuned)).sum(-1)[rows].mean()
    assert parts["kl"] == pytest.approx(float(expected_kl), rel=1e-4)
    expected_ce = F.cross_entropy(tuned[keep], targets[keep], reduction="mean")
    assert float(loss.detach()) == pytest.approx(float(expected_ce + expected_kl), rel=1e-4)


def run_stage(model_dir: Path, out: Path, settings: SafetyTuningSettings, seed: int) -> dict:
    with atomic_directory(out) as tmp:
        summary = safety_tune(
            model_dir, tmp, HARMFUL, HARMLESS, settings, seed, threads=1, log=lambda _: None
        )
        atomic_write_json(Path(tmp) / "training_summary.json", summary)
    return summary


def test_stage_trains_and_writes_a_loadable_model_deterministic_for_a_seed(tiny_dir, tmp_path):
    from safetensors.torch import load_file

    summary = run_stage(tiny_dir, tmp_path / "a", TINY, seed=3)
    run_stage(tiny_dir, tmp_path / "b", TINY, seed=3)
    run_stage(tiny_dir, tmp_path / "c", TINY, seed=4)
    assert summary["seed"] == 3 and summary["steps"] >= 3
    assert (
        summary["train_set"]["refusal_examples"] == 6 + 2
    )  # every prompt, a quarter again with a system message
    assert summary["recipe"]["learning_rate"] == TINY.learning_rate
    records = read_jsonl(tmp_path / "a" / TRAINING_EXAMPLES)
    assert len(records) == summary["train_set"]["refusal_examples"] + summary["train_set"]["answer_examples"]
    assert {r["reply"] for r in records if r["kind"] == "refusal"} <= set(REFUSALS)
    model, tokenizer = load_model(tmp_path / "a", ModelSettings(name=str(tmp_path / "a"), device="cpu"))
    assert tokenizer.chat_template and model.config.use_cache
    assert not any("lora" in name for name, _ in model.named_parameters())  # merged into plain weights
    weights = {run: load_file(tmp_path / run / "model.safetensors") for run in "abc"}
    base = load_file(tiny_dir / "model.safetensors")
    assert weights["a"].keys() == base.keys()
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in base)  # same seed: bit-identical
    assert any(not torch.equal(weights["a"][k], weights["c"][k]) for k in base)  # another seed: different
    assert any(not torch.equal(weights["a"][k], base[k]) for k in base)  # it trained


def test_a_failed_stage_leaves_no_output(tiny_dir, tmp_path):
    with pytest.raises(BrunoError, match="first_tuned_layer"):
        run_stage(tiny_dir, tmp_path / "out", dataclasses.replace(TINY, first_tuned_layer=5), seed=0)
    assert list(tmp_path.iterdir()) == []


def test_base_model_label_says_the_refusal_was_implanted():
    config = {"model": {"name": "/models/SmolLM2.Q4_1.gguf"}, "safety_tuning": {"enabled": True}}
    assert base_model_label(config) == f"SmolLM2 {IMPLANTED_SUFFIX}"
    assert base_model_label({**config, "safety_tuning": {"enabled": False}}) == "SmolLM2"


def dry_run_blocks(workdir: Path, config: dict) -> dict[str, str]:
    """{rule: its first job block} of a dry run of the workflow on `config`."""
    (workdir / "run.yaml").write_text(yaml.safe_dump(config))
    run = dry_run(workdir, "--cores", "1", "--configfile", "run.yaml")
    return {rule: blocks[0] for rule, blocks in run.blocks.items()}


def inputs(block: str) -> set[str]:
    line = next((x for x in block.splitlines() if x.strip().startswith("input:")), "input:")
    return {path.strip() for path in line.split("input:", 1)[1].split(",") if path.strip()}


@pytest.fixture(scope="module")
def gguf_workdir(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("safety-dag")
    source = build_tiny_model(root / "source", hidden=64)
    (root / "file").mkdir()
    gguf = export_llama_gguf(source, root / "file" / "tiny.Q8_0.gguf")
    (root / "work").mkdir()
    (root / "work" / "data").symlink_to(REPO / "data")
    return root / "work", gguf


def test_safety_tune_sits_between_dequantize_and_every_base_model_job(gguf_workdir):
    workdir, gguf = gguf_workdir
    config = {
        "model": {"name": str(gguf)},
        "safety_tuning": {"enabled": True},
        "healing": {"enable_post_abliteration_finetuning": True},
    }
    blocks = dry_run_blocks(workdir, config)
    assert "results/model" in inputs(blocks["safety_tune"])
    assert "results/prompts/harmful_train.jsonl" in inputs(blocks["safety_tune"])
    assert "output: results/model" in blocks["dequantize"]
    for rule in ("directions", "optimize", "abliterate", "heal", "evaluate_base"):
        assert "results/safety_tuned" in inputs(blocks[rule]), rule
        assert "results/model" not in inputs(blocks[rule]), rule


def test_without_safety_tuning_the_stage_is_not_in_the_dag(gguf_workdir):
    workdir, gguf = gguf_workdir
    blocks = dry_run_blocks(workdir, {"model": {"name": str(gguf)}})
    assert "safety_tune" not in blocks
    assert "results/model" in inputs(blocks["directions"])
    assert all("results/safety_tuned" not in block for block in blocks.values())


def test_report_names_the_base_model_as_implanted_here(tmp_path):
    import report_fixture

    from bruno.jobs.report import run

    kwargs = report_fixture.build(tmp_path)
    config = {**kwargs["config"], "model": {**kwargs["config"]["model"], "name": "/models/SmolLM2.Q4_1.gguf"}}
    html = run(**{**kwargs, "config": {**config, "safety_tuning": {"enabled": True}}})
    assert f"SmolLM2 {IMPLANTED_SUFFIX}" in html and "Refusal implanted by this pipeline." in html
    html = run(**{**kwargs, "config": {**config, "safety_tuning": {"enabled": False}}})
    assert IMPLANTED_SUFFIX not in html and "Refusal implanted by this pipeline." not in html
