"""Stage `directions`: per-layer refusal directions from the harmful/harmless train prompts -> directions.pt.

Depending on the variant's `directions` settings this also computes contrastive-PCA components, a supervised probe, their
ensemble, concept cones, a CAA compliance direction and the activation-calibration factor — all once, from the base
model, and stored with what was decided (and why, where a method fell back or was skipped) in the metadata.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from bruno.directions.caa import compliance_direction
from bruno.directions.cones import find_cones
from bruno.directions.mean import DirectionSettings, layer_separation, mean_difference, save_directions
from bruno.directions.methods import calibration_factor, contrastive_pca, ensemble, probe_directions
from bruno.errors import BrunoError
from bruno.evaluation.refusal import MarkerDetector
from bruno.io import sha256_texts
from bruno.model.families import check_model_dir
from bruno.model.generation import encode, generate_greedy, last_token_residuals, model_device
from bruno.model.loading import ModelSettings, load_model
from bruno.model.placement import resolve_batch_size
from bruno.model.thinking import AnswerOnly, base_response_prefix, prompt_opened
from bruno.prompts import read_prompts

log = logging.getLogger(__name__)


def _project(rows: torch.Tensor, harmless_mean: torch.Tensor) -> torch.Tensor:
    """Projected abliteration for any direction set: remove the component along the harmless mean, renormalise."""
    unit = harmless_mean / harmless_mean.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    rows = rows - (rows * unit).sum(-1, keepdim=True) * unit
    return (rows / rows.norm(dim=-1, keepdim=True).clamp(min=1e-12)).float()


def cone_weights(shares: torch.Tensor, weighting: str) -> torch.Tensor:
    """Edit strength per cone from its share of harmful prompts (see `directions.cone_weighting`)."""
    if weighting == "uniform":
        return torch.ones_like(shares)
    if weighting == "relative_share":
        return shares / shares.max()
    if weighting == "share":
        return shares.clone()
    raise ValueError(f"unknown cone_weighting {weighting!r}")


def _primary(
    harmful: torch.Tensor,
    harmless: torch.Tensor,
    mean_diff: torch.Tensor,
    settings: DirectionSettings,
    seed: int,
) -> tuple[torch.Tensor, Any, dict[str, Any]]:
    """The primary per-layer direction of `settings.direction_method`, the contrastive PCA (or None) and metadata."""
    method, n_components = settings.direction_method, settings.n_refusal_directions
    if n_components > 1 and method not in ("pca", "ensemble_probe_pca"):
        raise BrunoError(
            "config key 'directions.n_refusal_directions' > 1 needs direction_method pca or ensemble_probe_pca."
        )
    meta: dict[str, Any] = {}
    pca = probe = None
    if method in ("pca", "ensemble_probe_pca"):
        pca = contrastive_pca(
            harmful, harmless, n_components, settings.pca_alpha, settings.eigenvalue_weight_method,
            settings.eigenvalue_weight_temperature,
        )  # fmt: skip
        meta["pca"] = {"eigenvalues": pca.eigenvalues.tolist(), "weights": pca.weights.tolist()}
    if method in ("probe", "ensemble_probe_pca"):
        probe = probe_directions(harmful, harmless, seed)
        meta["probe"] = {"cv_accuracy": probe.cv_accuracy}
        log.info("probe CV accuracy per layer: %s", [round(a, 3) for a in probe.cv_accuracy])
    if method == "mean_difference":
        primary = mean_diff
    elif method == "pca":
        primary = pca.components[0]
    elif method == "probe":
        primary = probe.directions
    else:
        primary = ensemble(
            probe.directions, pca.components[0], settings.ensemble_weight_probe, settings.ensemble_weight_pca
        )
    meta["primary_vs_mean_difference_cosine"] = (primary * mean_diff).sum(-1).tolist()
    return primary, pca, meta


def _cones(
    harmful: torch.Tensor, harmless: torch.Tensor, categories: list[str], settings: DirectionSettings, seed: int,
    pca: Any, finish: Any,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:  # fmt: skip
    """Concept-cone tensors (none when the cones are rejected or off) and their metadata."""
    if not settings.use_concept_cones:
        return {}, {"status": "off"}
    cones = find_cones(
        harmful, harmless, categories, settings.n_concept_cones, settings.min_cone_size,
        settings.directions_per_cone, settings.min_silhouette_score, settings.cone_layer_fraction, seed,
    )  # fmt: skip
    meta = {"status": "used" if cones.accepted else "fallback", "reason": cones.reason,
            "silhouette": cones.silhouette, "cones": cones.info}  # fmt: skip
    if not cones.accepted:
        log.warning(
            "concept cones NOT used (%s): falling back to the single %s direction",
            cones.reason, settings.direction_method,
        )  # fmt: skip
        return {}, meta
    n, k = cones.directions.shape[:2]
    tensors = {
        "cone_directions": torch.stack(
            [torch.stack([finish(cones.directions[c, j]) for j in range(k)]) for c in range(n)]
        ),
        "cone_shares": torch.tensor(cones.shares),
    }
    tensors["cone_weights"] = cone_weights(tensors["cone_shares"], settings.cone_weighting)
    # The cone's j-th direction is weighted like the j-th PCA component where the method has one, else 1.
    pca_weights = pca.weights.tolist() if pca is not None else []
    weights = [1.0] + [pca_weights[j] if j < len(pca_weights) else 1.0 for j in range(1, k)]
    tensors["cone_direction_weights"] = torch.tensor(weights)
    log.info("concept cones: %s", cones.reason)
    return tensors, meta


def _caa(
    harmful: torch.Tensor, refused: list[bool] | None, directions: torch.Tensor, settings: DirectionSettings
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The CAA compliance direction and strength (none when skipped or off) and its metadata."""
    if not settings.use_caa:
        return {}, {"applied": False, "reason": "off"}
    if refused is None:
        raise ValueError("CAA needs the base model's refusal verdicts on the harmful train prompts")
    caa = compliance_direction(
        harmful, refused, directions, settings.caa_min_examples, settings.caa_max_overlap
    )
    direction = caa.pop("direction", None)
    meta = {**caa, "strength": settings.caa_addition_strength}
    if direction is None:
        log.warning("CAA skipped: %s", caa["reason"])
        return {}, meta
    return {
        "caa_direction": direction,
        "caa_strength": torch.tensor(float(settings.caa_addition_strength)),
    }, meta


