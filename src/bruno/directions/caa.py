"""Contrastive activation addition (CAA) of a compliance direction, as a weight edit.

The compliance direction per layer is the difference of means between harmful prompts the base model complies with
and those it refuses (its own greedy replies, judged by the refusal detector). It is applied to every edited attention
output matrix as an amplification W ← W + s·c(cᵀW) (a rank-1 edit with weight −s), after the refusal direction is
removed. It is skipped, with the reason recorded, when either class has too few examples or when the direction overlaps
the refusal direction too much (mean |cos| over layers above `caa_max_overlap`): then it would mostly undo or repeat the
ablation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def compliance_direction(
    harmful: torch.Tensor,
    refused: Sequence[bool],
    refusal_directions: torch.Tensor,
    min_examples: int,
    max_overlap: float,
) -> dict[str, Any]:
    refused_mask = torch.tensor(list(refused), dtype=torch.bool)
    n_refusing = int(refused_mask.sum())
    n_compliant = len(refused_mask) - n_refusing
    record: dict[str, Any] = {"n_compliant": n_compliant, "n_refusing": n_refusing}
    if n_compliant < min_examples or n_refusing < min_examples:
        return {
            **record,
            "applied": False,
            "reason": f"needs {min_examples} compliant and refusing harmful prompts, got {n_compliant}/{n_refusing}",
        }
    diff = harmful[~refused_mask].double().mean(0) - harmful[refused_mask].double().mean(0)
    direction = (diff / diff.norm(dim=-1, keepdim=True).clamp(min=1e-12)).float()
    overlap = float(
        torch.nn.functional.cosine_similarity(direction[1:], refusal_directions[1:], dim=-1).abs().mean()
    )
    record["overlap"] = overlap
    if overlap > max_overlap:
        return {
            **record,
            "applied": False,
            "reason": f"overlap {overlap:.3f} with the refusal direction > {max_overlap}",
        }
    return {**record, "applied": True, "reason": "ok", "direction": direction}
