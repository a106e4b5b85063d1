"""Stage `evaluate`: held-out refusal rates and KL for one model stage -> refusals.csv + metrics.json.

The base stage also saves its first-token log-probs on the harmless test prompts, the KL reference of every other stage.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bruno.evaluate import (
    EvaluationSettings,
    generate_responses,
    harmless_logprobs,
    per_prompt_kl,
    refusal_rows,
    summarize,
)
from bruno.io import atomic_path, atomic_write_json
from bruno.model import ModelSettings, load_model
from bruno.prompts import read_prompts
from bruno.refusal import MarkerDetector
from bruno.runtime import peak_memory

log = logging.getLogger(__name__)


def run(
    stage: str,
    model_path: str,
    model_settings: ModelSettings,
    prompt_paths: dict[str, str],
    settings: EvaluationSettings,
    refusals_path: str | Path,
    metrics_path: str | Path,
    base_logprobs_path: str | Path,
    write_base_logprobs: bool,
) -> dict[str, Any]:
    start = time.perf_counter()
    model, tokenizer = load_model(model_path, model_settings)
    prompt_sets = {name: read_prompts(path) for name, path in prompt_paths.items()}
    responses = {
        name: generate_responses(model, tokenizer, prompts, model_settings.system_prompt, settings)
        for name, prompts in prompt_sets.items()
    }
    rows = refusal_rows(prompt_sets, responses, MarkerDetector(settings.refusal_markers))
    logprobs = harmless_logprobs(
        model, tokenizer, prompt_sets["harmless"], model_settings.system_prompt, settings.batch_size
    )
    if write_base_logprobs:
        with atomic_path(base_logprobs_path) as tmp:
            torch.save({"logprobs": logprobs, "prompt_ids": [p.id for p in prompt_sets["harmless"]]}, tmp)
        base = logprobs
    else:
        saved = torch.load(base_logprobs_path, map_location="cpu", weights_only=True)
        if saved["prompt_ids"] != [p.id for p in prompt_sets["harmless"]]:
            raise RuntimeError(
                f"{base_logprobs_path} was computed on different harmless test prompts; rerun evaluate_base."
            )
        base = saved["logprobs"]
    kl_values = per_prompt_kl(base, logprobs)
    metrics = {"stage": stage, "model": model_path, **summarize(rows, kl_values)}
    metrics["seconds"] = time.perf_counter() - start
    metrics.update(peak_memory())
    with atomic_path(refusals_path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    atomic_write_json(metrics_path, metrics)
    log.info(
        "%s: harmful refusal %.3f, harmless refusal %.3f, KL %.4f",
        stage, metrics["refusal_rate_harmful"]["value"], metrics["refusal_rate_harmless"]["value"], metrics["kl_divergence"]["value"],
    )  # fmt: skip
    return metrics
