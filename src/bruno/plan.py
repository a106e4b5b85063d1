"""What a set of abliteration parameters means: per-layer weights and directions, turned into matrix edits.

The same `build_edits` serves trials (applied as hooks) and the chosen trial (baked into the weights), so the model the
search scored is exactly the model that is exported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from bruno.ablation import LowRankEdit, make_edit, tent_kernel, weight_stats
from bruno.directions import direction_at
from bruno.model import target_modules

ModuleKey = tuple[str, int]


@dataclass(frozen=True)
class ComponentKernel:
    """heretic's per-component "tent": `min_weight` here is absolute (already multiplied by max_weight)."""

    max_weight: float
    max_weight_position: float
    min_weight: float
    min_weight_distance: float


@dataclass(frozen=True)
class AblationParams:
    direction_scope: str  # "global" | "per layer"
    direction_index: float | None  # used only by the global scope
    kernels: dict[str, ComponentKernel] = field(default_factory=dict)

    def layer_weights(self, n_layers: int) -> dict[str, list[float]]:
        return {
            component: tent_kernel(
                n_layers, k.max_weight, k.max_weight_position, k.min_weight, k.min_weight_distance
            )
            for component, k in self.kernels.items()
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AblationParams:
        kernels = {c: ComponentKernel(**k) for c, k in data["kernels"].items()}
        return cls(data["direction_scope"], data.get("direction_index"), kernels)


def layer_directions(directions: torch.Tensor, params: AblationParams) -> torch.Tensor:
    """The direction each decoder layer's edit removes: [n_layers, d]."""
    n_layers = directions.shape[0] - 1
    if params.direction_scope == "global":
        if params.direction_index is None:
            raise ValueError("global direction scope needs a direction_index")
        return direction_at(directions, params.direction_index).expand(n_layers, -1)
    if params.direction_scope == "per layer":
        return directions[1:]
    raise ValueError(f"unknown direction_scope {params.direction_scope!r}")


class EditTargets:
    """The matrices an abliteration may edit, flattened to {(component, layer): Linear}, with their cached norms."""

    def __init__(self, model: nn.Module, components: list[str]):
        per_component = target_modules(model, components)
        self.n_layers = len(next(iter(per_component.values())))
        self.modules: dict[ModuleKey, nn.Linear] = {
            (component, layer): module
            for component, modules in per_component.items()
            for layer, module in enumerate(modules)
        }
        self._stats: dict[ModuleKey, dict[str, torch.Tensor]] = {}

    def stats(self, key: ModuleKey) -> dict[str, torch.Tensor]:
        if key not in self._stats:
            self._stats[key] = weight_stats(self.modules[key].weight)
        return self._stats[key]


def build_edits(
    targets: EditTargets, directions: torch.Tensor, params: AblationParams, norm_preservation: str
) -> dict[ModuleKey, LowRankEdit]:
    """One low-rank edit per (component, layer) with a non-zero weight."""
    per_layer = layer_directions(directions, params)
    edits = {}
    for component, weights in params.layer_weights(targets.n_layers).items():
        for layer, weight in enumerate(weights):
            if weight == 0.0:
                continue
            key = (component, layer)
            module = targets.modules[key]
            edits[key] = make_edit(
                module.weight, [per_layer[layer]], [weight], norm_preservation, targets.stats(key)
            )
    return edits