def _calibration(
    harmful: torch.Tensor, directions: torch.Tensor, settings: DirectionSettings
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The activation-calibration factor (none when off) and its metadata."""
    if not settings.use_activation_calibration:
        return {}, {"factor": 1.0, "status": "off"}
    calibration = calibration_factor(
        harmful, directions, settings.activation_calibration_layer_frac, settings.activation_target_percentile,
        settings.activation_calibration_min_factor, settings.activation_calibration_max_factor,
    )  # fmt: skip
    log.info(
        "activation calibration factor %.3f (raw %.3f)", calibration["factor"], calibration["raw_factor"]
    )
    return {"calibration_factor": torch.tensor(calibration["factor"])}, calibration


def compute(
    harmful: torch.Tensor,
    harmless: torch.Tensor,
    categories: list[str],
    settings: DirectionSettings,
    seed: int,
    refused: list[bool] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """All direction sets from residuals ([n, L+1, d]); returns (tensors, metadata)."""
    harmful_mean, harmless_mean = harmful.double().mean(0), harmless.double().mean(0)
    orthogonalize = settings.orthogonalize_direction
    mean_diff = mean_difference(harmful_mean, harmless_mean, orthogonalize=False)
    tensors: dict[str, Any] = {"harmful_mean": harmful_mean.float(), "harmless_mean": harmless_mean.float()}
    meta: dict[str, Any] = {"method": settings.direction_method, "orthogonalize_direction": orthogonalize}
    primary, pca, primary_meta = _primary(harmful, harmless, mean_diff, settings, seed)
    meta.update(primary_meta)

    def finish(rows: torch.Tensor) -> torch.Tensor:
        return _project(rows, harmless_mean) if orthogonalize else rows.float()

    tensors["directions"] = finish(primary)
    if pca is not None and settings.n_refusal_directions > 1:
        tensors["extra_directions"] = torch.stack([finish(c) for c in pca.components[1:]])
        tensors["extra_weights"] = pca.weights[1:].clone()
    for key, (extra, part_meta) in (
        ("concept_cones", _cones(harmful, harmless, categories, settings, seed, pca, finish)),
        ("caa", _caa(harmful, refused, tensors["directions"], settings)),
        ("calibration", _calibration(harmful, tensors["directions"], settings)),
    ):
        tensors.update(extra)
        meta[key] = part_meta
    meta["separation"] = layer_separation(harmful_mean, harmless_mean)
    return tensors, meta


def run(
    model_path: str,
    model_settings: ModelSettings,
    harmful_path: str | Path,
    harmless_path: str | Path,
    settings: DirectionSettings,
    refusal_markers: list[str] | None,
    seed: int,
    out_path: str | Path,
) -> dict[str, Any]:
    """Compute and save the variant's directions; `refusal_markers` are read only with `use_caa` (else None)."""
    if Path(model_path).is_dir():
        check_model_dir(model_path)  # an unsupported family stops here, before the weights are read
    model, tokenizer = load_model(model_path, model_settings)
    limit = settings.n_train_prompts
    harmful_prompts = read_prompts(harmful_path)[:limit]
    harmless_prompts = read_prompts(harmless_path)[:limit]
    device, system = model_device(model), model_settings.system_prompt
    texts = [p.text for p in harmful_prompts + harmless_prompts]
    batch = resolve_batch_size(model_settings.batch_size, model, tokenizer, texts, system)
    tags = model_settings.thinking_tags
    prefix = base_response_prefix(model, tokenizer, model_settings, harmful_path, harmless_path)
    harmful_batches = encode(tokenizer, [p.text for p in harmful_prompts], system, batch, device, prefix)
    harmful = last_token_residuals(model, harmful_batches)
    harmless = last_token_residuals(
        model, encode(tokenizer, [p.text for p in harmless_prompts], system, batch, device, prefix)
    )
    refused = None
    if settings.use_caa:
        responses = generate_greedy(model, tokenizer, harmful_batches, settings.caa_max_new_tokens)
        detector = AnswerOnly(
            MarkerDetector(refusal_markers), tags, prompt_opened(tokenizer, system, prefix, tags)
        )
        refused = [v.is_refusal for v in detector.classify(responses)]
    tensors, meta = compute(harmful, harmless, [p.category for p in harmful_prompts], settings, seed, refused)
    meta.update(
        {
            "model": model_path,
            "n_layers": harmful.shape[1] - 1,
            "hidden_size": harmful.shape[2],
            "n_harmful": len(harmful_prompts),
            "n_harmless": len(harmless_prompts),
            "harmful_sha256": sha256_texts(p.text for p in harmful_prompts),
            "harmless_sha256": sha256_texts(p.text for p in harmless_prompts),
            "system_prompt": system,
            "response_prefix": prefix,
        }
    )
    save_directions(out_path, {**tensors, "metadata": meta})
    log.info("directions (%s): %d rows of size %d", meta["method"], harmful.shape[1], harmful.shape[2])
    return meta
