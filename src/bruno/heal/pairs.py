"""Preference pairs for healing, from training prompts only: for a harmful prompt the ablated model's compliant reply
is *chosen* and the base model's actual refusal *rejected*; for a harmless prompt the base model's answer is *chosen*
and a degraded copy of it (truncated or word-shuffled) *rejected*.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any

from bruno.errors import BrunoError
from bruno.evaluation.refusal import MarkerDetector
from bruno.prompts import Prompt

log = logging.getLogger(__name__)


DEGRADATIONS = ("shuffle", "truncate")


def degrade(text: str, how: str, rng: random.Random) -> str:
    """A worse copy of a good answer: `truncate` keeps the first half of its words, `shuffle` permutes them."""
    words = text.split()
    if how == "truncate":
        return " ".join(words[: len(words) // 2])
    if how == "shuffle":
        shuffled = words[:]
        rng.shuffle(shuffled)
        return " ".join(shuffled)
    raise BrunoError(
        f"config key 'healing.harmless_degradation': unknown value '{how}' (use {', '.join(DEGRADATIONS)})."
    )


def sample_prompts(prompts: Sequence[Prompt], n: int | None, seed: int) -> list[Prompt]:
    """A seeded random subset of `n` prompts (all of them, shuffled, when n is None)."""
    order = list(prompts)
    random.Random(seed).shuffle(order)
    return order if n is None else order[:n]


def prompt_messages(text: str, system_prompt: str | None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": text}]


def _pair(
    prompt: Prompt, kind: str, system_prompt: str | None, chosen: str, rejected: str, prefix: str
) -> dict[str, Any]:
    return {
        "id": prompt.id,
        "kind": kind,
        "category": prompt.category,
        "prompt": prompt_messages(prompt.text, system_prompt),
        "chosen": [{"role": "assistant", "content": prefix + chosen}],
        "rejected": [{"role": "assistant", "content": prefix + rejected}],
    }


def harmful_pairs(
    prompts: Sequence[Prompt],
    base_responses: Sequence[str],
    ablated_responses: Sequence[str],
    detector: MarkerDetector,
    system_prompt: str | None,
    response_prefix: str = "",
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """chosen = the ablated model's compliant reply, rejected = the base model's refusal (replies to prompts that
    ended with `response_prefix`; `detector` judges what it is given, e.g. the answer only).

    A prompt is kept only when the base refused and the ablated model did not (and the two replies differ)."""
    base_refused = [v.is_refusal for v in detector.classify(base_responses)]
    ablated_refused = [v.is_refusal for v in detector.classify(ablated_responses)]
    pairs = []
    for prompt, base, ablated, b_ref, a_ref in zip(
        prompts, base_responses, ablated_responses, base_refused, ablated_refused, strict=True
    ):
        if b_ref and not a_ref and base.strip() != ablated.strip():
            pairs.append(_pair(prompt, "harmful", system_prompt, ablated, base, response_prefix))
    counts = {
        "harmful_candidates": len(prompts),
        "harmful_base_refused": sum(base_refused),
        "harmful_ablated_refused": sum(ablated_refused),
        "harmful_pairs": len(pairs),
    }
    return pairs, counts


def harmless_pairs(
    prompts: Sequence[Prompt],
    base_responses: Sequence[str],
    detector: MarkerDetector,
    system_prompt: str | None,
    degradation: str,
    seed: int,
    response_prefix: str = "",
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """chosen = the base model's answer, rejected = a degraded copy; base refusals and too-short answers are dropped."""
    rng = random.Random(seed)
    refused = [v.is_refusal for v in detector.classify(base_responses)]
    pairs = []
    for prompt, answer, is_refusal in zip(prompts, base_responses, refused, strict=True):
        if is_refusal:
            continue
        worse = degrade(answer, degradation, rng)
        if worse.strip() and worse.strip() != answer.strip():
            pairs.append(_pair(prompt, "harmless", system_prompt, answer, worse, response_prefix))
    counts = {
        "harmless_candidates": len(prompts),
        "harmless_base_refused": sum(refused),
        "harmless_pairs": len(pairs),
    }
    return pairs, counts
