"""The GPU path of model loading, exercised on the CPU: dtype fallback, placement arguments, batch size detection."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_model

from bruno.errors import BrunoError
from bruno.model import placement as gpu
from bruno.model.generation import encode, generate_greedy
from bruno.model.loading import ModelSettings, load_model

# ----------------------------------------------------------------------------------------------------------------------
# dtype fallback


def test_dtype_candidates_follow_the_chain():
    cpu = torch.device("cpu")
    assert gpu.dtype_candidates("auto", cpu) == ["float32"]
    assert gpu.dtype_candidates("bfloat16", cpu) == ["bfloat16", "float16", "float32"]
    assert gpu.dtype_candidates("float32", cpu) == ["float32"]
    with pytest.raises(BrunoError, match="model.dtype"):
        gpu.dtype_candidates("int8", cpu)


def test_dtype_candidates_skip_bfloat16_where_cuda_lacks_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert gpu.dtype_candidates("auto", torch.device("cuda")) == ["auto", "float16", "float32"]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert gpu.dtype_candidates("auto", torch.device("cuda")) == ["auto", "bfloat16", "float16", "float32"]


def _loader(path, calls):
    from transformers import AutoModelForCausalLM

    def load(name):
        calls.append(name)
        dtype = "auto" if name == "auto" else gpu.TORCH_DTYPES[name]
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)

    return load


def only_float32(model) -> bool:
    return next(model.parameters()).dtype == torch.float32


def test_fallback_picks_float32_when_the_check_fails_for_the_others(tiny_model_dir):
    calls = []
    model, name = gpu.load_with_dtype_fallback(
        _loader(tiny_model_dir, calls), only_float32, ["bfloat16", "float16", "float32"]
    )
    assert (name, calls) == ("float32", ["bfloat16", "float16", "float32"])
    assert next(model.parameters()).dtype == torch.float32


def test_fallback_skips_a_dtype_that_auto_already_was(tmp_path):
    path = build_tiny_model(tmp_path / "bf16")
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16).save_pretrained(path)
    calls = []
    _, name = gpu.load_with_dtype_fallback(_loader(path, calls), only_float32, gpu.DTYPE_CHAIN)
    # 'auto' loaded the bfloat16 checkpoint and failed, so bfloat16 is not loaded again.
    assert (name, calls) == ("float32", ["auto", "float16", "float32"])


def test_fallback_gives_up_with_a_clear_error(tiny_model_dir):
    with pytest.raises(BrunoError, match="inf/nan logits in every dtype"):
        gpu.load_with_dtype_fallback(_loader(tiny_model_dir, []), lambda m: False, ["float16", "float32"])


def test_one_token_check_detects_nan_logits(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir, ModelSettings())
    assert gpu.next_token_is_finite(model, tokenizer)
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    assert not gpu.next_token_is_finite(model, tokenizer, system_prompt="Be brief.")


def test_load_model_falls_back_through_the_configured_chain(tiny_model_dir, monkeypatch):
    checked = []

    def fake_check(model, tokenizer, system_prompt=None):
        checked.append(next(model.parameters()).dtype)
        return checked[-1] == torch.float32

    monkeypatch.setattr(gpu, "next_token_is_finite", fake_check)
    model, tokenizer = load_model(tiny_model_dir, ModelSettings(dtype="bfloat16"))
    assert checked == [torch.bfloat16, torch.float16, torch.float32]
    assert next(model.parameters()).dtype == torch.float32
    assert (
        len(generate_greedy(model, tokenizer, encode(tokenizer, ["hi"], None, 1, torch.device("cpu")), 2))
        == 1
    )


def test_cpu_auto_loads_float32_without_a_check(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(
        gpu, "next_token_is_finite", lambda *a, **k: pytest.fail("no check on the CPU float32 path")
    )
    model, _ = load_model(tiny_model_dir, ModelSettings())
    assert next(model.parameters()).dtype == torch.float32


# ----------------------------------------------------------------------------------------------------------------------
# Placement


def test_placement_arguments():
    cpu = torch.device("cpu")
    assert gpu.placement_kwargs(cpu, None, None) == {}
    # A CUDA model loads straight onto its card (never a full copy in host memory).
    assert gpu.placement_kwargs(torch.device("cuda:1"), None, None) == {"device_map": {"": 1}}
    assert gpu.placement_kwargs(cpu, "auto", {"0": "20GiB", "cpu": "64GiB"}) == {
        "device_map": "auto",
        "max_memory": {0: "20GiB", "cpu": "64GiB"},
    }
    assert gpu.placement_kwargs(cpu, {"model": "cpu", "lm_head": 0}, None) == {
        "device_map": {"model": "cpu", "lm_head": 0}
    }
    with pytest.raises(BrunoError, match="model.max_memory' only applies with 'model.device_map"):
        gpu.placement_kwargs(cpu, None, {"0": "20GiB"})
    with pytest.raises(BrunoError, match="model.device_map"):
        gpu.placement_kwargs(cpu, "everywhere", None)
    with pytest.raises(BrunoError, match="model.max_memory.gpu0"):
        gpu.max_memory_map({"gpu0": "1GiB"})


def test_device_map_and_max_memory_reach_from_pretrained(tiny_model_dir):
    settings = ModelSettings(device_map="auto", max_memory={"cpu": "1GiB"})
    model, tokenizer = load_model(tiny_model_dir, settings)
    assert gpu.describe_placement(model) == "cpu"
    assert (
        len(generate_greedy(model, tokenizer, encode(tokenizer, ["hi"], None, 1, torch.device("cpu")), 2))
        == 1
    )


def test_four_bit_needs_cuda(tiny_model_dir):
    with pytest.raises(BrunoError, match="model.load_in_4bit' needs a CUDA GPU"):
        load_model(tiny_model_dir, ModelSettings(load_in_4bit=True))


def test_dense_weight_of_a_plain_linear_is_its_weight():
    linear = torch.nn.Linear(3, 2)
    assert gpu.dense_weight(linear) is linear.weight


def test_no_gpu_memory_reported_on_the_cpu():
    assert gpu.peak_gpu_memory_mb() == {}


# ----------------------------------------------------------------------------------------------------------------------
# Batch size


def saturating(capacity: int, oom_at: int | None = None, calls: list[int] | None = None):
    """Fake measure: throughput grows linearly up to `capacity` items per batch, then stays flat."""

    def measure(size: int) -> float:
        if calls is not None:
            calls.append(size)
        if oom_at is not None and size >= oom_at:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return max(1.0, size / capacity)

    return measure


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def test_auto_batch_size_stops_when_throughput_stops_improving():
    calls = []
    size = gpu.auto_batch_size(saturating(8, calls=calls), n_items=1000)
    assert size == 8 and is_power_of_two(size)
    assert calls == [1, 2, 4, 8, 16]


def test_auto_batch_size_stops_at_out_of_memory():
    calls = []
    size = gpu.auto_batch_size(saturating(1000, oom_at=32, calls=calls), n_items=1000)
    assert size == 16 and is_power_of_two(size)
    assert calls == [1, 2, 4, 8, 16, 32]
    # The older spelling of an OOM (a RuntimeError) counts too.
    runtime_oom = saturating(1000)

    def old_style(size):
        if size >= 4:
            raise RuntimeError("CUDA error: out of memory")
        return runtime_oom(size)

    assert gpu.auto_batch_size(old_style, n_items=1000) == 2


def test_auto_batch_size_limits():
    assert gpu.auto_batch_size(saturating(1000), n_items=6) == 8  # one batch already holds every prompt
    assert gpu.auto_batch_size(saturating(1000), n_items=1000, limit=64) == 64
    with pytest.raises(BrunoError, match="Not even a batch of 1"):
        gpu.auto_batch_size(saturating(1000, oom_at=1), n_items=10)

    def broken(size):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        gpu.auto_batch_size(broken, n_items=10)


def test_resolve_batch_size(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir, ModelSettings())
    texts = ["How do I bake bread?", "hi"] * 100
    assert gpu.resolve_batch_size(7, model, tokenizer, texts) == 7
    assert gpu.resolve_batch_size(0, model, tokenizer, texts) == gpu.CPU_AUTO_BATCH_SIZE
    assert gpu.resolve_batch_size(0, model, tokenizer, texts[:5]) == 5
    # The measurement itself runs on any device.
    for max_new_tokens in (0, 2):
        seconds = gpu.forward_timer(model, tokenizer, texts, None, max_new_tokens)(4)
        assert seconds > 0
