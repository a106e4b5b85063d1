"""Stage `directions`: per-layer refusal directions from the harmful/harmless train prompts -> directions.pt."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bruno.directions import layer_separation, mean_difference, residual_means, save_directions
from bruno.io import sha256_texts
from bruno.model import ModelSettings, encode, load_model, model_device
from bruno.prompts import read_prompts

log = logging.getLogger(__name__)


def run(
    model_path: str,
    model_settings: ModelSettings,
    harmful_path: str | Path,
    harmless_path: str | Path,
    settings: Mapping[str, Any],
    out_path: str | Path,
) -> dict[str, Any]:
    model, tokenizer = load_model(model_path, model_settings)
    limit = settings.get("n_train_prompts")
    harmful = [p.text for p in read_prompts(harmful_path)][:limit]
    harmless = [p.text for p in read_prompts(harmless_path)][:limit]
    device = model_device(model)
    batch = model_settings.batch_size
    harmful_mean, n_harmful = residual_means(
        model, encode(tokenizer, harmful, model_settings.system_prompt, batch, device)
    )
    harmless_mean, n_harmless = residual_means(
        model, encode(tokenizer, harmless, model_settings.system_prompt, batch, device)
    )
    directions = mean_difference(harmful_mean, harmless_mean, settings["orthogonalize_direction"])
    metadata = {
        "model": model_path,
        "n_layers": directions.shape[0] - 1,
        "hidden_size": directions.shape[1],
        "n_harmful": n_harmful,
        "n_harmless": n_harmless,
        "harmful_sha256": sha256_texts(harmful),
        "harmless_sha256": sha256_texts(harmless),
        "system_prompt": model_settings.system_prompt,
        "orthogonalize_direction": settings["orthogonalize_direction"],
        "method": "mean_difference",
        "separation": layer_separation(harmful_mean, harmless_mean),
    }
    save_directions(
        out_path,
        {
            "directions": directions,
            "harmful_mean": harmful_mean.float(),
            "harmless_mean": harmless_mean.float(),
            "metadata": metadata,
        },
    )
    log.info(
        "directions: %d rows of size %d from %d/%d prompts",
        directions.shape[0],
        directions.shape[1],
        n_harmful,
        n_harmless,
    )
    return metadata
