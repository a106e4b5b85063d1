"""Choosing the trial to export: the lowest-KL trial among those whose refusal rate is at most `max_refusal_rate`;
if none qualifies, the fewest refusals, then the lowest KL. Ties break on the trial number (earliest wins).
The rule and its inputs are written into best_trial.json.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from bruno.errors import BrunoError


@dataclass(frozen=True)
class SelectionSettings:
    max_refusal_rate: float = 0.05


def select_trial(
    trials: Sequence[FrozenTrial], settings: SelectionSettings
) -> tuple[FrozenTrial, dict[str, Any]]:
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    if not complete:
        raise BrunoError(
            "The study has no COMPLETE trial to select from; all trials failed. See the optimize log."
        )

    def kl(t: FrozenTrial) -> float:
        return t.values[0]

    def refusal(t: FrozenTrial) -> float:
        return t.values[1]

    qualified = [t for t in complete if refusal(t) <= settings.max_refusal_rate]
    if qualified:
        best = min(qualified, key=lambda t: (kl(t), t.number))
        rule = f"lowest KL among trials with refusal_rate <= max_refusal_rate ({settings.max_refusal_rate})"
    else:
        best = min(complete, key=lambda t: (refusal(t), kl(t), t.number))
        rule = (
            f"no trial reached refusal_rate <= {settings.max_refusal_rate}: fewest refusals, then lowest KL"
        )
    return best, {
        "rule": rule,
        "max_refusal_rate": settings.max_refusal_rate,
        "qualified_trials": len(qualified),
        "complete_trials": len(complete),
        "tie_break": "trial number (earliest)",
    }
