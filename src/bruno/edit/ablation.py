"""The abliteration edit and its exact hook equivalent.

An edit of one matrix W (PyTorch layout [out = d_model, in], writing into the residual stream) is a low-rank delta
followed by an optional norm restoration:

    W' = c · diag(t) · (W − U V) · diag(s)

* Directional ablation with weight w along unit direction r is U = w·r, V = rᵀW, i.e. W' = W − w·r(rᵀW); several
  directions compose sequentially (V is built against the already-edited matrix).
* `norm_preservation`: `none` (t = s = c = 1); `frobenius` (c restores ‖W‖_F); `row` (t restores the norm of every
  output row, heretic's axis); `column` (s restores the norm of every input neuron's write vector, grimjim's MPOA axis,
  which keeps rᵀW' = 0 exactly at w = 1).

The same edit runs as forward hooks during trials (no weight copies): a pre-hook scales the input by s, a post-hook maps
y = W x_s + b to c·t ⊙ (y − b − U(V x_s)) + b, which equals W' x + b. `bake` writes W' into the weights for export. Fused mixture-of-experts parameters are edited per
expert by `bruno.edit.experts` through the same `hooked` and `bake`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

NORM_MODES = ("none", "frobenius", "row", "column")
ModuleKey = tuple[str, int]
# A Linear, or an object with `applied(edit)` (a context manager) and `bake(edit)` such as bruno.edit.experts.ExpertsTarget.
EditTarget = Any
_EPS = 1e-12


def tent_kernel(
    n_layers: int,
    max_weight: float,
    max_weight_position: float,
    min_weight: float,
    min_weight_distance: float,
) -> list[float]:
    """Per-layer weight: max at the peak, falling linearly to min at `min_weight_distance`, zero beyond."""
    distance = max(float(min_weight_distance), _EPS)
    weights = []
    for layer in range(n_layers):
        d = abs(layer - max_weight_position)
        weights.append(0.0 if d > distance else max_weight + (d / distance) * (min_weight - max_weight))
    return weights


@dataclass
class LowRankEdit:
    """W' = scalar · row_scale ⊙ (W − U V) ⊙ col_scale (see module docstring); float32 factors."""

    u: torch.Tensor  # [d_out, k]
    v: torch.Tensor  # [k, d_in]
    row_scale: torch.Tensor | None = None  # [d_out]
    col_scale: torch.Tensor | None = None  # [d_in]
    scalar: float = 1.0


def _safe_ratio(num_sq: torch.Tensor, den_sq: torch.Tensor) -> torch.Tensor:
    """sqrt(num/den) where den is not ~0; 1 where the edited norm vanished (nothing left to rescale)."""
    den_sq = den_sq.clamp(min=0)
    ratio = torch.sqrt(num_sq / den_sq.clamp(min=_EPS))
    return torch.where(den_sq > _EPS * num_sq.clamp(min=_EPS), ratio, torch.ones_like(ratio))


def make_edit(
    weight: torch.Tensor,
    directions: Sequence[torch.Tensor],
    weights: Sequence[float],
    norm_preservation: str = "none",
    stats: Mapping[str, torch.Tensor] | None = None,
) -> LowRankEdit:
    """Build the edit removing `weights[k]`·(component along `directions[k]`) from W's output, sequentially.

    A negative weight adds along the direction (used by activation-addition variants). `stats` may hold cached
    `row_sq`, `col_sq`, `fro_sq` of W (they never change between trials)."""
    if norm_preservation not in NORM_MODES:
        raise ValueError(f"unknown norm_preservation {norm_preservation!r}")
    w32 = weight.detach().float()
    us, vs = [], []
    for r, w in zip(directions, weights, strict=True):
        r = r.detach().float().to(w32.device)
        r = r / r.norm().clamp(min=_EPS)
        v = r @ w32  # rᵀW, then correct for the edits already applied: rᵀ(W − U V) = rᵀW − (rᵀU) V
        if us:
            v = v - (r @ torch.stack(us, dim=1)) @ torch.stack(vs)
        us.append(w * r)
        vs.append(v)
    u = torch.stack(us, dim=1)
    v = torch.stack(vs)
    edit = LowRankEdit(u, v)
    if norm_preservation == "none":
        return edit
    stats = stats or weight_stats(weight)
    if norm_preservation == "row":
        # ‖W_i − U_i V‖² = ‖W_i‖² − 2 U_i·(W Vᵀ)_i + ‖U_i V‖²
        wv = w32 @ v.T  # [d_out, k]
        new_sq = stats["row_sq"] - 2 * (u * wv).sum(1) + ((u @ (v @ v.T)) * u).sum(1)
        edit.row_scale = _safe_ratio(stats["row_sq"], new_sq)
    elif norm_preservation == "column":
        # ‖c_j − U V_j‖² = ‖c_j‖² − 2 V_jᵀ(Uᵀ c_j) + ‖U V_j‖²
        utw = u.T @ w32  # [k, d_in]
        new_sq = stats["col_sq"] - 2 * (v * utw).sum(0) + ((u.T @ u) @ v * v).sum(0)
        edit.col_scale = _safe_ratio(stats["col_sq"], new_sq)
    else:  # frobenius
        utw = u.T @ w32
        new_sq = stats["fro_sq"] - 2 * (v * utw).sum() + ((u.T @ u) @ v * v).sum()
        edit.scalar = float(_safe_ratio(stats["fro_sq"].reshape(1), new_sq.reshape(1)))
    return edit


