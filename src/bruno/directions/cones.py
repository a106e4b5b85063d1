"""Concept cones: clusters of harmful prompts in activation space, each with its own per-layer refusal direction(s).

k-means (seeded) over the harmful train residuals; the clustering is accepted only if its silhouette score reaches
`min_silhouette_score`, otherwise the caller falls back to the single direction and records why. Each kept cone gets
`directions_per_cone` unit directions per layer: the cone's difference of means from the harmless mean, then contrastive
PCA components of the cone, made orthogonal to the first. A cone's edit is weighted by its share of the prompts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bruno.directions.methods import contrastive_pca


@dataclass
class ConeResult:
    accepted: bool
    reason: str
    silhouette: float | None
    directions: torch.Tensor | None = None  # [n_cones, directions_per_cone, L+1, d]
    shares: list[float] = field(default_factory=list)
    info: list[dict[str, Any]] = field(default_factory=list)


def cone_features(harmful: torch.Tensor, layer_fraction: float | None) -> np.ndarray:
    """Clustering features: one layer's residual, or the mean over layers of unit-normalised residuals."""
    n_layers = harmful.shape[1] - 1
    if layer_fraction is not None:
        row = 1 + min(n_layers - 1, int(layer_fraction * n_layers))
        x = harmful[:, row]
    else:
        x = torch.nn.functional.normalize(harmful[:, 1:].double(), dim=-1).mean(1)
    return x.double().numpy()


def find_cones(
    harmful: torch.Tensor,
    harmless: torch.Tensor,
    categories: Sequence[str],
    n_cones: int,
    min_cone_size: int,
    directions_per_cone: int,
    min_silhouette: float,
    layer_fraction: float | None,
    seed: int,
) -> ConeResult:
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    n = harmful.shape[0]
    k = min(n_cones, n // max(min_cone_size, 1))
    if k < 2:
        return ConeResult(
            False, f"too few harmful prompts ({n}) for 2 cones of at least {min_cone_size}", None
        )
    features = cone_features(harmful, layer_fraction)
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(features)
    silhouette = float(silhouette_score(features, labels))
    if silhouette < min_silhouette:
        return ConeResult(
            False, f"silhouette {silhouette:.3f} < min_silhouette_score {min_silhouette}", silhouette
        )
    harmless_mean = harmless.double().mean(0)
    directions, shares, info = [], [], []
    kept = [c for c in range(k) if (labels == c).sum() >= min_cone_size]
    if len(kept) < 1:
        return ConeResult(False, f"no cluster reached min_cone_size {min_cone_size}", silhouette)
    total = sum(int((labels == c).sum()) for c in kept)
    for cone in kept:
        members = torch.from_numpy(labels == cone)
        cone_harmful = harmful[members]
        first = cone_harmful.double().mean(0) - harmless_mean  # [L+1, d]
        first = first / first.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        vectors = [first.float()]
        if directions_per_cone > 1:
            pca = contrastive_pca(cone_harmful, harmless, directions_per_cone - 1, alpha=1.0)
            for comp in pca.components:
                comp = comp.double()
                comp = comp - (comp * first).sum(-1, keepdim=True) * first  # Gram-Schmidt against the first
                vectors.append((comp / comp.norm(dim=-1, keepdim=True).clamp(min=1e-12)).float())
        directions.append(torch.stack(vectors))
        size = int(members.sum())
        shares.append(size / total)
        makeup = Counter(categories[i] for i in np.flatnonzero(labels == cone))
        dominant, count = makeup.most_common(1)[0]
        info.append(
            {
                "cone": len(info),
                "size": size,
                "share": size / total,
                "dominant_category": dominant,
                "purity": count / size,
                "categories": dict(makeup.most_common()),
            }
        )
    dropped = k - len(kept)
    reason = f"{len(kept)} cone(s), silhouette {silhouette:.3f}" + (
        f", {dropped} small cluster(s) dropped" if dropped else ""
    )
    return ConeResult(True, reason, silhouette, torch.stack(directions), shares, info)
