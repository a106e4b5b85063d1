"""Refusal directions: per-layer difference of means of the residual stream at the last prompt position.

Index convention (heretic's): row 0 is the embedding output, row i+1 the output of decoder layer i, so "layer i's
direction" is row i+1 and a float `direction_index` i interpolates rows floor(i)+1 and floor(i)+2.
`orthogonalize_direction` ("projected abliteration") removes from each layer's direction its component along that
layer's normalised harmless mean and renormalises.

`directions.pt` is a dict of plain tensors plus JSON-like metadata, always read with `torch.load(weights_only=True)`.
`DirectionSettings` is the `directions` config section that the directions job computes them by.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bruno.config import schema_defaults
from bruno.errors import BrunoError
from bruno.io import atomic_path
from bruno.model.generation import Batch, last_token_residuals

FORMAT_VERSION = 1

_default = schema_defaults("directions")


@dataclass(frozen=True)
class DirectionSettings:
    """The `directions` config section; meanings and defaults in config/schema.yaml."""

    orthogonalize_direction: bool = _default("orthogonalize_direction")
    n_train_prompts: int | None = _default("n_train_prompts")
    direction_method: str = _default("direction_method")
    # Contrastive PCA (pca, ensemble_probe_pca).
    n_refusal_directions: int = _default("n_refusal_directions")
    pca_alpha: float = _default("pca_alpha")
    eigenvalue_weight_method: str = _default("eigenvalue_weight_method")
    eigenvalue_weight_temperature: float = _default("eigenvalue_weight_temperature")
    ensemble_weight_probe: float = _default("ensemble_weight_probe")
    ensemble_weight_pca: float = _default("ensemble_weight_pca")
    # Concept cones.
    use_concept_cones: bool = _default("use_concept_cones")
    n_concept_cones: int = _default("n_concept_cones")
    min_cone_size: int = _default("min_cone_size")
    directions_per_cone: int = _default("directions_per_cone")
    min_silhouette_score: float = _default("min_silhouette_score")
    cone_layer_fraction: float | None = _default("cone_layer_fraction")
    cone_weighting: str = _default("cone_weighting")
    # Contrastive activation addition.
    use_caa: bool = _default("use_caa")
    caa_addition_strength: float = _default("caa_addition_strength")
    caa_max_overlap: float = _default("caa_max_overlap")
    caa_min_examples: int = _default("caa_min_examples")
    caa_max_new_tokens: int = _default("caa_max_new_tokens")
    # Activation calibration.
    use_activation_calibration: bool = _default("use_activation_calibration")
    activation_target_percentile: float = _default("activation_target_percentile")
    activation_calibration_layer_frac: float = _default("activation_calibration_layer_frac")
    activation_calibration_min_factor: float = _default("activation_calibration_min_factor")
    activation_calibration_max_factor: float = _default("activation_calibration_max_factor")


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def residual_means(model: nn.Module, batches: Sequence[Batch]) -> tuple[torch.Tensor, int]:
    """Mean residual per hidden-state index, accumulated in float64 on the CPU: ([L+1, d], n)."""
    total: torch.Tensor | None = None
    n = 0
    for batch in batches:
        residuals = last_token_residuals(model, [batch]).double()
        total = residuals.sum(0) if total is None else total + residuals.sum(0)
        n += residuals.shape[0]
    if total is None:
        raise BrunoError("No prompts to compute residual means from.")
    return total / n, n


def mean_difference(
    harmful_mean: torch.Tensor, harmless_mean: torch.Tensor, orthogonalize: bool
) -> torch.Tensor:
    """Unit refusal direction per row ([L+1, d] float32), optionally projected ⟂ the harmless mean."""
    directions = _unit(harmful_mean - harmless_mean)
    if orthogonalize:
        harmless_unit = _unit(harmless_mean)
        directions = _unit(directions - (directions * harmless_unit).sum(-1, keepdim=True) * harmless_unit)
    return directions.float()


def direction_at(directions: torch.Tensor, index: float) -> torch.Tensor:
    """Global direction for a float layer index: lerp of rows floor(i)+1 and floor(i)+2, renormalised."""
    n_layers = directions.shape[0] - 1
    if not 0 <= index <= n_layers - 1:
        raise ValueError(f"direction_index {index} outside [0, {n_layers - 1}]")
    base = math.floor(index)
    frac = index - base
    lower = directions[base + 1]
    if frac == 0 or base + 2 > n_layers:
        return _unit(lower.clone())
    return _unit(torch.lerp(lower, directions[base + 2], frac))


def layer_separation(harmful_mean: torch.Tensor, harmless_mean: torch.Tensor) -> dict[str, list[float]]:
    """Per-row geometry for the report: ‖difference of means‖, cosine of the two means."""
    diff = (harmful_mean - harmless_mean).float()
    cos = torch.nn.functional.cosine_similarity(harmful_mean.float(), harmless_mean.float(), dim=-1)
    return {"difference_norm": diff.norm(dim=-1).tolist(), "means_cosine": cos.tolist()}


def save_directions(path: str | Path, payload: dict[str, Any]) -> None:
    payload = {"format_version": FORMAT_VERSION, **payload}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_directions(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise BrunoError(f"Directions file not found: {path}. Run the `directions` rule first.")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format_version") != FORMAT_VERSION:
        raise BrunoError(
            f"{path}: unsupported directions format {payload.get('format_version')!r}; recompute it."
        )
    return payload