def weight_stats(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    w32 = weight.detach().float()
    row_sq = (w32 * w32).sum(1)
    return {"row_sq": row_sq, "col_sq": (w32 * w32).sum(0), "fro_sq": row_sq.sum()}


def apply_edit(weight: torch.Tensor, edit: LowRankEdit) -> torch.Tensor:
    """The edited matrix W' in float32 (reference implementation, also used by `bake`)."""
    w = weight.detach().float() - edit.u.to(weight.device) @ edit.v.to(weight.device)
    if edit.row_scale is not None:
        w = w * edit.row_scale.to(w.device)[:, None]
    if edit.col_scale is not None:
        w = w * edit.col_scale.to(w.device)[None, :]
    return w * edit.scalar


def hook_handles(module: nn.Linear, edit: LowRankEdit) -> list[torch.utils.hooks.RemovableHandle]:
    """Register the edit's forward hooks on a Linear; returns their handles."""
    dtype, device = module.weight.dtype, module.weight.device
    u = edit.u.to(device=device, dtype=dtype)
    v_t = edit.v.T.to(device=device, dtype=dtype).contiguous()
    row = edit.row_scale.to(device=device, dtype=dtype) if edit.row_scale is not None else None
    col = edit.col_scale.to(device=device, dtype=dtype) if edit.col_scale is not None else None
    bias = module.bias
    scalar = edit.scalar

    def pre_hook(_module: nn.Module, args: tuple) -> tuple:
        return (args[0] * col, *args[1:])

    def post_hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        y = output - bias if bias is not None else output
        y = y - (args[0] @ v_t) @ u.T
        if row is not None:
            y = y * row
        if scalar != 1.0:
            y = y * scalar
        return y + bias if bias is not None else y

    handles = [module.register_forward_pre_hook(pre_hook)] if col is not None else []
    handles.append(module.register_forward_hook(post_hook))
    return handles


@contextlib.contextmanager
def hooked(modules: Mapping[ModuleKey, EditTarget], edits: Mapping[ModuleKey, Any]) -> Iterator[None]:
    """Apply edits for the duration of the block (forward hooks on a Linear; a fused-experts target patches its
    layer, `bruno.edit.experts`); everything is always restored afterwards."""
    with contextlib.ExitStack() as stack:
        for key, edit in edits.items():
            module = modules[key]
            if isinstance(module, nn.Linear):
                for handle in hook_handles(module, edit):
                    stack.callback(handle.remove)
            else:
                stack.enter_context(module.applied(edit))
        yield


@torch.no_grad()
def bake(modules: Mapping[ModuleKey, EditTarget], edits: Mapping[ModuleKey, Any]) -> None:
    """Write the edited matrices into the model weights (in place)."""
    for key, edit in edits.items():
        module = modules[key]
        if isinstance(module, nn.Linear):
            module.weight.copy_(apply_edit(module.weight, edit).to(module.weight.dtype))
        else:
            module.bake(edit)
