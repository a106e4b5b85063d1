"""Alternative per-layer refusal directions: contrastive PCA (with eigenvalue weights), a supervised linear probe, their
sign-aligned ensemble, and activation calibration of the edit strength.

All functions take residuals as [n, L+1, d] tensors (see `bruno.model.generation.last_token_residuals`) and return unit directions
as [L+1, d] float32 (or [k, L+1, d] for several components).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def align_sign(directions: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Flip each direction (last dim) so that it has a non-negative dot product with the reference."""
    sign = torch.sign((directions * reference).sum(-1, keepdim=True))
    return directions * torch.where(sign == 0, torch.ones_like(sign), sign)


def eigenvalue_weights(eigenvalues: torch.Tensor, method: str, temperature: float = 1.0) -> torch.Tensor:
    """Relative weights of k components, the first (largest) being 1: softmax or proportional to the eigenvalues."""
    values = eigenvalues.double().clamp(min=1e-12)
    if method == "softmax":
        weights = torch.softmax(values / (values[0] * temperature), dim=0)
    elif method == "proportional":
        weights = values / values.sum()
    else:
        raise ValueError(f"unknown eigenvalue weight method {method!r}")
    return (weights / weights[0]).float()


@dataclass(frozen=True)
class PCAResult:
    components: torch.Tensor  # [k, L+1, d], sign-aligned with the mean difference
    eigenvalues: torch.Tensor  # [k, L+1]
    weights: torch.Tensor  # [k] (layer-averaged eigenvalues -> weights, first = 1)


def contrastive_pca(
    harmful: torch.Tensor,
    harmless: torch.Tensor,
    n_components: int,
    alpha: float,
    weight_method: str = "softmax",
    temperature: float = 1.0,
) -> PCAResult:
    """Top eigenvectors of Σ_harmful − α·Σ_harmless per layer, sign-aligned with the difference of means."""
    n_rows = harmful.shape[1]
    mean_diff = harmful.double().mean(0) - harmless.double().mean(0)
    components, eigenvalues = [], []
    for row in range(n_rows):
        h = harmful[:, row].double()
        g = harmless[:, row].double()
        cov_h = torch.cov(h.T) if h.shape[0] > 1 else torch.zeros(h.shape[1], h.shape[1], dtype=torch.float64)
        cov_g = torch.cov(g.T) if g.shape[0] > 1 else torch.zeros_like(cov_h)
        values, vectors = torch.linalg.eigh(cov_h - alpha * cov_g)  # ascending
        top = torch.argsort(values, descending=True)[:n_components]
        vecs = vectors[:, top].T  # [k, d]
        components.append(align_sign(vecs, mean_diff[row]))
        eigenvalues.append(values[top])
    comp = torch.stack(components, dim=1).float()  # [k, L+1, d]
    eig = torch.stack(eigenvalues, dim=1).float()  # [k, L+1]
    weights = eigenvalue_weights(
        eig[:, 1:].mean(1) if eig.shape[1] > 1 else eig[:, 0], weight_method, temperature
    )
    return PCAResult(_unit(comp), eig, weights)


@dataclass(frozen=True)
class ProbeResult:
    directions: torch.Tensor  # [L+1, d]
    cv_accuracy: list[float]  # per row


def probe_directions(harmful: torch.Tensor, harmless: torch.Tensor, seed: int, folds: int = 5) -> ProbeResult:
    """Logistic regression per layer (class-balanced), harmful = 1; direction = normalised weight vector.

    Cross-validated accuracy is recorded per layer. Rows where the classes are indistinguishable (e.g. the embedding of
    an identical last token) get the difference of means instead."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    x_all = torch.cat([harmful, harmless]).numpy().astype(np.float64)
    y = np.concatenate([np.ones(len(harmful)), np.zeros(len(harmless))])
    k = max(2, min(folds, int(min(len(harmful), len(harmless)))))
    directions, accuracies = [], []
    mean_diff = _unit(harmful.mean(0) - harmless.mean(0))
    for row in range(harmful.shape[1]):
        x = x_all[:, row]
        scale = x.std(0).mean() or 1.0
        clf = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000, random_state=seed)
        cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        accuracies.append(float(cross_val_score(clf, x / scale, y, cv=cv).mean()))
        clf.fit(x / scale, y)
        coef = torch.from_numpy(clf.coef_[0]).float()
        directions.append(_unit(coef) if coef.norm() > 1e-8 else mean_diff[row])
    return ProbeResult(torch.stack(directions), accuracies)


def ensemble(
    probe: torch.Tensor, pca_first: torch.Tensor, weight_probe: float, weight_pca: float
) -> torch.Tensor:
    """normalise(w_p·probe + w_c·pca), with each PCA vector's sign first aligned to the probe vector."""
    return _unit(weight_probe * probe + weight_pca * align_sign(pca_first, probe))


def calibration_factor(
    harmful: torch.Tensor,
    direction_rows: torch.Tensor,
    layer_fraction: float,
    target_percentile: float,
    min_factor: float,
    max_factor: float,
) -> dict[str, Any]:
    """Activation calibration (computed once from the base model): the ratio of the target percentile to the mean of
    |projection| of harmful residuals onto the refusal direction at one layer, clamped to [min, max]."""
    n_layers = harmful.shape[1] - 1
    layer = min(n_layers - 1, max(0, int(layer_fraction * n_layers)))
    projections = (harmful[:, layer + 1].double() @ direction_rows[layer + 1].double()).abs()
    mean = float(projections.mean())
    value = float(torch.quantile(projections, target_percentile))
    raw = value / mean if mean > 0 else 1.0
    return {
        "factor": float(min(max(raw, min_factor), max_factor)),
        "raw_factor": raw,
        "layer": layer,
        "percentile": target_percentile,
        "mean_projection": mean,
        "percentile_projection": value,
    }
