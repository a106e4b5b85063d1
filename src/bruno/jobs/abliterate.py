"""Stage `abliterate`: bake the chosen trial into the weights and save a normal HF model directory, atomically."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from bruno.directions.mean import load_directions
from bruno.edit.ablation import bake
from bruno.edit.plan import AblationParams, AbliterationSettings, DirectionSet, EditTargets, build_edits
from bruno.io import atomic_directory, atomic_write_json, directory_hashes, sha256_bytes
from bruno.model.loading import ModelSettings, load_model

log = logging.getLogger(__name__)


def module_names(model: Any, targets: EditTargets, keys: list[tuple[str, int]]) -> list[str]:
    return [name for key in keys for name in targets.parameter_names(model, key)]


def run(
    model_path: str,
    model_settings: ModelSettings,
    directions_path: str | Path,
    best_trial_path: str | Path,
    abliteration: AbliterationSettings,
    out_dir: str | Path,
    edit_path: str | Path,
) -> dict[str, Any]:
    best = json.loads(Path(best_trial_path).read_text(encoding="utf-8"))
    params = AblationParams.from_dict(best["resolved"])
    model, tokenizer = load_model(model_path, model_settings)
    payload = load_directions(directions_path)
    directions = DirectionSet.from_payload(payload)
    targets = EditTargets(model, abliteration.components)
    edits = build_edits(targets, directions, params, abliteration.norm_preservation, abliteration.biprojected)
    bake(targets.modules, edits)
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        hashes = directory_hashes(tmp)
    record = {
        "variant": best["variant"],
        "trial_number": best["trial_number"],
        "source_model": model_path,
        "components": abliteration.components,
        "norm_preservation": abliteration.norm_preservation,
        "biprojected": abliteration.biprojected,
        "directions_method": payload["metadata"].get("method"),
        "concept_cones": payload["metadata"].get("concept_cones", {}).get("status"),
        "caa_applied": "caa_direction" in payload,
        "calibration_factor": directions.weight_scale,
        "params": params.to_dict(),
        "layer_weights": params.layer_weights(targets.n_layers),
        "edited_matrices": module_names(model, targets, sorted(edits)),
        "directions_sha256": sha256_bytes(directions.primary.numpy().tobytes()),
        "weights_sha256": hashes,
    }
    atomic_write_json(edit_path, record)
    log.info("baked %d matrix edits into %s", len(edits), out_dir)
    return record
