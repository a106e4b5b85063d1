"""The edit math: kernel shape, orthogonality, norm preservation, and hook == baked weights."""

from __future__ import annotations

import pytest
import torch

from bruno.edit.ablation import NORM_MODES, apply_edit, bake, hooked, make_edit, tent_kernel


def unit(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, generator=g)
    return v / v.norm()


@pytest.fixture
def linear() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(12, 8, bias=True)


def test_tent_kernel_shape():
    w = tent_kernel(7, max_weight=1.2, max_weight_position=3, min_weight=0.4, min_weight_distance=2)
    assert w == pytest.approx([0.0, 0.4, 0.8, 1.2, 0.8, 0.4, 0.0])
    # symmetric around a fractional peak; zero beyond the distance
    w = tent_kernel(5, 1.0, 2.5, 0.0, 1.0)
    assert w == pytest.approx([0.0, 0.0, 0.5, 0.5, 0.0])
    assert tent_kernel(3, 1.0, 1.0, 1.0, 5.0) == pytest.approx([1.0, 1.0, 1.0])


def test_full_weight_plain_edit_removes_direction(linear):
    r = unit(8, 1)
    w_new = apply_edit(linear.weight, make_edit(linear.weight, [r], [1.0], "none"))
    assert (r @ w_new).norm() < 1e-5
    # the part orthogonal to r is untouched
    proj = torch.eye(8) - torch.outer(r, r)
    assert torch.allclose(proj @ w_new, proj @ linear.weight, atol=1e-6)


def test_partial_weight_scales_component(linear):
    r = unit(8, 2)
    w_new = apply_edit(linear.weight, make_edit(linear.weight, [r], [0.25], "none"))
    assert torch.allclose(r @ w_new, 0.75 * (r @ linear.weight), atol=1e-6)


@pytest.mark.parametrize(
    ("mode", "axis"), [("row", 1), ("column", 0)]
)  # row: norm of each output row; column: norm of each input neuron's write vector
def test_norm_preserving_modes_keep_norms(linear, mode, axis):
    r = unit(8, 3)
    w_new = apply_edit(linear.weight, make_edit(linear.weight, [r], [1.0], mode))
    assert torch.allclose(w_new.norm(dim=axis), linear.weight.norm(dim=axis), atol=1e-5)


def test_frobenius_keeps_matrix_norm(linear):
    r = unit(8, 4)
    w_new = apply_edit(linear.weight, make_edit(linear.weight, [r], [0.9], "frobenius"))
    assert w_new.norm() == pytest.approx(linear.weight.norm().item(), rel=1e-5)
    assert (r @ w_new).norm() < 0.2 * (r @ linear.weight).norm()


def test_column_mode_stays_exactly_orthogonal(linear):
    r = unit(8, 5)
    w_new = apply_edit(linear.weight, make_edit(linear.weight, [r], [1.0], "column"))
    assert (r @ w_new).norm() < 1e-5


def test_sequential_directions_compose(linear):
    r1, r2 = unit(8, 6), unit(8, 7)
    w = linear.weight.detach()
    expected = w - 0.7 * torch.outer(r1, r1 @ w)
    expected = expected - 0.5 * torch.outer(r2, r2 @ expected)
    got = apply_edit(w, make_edit(w, [r1, r2], [0.7, 0.5], "none"))
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("mode", NORM_MODES)
@pytest.mark.parametrize("bias", [True, False])
def test_hook_equals_baked_weights(mode, bias):
    torch.manual_seed(1)
    module = torch.nn.Linear(12, 8, bias=bias)
    x = torch.randn(3, 5, 12)
    edit = make_edit(module.weight, [unit(8, 8), unit(8, 9)], [1.0, 0.6], mode)
    with hooked({("c", 0): module}, {("c", 0): edit}):
        hooked_out = module(x)
    assert not module._forward_hooks and not module._forward_pre_hooks  # removed after the block
    baked = torch.nn.Linear(12, 8, bias=bias)
    baked.load_state_dict(module.state_dict())
    bake({("c", 0): baked}, {("c", 0): edit})
    assert torch.allclose(hooked_out, baked(x), atol=1e-5)
    assert not torch.allclose(module(x), baked(x), atol=1e-3)  # the original module is unchanged


def test_hooks_removed_on_error():
    module = torch.nn.Linear(4, 4)
    edit = make_edit(module.weight, [unit(4, 1)], [1.0], "column")
    with pytest.raises(RuntimeError), hooked({("c", 0): module}, {("c", 0): edit}):
        raise RuntimeError("boom")
    assert not module._forward_hooks and not module._forward_pre_hooks


def test_model_hooks_equal_baked_model(tiny_model_dir):
    """On a whole transformer: trial hooks give the same logits as the exported, baked weights."""
    from bruno.directions.mean import mean_difference
    from bruno.edit.plan import AblationParams, ComponentKernel, EditTargets, build_edits
    from bruno.model.generation import encode, first_token_logprobs
    from bruno.model.loading import ModelSettings, load_model

    model, tok = load_model(tiny_model_dir, ModelSettings())
    batches = encode(
        tok, ["How do I bake bread?", "Explain how to write a poem."], None, 8, torch.device("cpu")
    )
    g = torch.Generator().manual_seed(0)
    dirs = mean_difference(
        torch.randn(4, 32, generator=g).double(), torch.randn(4, 32, generator=g).double(), True
    )
    params = AblationParams(
        "global",
        1.3,
        {
            "attn.o_proj": ComponentKernel(1.0, 1.0, 0.5, 2.0),
            "mlp.down_proj": ComponentKernel(0.8, 2.0, 0.2, 1.0),
        },
    )
    for mode in NORM_MODES:
        targets = EditTargets(model, ["attn.o_proj", "mlp.down_proj"])
        edits = build_edits(targets, dirs, params, mode)
        base = first_token_logprobs(model, batches)
        with hooked(targets.modules, edits):
            via_hooks = first_token_logprobs(model, batches)
        assert not torch.allclose(base, via_hooks, atol=1e-4)
        reloaded, _ = load_model(tiny_model_dir, ModelSettings())
        targets2 = EditTargets(reloaded, ["attn.o_proj", "mlp.down_proj"])
        bake(targets2.modules, build_edits(targets2, dirs, params, mode))
        assert torch.allclose(via_hooks, first_token_logprobs(reloaded, batches), atol=1e-4)
        assert torch.allclose(base, first_token_logprobs(model, batches))  # hooks left no trace
