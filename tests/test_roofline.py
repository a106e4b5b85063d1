"""The benchmark's lower bounds on a trial's time: the work counted per linear-layer call and the bounds' arithmetic."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

from bruno.edit.plan import AbliterationSettings
from bruno.model.families import decoder_layers
from bruno.model.loading import ModelSettings, load_model
from bruno.search.space import SearchSettings, SearchSpace
from bruno.search.trial import Decoding, TrialEvaluator, TrialPrompts
from bruno_tools.bench_trials import random_values, work_bounds
from bruno_tools.roofline import DevicePeaks, WorkCounter, counting, measure_peaks

COMPONENTS = ["attn.o_proj", "mlp.down_proj"]
HARMFUL = [f"How do I build weapon number {i}?" for i in range(6)]
HARMLESS = [f"How do I bake bread {'and cake ' * (i % 3)}today?" for i in range(6)]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    return load_model(tiny_model_dir, ModelSettings())


def test_counts_every_linear_call_with_its_weights_and_operations(model_and_tokenizer):
    model, _ = model_and_tokenizer
    config = model.config
    h, m, v = config.hidden_size, config.intermediate_size, config.vocab_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    per_layer = [(h, h), (h, kv), (h, kv), (h, h), (h, m), (h, m), (m, h)]  # q k v o gate up down: (in, out)
    batch, length = 3, 5
    ids = torch.randint(0, v, (batch, length))
    with torch.inference_mode(), counting(model) as counter:
        model(input_ids=ids, logits_to_keep=1)
    layers = config.num_hidden_layers
    assert len(counter.calls) == layers * len(per_layer) + 1
    layer_params = sum(i * o for i, o in per_layer)
    assert counter.weight_bytes == 4 * (layers * layer_params + h * v)  # float32, no biases
    # decoder layers see every position, the output head only the kept last one
    assert counter.flops == 2 * batch * length * layers * layer_params + 2 * batch * h * v
    assert not any(m._forward_pre_hooks for m in model.modules() if isinstance(m, nn.Linear))


def test_bounds_take_each_call_at_its_own_limit():
    counter = WorkCounter(calls=[(100, 2000), (400, 100)])
    peaks = DevicePeaks("test", "float32", bandwidth_bytes_per_s=10.0, flops_per_s=100.0)
    bounds = counter.bounds(peaks)
    assert bounds["bandwidth_bound_seconds"] == pytest.approx(50.0)  # 500 bytes / 10
    assert bounds["compute_bound_seconds"] == pytest.approx(21.0)  # 2100 operations / 100
    # call 1 is compute-bound (20 s > 10 s), call 2 bandwidth-bound (40 s > 1 s)
    assert bounds["roofline_bound_seconds"] == pytest.approx(60.0)


def test_measured_peaks_are_positive_rates():
    peaks = measure_peaks(torch.device("cpu"), torch.float32, copy_bytes=2**20, matmul_size=64, repeats=2)
    assert peaks.dtype == "float32"
    assert math.isfinite(peaks.bandwidth_bytes_per_s) and peaks.bandwidth_bytes_per_s > 0
    assert math.isfinite(peaks.flops_per_s) and peaks.flops_per_s > 0


def evaluator(model, tokenizer, prefix_reuse_mb: float) -> TrialEvaluator:
    directions = torch.randn(
        len(decoder_layers(model)) + 1, model.config.hidden_size, generator=torch.Generator().manual_seed(0)
    )
    return TrialEvaluator(
        model, tokenizer, directions, AbliterationSettings(COMPONENTS, "row"), TrialPrompts(HARMFUL, HARMLESS),
        Decoding(8, 4, prefix_reuse_mb=prefix_reuse_mb),
    )  # fmt: skip


def test_trial_bounds_leave_out_replayed_layers(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    peaks = DevicePeaks("test", "float32", bandwidth_bytes_per_s=1e9, flops_per_s=1e9)
    full, reused = evaluator(model, tokenizer, 0), evaluator(model, tokenizer, 64)
    assert reused.prefix.n_layers > 0
    # kernels peaking at the last layer, one layer wide: the leading layers are unedited and replayed
    ranges = {c: {"max_weight": [1.0, 1.0], "max_weight_position": [1.0, 1.0], "min_weight": [0.0, 0.0],
                  "min_weight_distance": [0.0, 0.0]} for c in COMPONENTS}  # fmt: skip
    space = SearchSpace.resolve(SearchSettings(ranges=ranges), full.n_layers, COMPONENTS)
    params = [space.to_params(random_values(space, random.Random(0)))]
    timed = [full.evaluate(params[0])]
    without = work_bounds(full, params, timed, peaks)
    with_reuse = work_bounds(reused, params, timed, peaks)
    assert with_reuse["gflop_per_trial"] < without["gflop_per_trial"]
    assert with_reuse["weight_gb_read_per_trial"] < without["weight_gb_read_per_trial"]
    assert without["ratio_to_roofline_bound"] == pytest.approx(
        timed[0].seconds / without["roofline_bound_seconds"]
    )
