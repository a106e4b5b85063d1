"""Evaluation of one model stage (base, ablated, healed) on the held-out test prompts.

Writes `refusals.csv` (prompt, set, category, response, verdict and the detector that decided) and the summary figures
for `metrics.json`: every rate with n and a 95 % Wilson interval, KL(base ‖ model) of the first response token with a
95 % interval over prompts (0 by definition for the base model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bruno.model import encode, first_token_logprobs, generate_greedy, model_device
from bruno.prompts import Prompt
from bruno.refusal import DEFAULT_REFUSAL_MARKERS, MarkerDetector
from bruno.stats import mean_metric, rate_metric


@dataclass(frozen=True)
class EvaluationSettings:
    max_new_tokens: int = 100
    batch_size: int = 32
    refusal_markers: list[str] = field(default_factory=lambda: list(DEFAULT_REFUSAL_MARKERS))


def generate_responses(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    system_prompt: str | None,
    settings: EvaluationSettings,
) -> list[str]:
    batches = encode(
        tokenizer, [p.text for p in prompts], system_prompt, settings.batch_size, model_device(model)
    )
    return generate_greedy(model, tokenizer, batches, settings.max_new_tokens)


def refusal_rows(
    prompt_sets: dict[str, Sequence[Prompt]], responses: dict[str, Sequence[str]], detector: MarkerDetector
) -> list[dict[str, Any]]:
    rows = []
    for set_name, prompts in prompt_sets.items():
        for prompt, response, verdict in zip(
            prompts, responses[set_name], detector.classify(responses[set_name]), strict=True
        ):
            rows.append(
                {
                    "prompt_id": prompt.id,
                    "prompt": prompt.text,
                    "set": set_name,
                    "split": prompt.split,
                    "category": prompt.category,
                    "response": response,
                    "is_refusal": verdict.is_refusal,
                    "detector": verdict.detector,
                    "matched": verdict.matched,
                }
            )
    return rows


def per_prompt_kl(base_logprobs: torch.Tensor, logprobs: torch.Tensor) -> list[float]:
    """KL(base ‖ model) per prompt, summed over the vocabulary."""
    p = base_logprobs.exp()
    return (p * (base_logprobs - logprobs)).sum(-1).tolist()


def harmless_logprobs(
    model: nn.Module, tokenizer: Any, prompts: Sequence[Prompt], system_prompt: str | None, batch_size: int
) -> torch.Tensor:
    batches = encode(tokenizer, [p.text for p in prompts], system_prompt, batch_size, model_device(model))
    return first_token_logprobs(model, batches)


def summarize(rows: Sequence[dict[str, Any]], kl_values: Sequence[float]) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for set_name in dict.fromkeys(r["set"] for r in rows):
        verdicts = [r["is_refusal"] for r in rows if r["set"] == set_name]
        metrics[f"refusal_rate_{set_name}"] = rate_metric(sum(verdicts), len(verdicts))
    metrics["kl_divergence"] = mean_metric(list(kl_values))
    return metrics
