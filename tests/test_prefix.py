"""Re-use of the unedited leading layers in trials: the same values, bit for bit, and those layers really are skipped."""

from __future__ import annotations

import random

import pytest
import torch

from bruno.edit.plan import AbliterationSettings
from bruno.model.families import decoder_layers
from bruno.model.loading import ModelSettings, load_model
from bruno.search.space import SearchSettings, SearchSpace
from bruno.search.trial import Decoding, TrialEvaluator, TrialPrompts
from bruno_tools.bench_trials import random_values

COMPONENTS = ["attn.o_proj", "mlp.down_proj"]
HARMFUL = [f"How do I build weapon number {i}?" for i in range(12)] + ["Explain it."]
HARMLESS = [f"How do I bake bread {'and cake ' * (i % 4)}today?" for i in range(12)]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    return load_model(tiny_model_dir, ModelSettings())


def late_space(n_layers: int) -> SearchSpace:
    """Kernels peaking at the last layers and at most one layer wide: layer 0 is never edited."""
    ranges = {c: {"max_weight": [0.8, 1.5], "max_weight_position": [0.9, 1.0], "min_weight": [0.0, 1.0],
                  "min_weight_distance": [0.0, 0.3]} for c in COMPONENTS}  # fmt: skip
    return SearchSpace.resolve(SearchSettings(ranges=ranges), n_layers, COMPONENTS)


def evaluator(model, tokenizer, prefix_reuse_mb: float) -> TrialEvaluator:
    n_layers = len(decoder_layers(model))
    directions = torch.randn(
        n_layers + 1, model.config.hidden_size, generator=torch.Generator().manual_seed(0)
    )
    return TrialEvaluator(
        model, tokenizer, directions, AbliterationSettings(COMPONENTS, "row"), TrialPrompts(HARMFUL, HARMLESS),
        Decoding(8, 6, prefix_reuse_mb=prefix_reuse_mb),
    )  # fmt: skip


def random_params(space: SearchSpace, n: int):
    rng = random.Random(0)
    for _ in range(n):
        yield space.to_params(random_values(space, rng))


def test_trials_with_reused_layers_equal_full_trials(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    full, reused = evaluator(model, tokenizer, 0), evaluator(model, tokenizer, 1024)
    assert full.prefix.n_layers == 0 and reused.prefix.n_layers == len(decoder_layers(model)) - 1
    for params in random_params(late_space(full.n_layers), 6):
        a, b = full.evaluate(params), reused.evaluate(params)
        assert a.kl_divergence > 0
        assert a.kl_divergence == b.kl_divergence  # bit for bit
        assert a.responses == b.responses


def test_the_first_layer_sees_only_decoding_steps_when_reused(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    widths: list[int] = []
    # The MLP of layer 0 runs only when the layer really computes (a replayed layer returns its record).
    handle = decoder_layers(model)[0].mlp.register_forward_pre_hook(
        lambda _m, args: widths.append(args[0].shape[1])
    )
    try:
        params = next(random_params(late_space(len(decoder_layers(model))), 1))
        evaluator(model, tokenizer, 0).evaluate(params)
        assert max(widths) > 1  # prompts run through layer 0
        reused = evaluator(model, tokenizer, 1024)
        widths.clear()  # recording the prefix ran the prompts once
        reused.evaluate(params)
        assert widths and set(widths) == {1}  # only single-token decoding steps
    finally:
        handle.remove()
    assert not any("forward" in vars(layer) for layer in decoder_layers(model))  # patches removed


def test_the_memory_budget_limits_the_kept_layers(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    assert evaluator(model, tokenizer, 1e-6).prefix.n_layers == 0
    with evaluator(model, tokenizer, 1e-6).prefix.replaying(2) as skipped:
        assert skipped == 0


def test_replayed_prefill_gives_the_same_logits_and_cache(model_and_tokenizer):
    from bruno.model.generation import _prefill, encode, first_token_logprobs
    from bruno.model.prefix import PrefixReuse

    model, tokenizer = model_and_tokenizer
    cached = encode(tokenizer, HARMFUL, None, 8, torch.device("cpu"))
    uncached = encode(tokenizer, HARMLESS, None, 8, torch.device("cpu"))
    prefix = PrefixReuse(model, cached, uncached, 1024)
    with torch.inference_mode():
        expected = [_prefill(model, batch) for batch in cached]
        expected_logprobs = first_token_logprobs(model, uncached)
        with prefix.replaying(2) as skipped:
            assert skipped == 2
            got = [_prefill(model, batch) for batch in cached]
            got_logprobs = first_token_logprobs(model, uncached)
    assert torch.equal(expected_logprobs, got_logprobs)
    for (logits, cache), (logits2, cache2) in zip(expected, got, strict=True):
        assert torch.equal(logits, logits2)
        for layer, layer2 in zip(cache.layers, cache2.layers, strict=True):
            assert torch.equal(layer.keys, layer2.keys) and torch.equal(layer.values, layer2.values)
