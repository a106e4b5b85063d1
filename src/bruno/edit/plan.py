"""What a set of abliteration parameters means: per-layer weights and directions, turned into matrix edits.

The same `build_edits` serves trials (applied as hooks) and the chosen trial (baked into the weights), so the model the
search scored is exactly the model that is exported.

Directions come as a `DirectionSet` (read from directions.pt): a primary per-layer direction, optional extra components
(contrastive PCA) with relative weights, optional concept cones (each with its share of prompts and its own
directions), an optional CAA compliance direction, the harmless means (for biprojection) and the activation-calibration
factor that scales every kernel weight.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from bruno.config import schema_defaults
from bruno.directions.mean import direction_at
from bruno.edit.ablation import EditTarget, ModuleKey, make_edit, tent_kernel, weight_stats
from bruno.edit.targets import residual_writers

CAA_COMPONENT = "attn.o_proj"


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
    weight_scale: float = 1.0  # activation calibration factor (1 = off)

    def layer_weights(self, n_layers: int) -> dict[str, list[float]]:
        return {
            component: [
                self.weight_scale * w
                for w in tent_kernel(
                    n_layers, k.max_weight, k.max_weight_position, k.min_weight, k.min_weight_distance
                )
            ]
            for component, k in self.kernels.items()
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AblationParams:
        kernels = {c: ComponentKernel(**k) for c, k in data["kernels"].items()}
        return cls(
            data["direction_scope"], data.get("direction_index"), kernels, data.get("weight_scale", 1.0)
        )


@dataclass
class DirectionSet:
    primary: torch.Tensor  # [L+1, d]
    extras: list[tuple[torch.Tensor, float]] = field(default_factory=list)  # ([L+1, d], relative weight)
    # Per cone: (edit strength from `cone_weighting`: 1, relative share or share; [(rows, w)]).
    cones: list[tuple[float, list[tuple[torch.Tensor, float]]]] = field(default_factory=list)
    caa: torch.Tensor | None = None  # [L+1, d]
    caa_strength: float = 0.0
    harmless_mean: torch.Tensor | None = None  # [L+1, d], needed by biprojection
    weight_scale: float = 1.0

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> DirectionSet:
        extras = [
            (rows, float(w))
            for rows, w in zip(
                payload.get("extra_directions", []), payload.get("extra_weights", []), strict=True
            )
        ]
        cones = []
        if "cone_directions" in payload:
            weights = payload["cone_direction_weights"].tolist()
            # Files written before `cone_weighting` existed weighted each cone by its share.
            strengths = payload.get("cone_weights", payload["cone_shares"]).tolist()
            for strength, rows in zip(strengths, payload["cone_directions"], strict=True):
                cones.append((strength, [(r, weights[j]) for j, r in enumerate(rows)]))
        return cls(
            primary=payload["directions"],
            extras=extras,
            cones=cones,
            caa=payload.get("caa_direction"),
            caa_strength=float(payload.get("caa_strength", 0.0)),
            harmless_mean=payload.get("harmless_mean"),
            weight_scale=float(payload.get("calibration_factor", 1.0)),
        )

    def refusal_sets(self) -> list[tuple[torch.Tensor, float]]:
        """Every refusal direction set with its relative weight (cones replace the primary direction)."""
        if self.cones:
            return [(rows, strength * w) for strength, parts in self.cones for rows, w in parts]
        return [(self.primary, 1.0), *self.extras]


def _pick(rows: torch.Tensor, layer: int, params: AblationParams) -> torch.Tensor:
    if params.direction_scope == "global":
        if params.direction_index is None:
            raise ValueError("global direction scope needs a direction_index")
        return direction_at(rows, params.direction_index)
    if params.direction_scope == "per layer":
        return rows[layer + 1]
    raise ValueError(f"unknown direction_scope {params.direction_scope!r}")


def biproject(direction: torch.Tensor, harmless_mean_row: torch.Tensor) -> torch.Tensor:
    """Remove the component along the target layer's harmless mean and renormalise (grimjim's biprojection)."""
    m = harmless_mean_row.float()
    m = m / m.norm().clamp(min=1e-12)
    d = direction - (direction @ m) * m
    return d / d.norm().clamp(min=1e-12)


class EditTargets:
    """What an abliteration may edit, flattened to {(component, layer): target}, with their cached norms. A target is
    a Linear or, in a mixture-of-experts layer, a `bruno.edit.experts.ExpertsTarget` (see `bruno.model.families`)."""

    def __init__(self, model: nn.Module, components: list[str]):
        per_component = residual_writers(model, components)
        self.n_layers = len(next(iter(per_component.values())))
        self.modules: dict[ModuleKey, EditTarget] = {
            (component, layer): module
            for component, modules in per_component.items()
            for layer, module in enumerate(modules)
        }
        self._stats: dict[ModuleKey, Any] = {}

    def stats(self, key: ModuleKey) -> Any:
        if key not in self._stats:
            module = self.modules[key]
            is_linear = isinstance(module, nn.Linear)
            self._stats[key] = weight_stats(module.weight) if is_linear else module.weight_stats()
        return self._stats[key]

    def make_edit(
        self, key: ModuleKey, vectors: list[torch.Tensor], strengths: list[float], norm_preservation: str
    ) -> Any:
        """A LowRankEdit for a Linear, an ExpertsEdit (one per expert) for a fused-experts target."""
        module = self.modules[key]
        if isinstance(module, nn.Linear):
            return make_edit(module.weight, vectors, strengths, norm_preservation, self.stats(key))
        return module.make_edit(vectors, strengths, norm_preservation, self.stats(key))

    def parameter_names(self, model: nn.Module, key: ModuleKey) -> list[str]:
        names = {id(m): n for n, m in model.named_modules()}
        module = self.modules[key]
        if isinstance(module, nn.Linear):
            return [names[id(module)] + ".weight"]
        return module.parameter_names(names)


def build_edits(
    targets: EditTargets,
    directions: DirectionSet | torch.Tensor,
    params: AblationParams,
    norm_preservation: str,
    biprojected: bool = False,
) -> dict[ModuleKey, Any]:
    """One edit per (component, layer) with a non-zero weight (`EditTargets.make_edit`)."""
    if isinstance(directions, torch.Tensor):
        directions = DirectionSet(directions)
    if biprojected and directions.harmless_mean is None:
        raise ValueError("biprojection needs the harmless means in directions.pt")
    sets = directions.refusal_sets()
    edits = {}
    for component, weights in params.layer_weights(targets.n_layers).items():
        for layer, weight in enumerate(weights):
            if weight == 0.0:
                continue
            vectors, strengths = [], []
            for rows, relative in sets:
                vector = _pick(rows, layer, params)
                if biprojected:
                    vector = biproject(vector, directions.harmless_mean[layer + 1])
                vectors.append(vector)
                strengths.append(weight * relative)
            if directions.caa is not None and component == CAA_COMPONENT and directions.caa_strength:
                vectors.append(_pick(directions.caa, layer, params))
                strengths.append(-directions.caa_strength)
            edits[(component, layer)] = targets.make_edit(
                (component, layer), vectors, strengths, norm_preservation
            )
    return edits


_default = schema_defaults("abliteration")


@dataclass(frozen=True)
class AbliterationSettings:
    """The `abliteration` config section."""

    components: list[str] = _default("components")
    norm_preservation: str = _default("norm_preservation")
    biprojected: bool = _default("biprojected")
