"""Choosing the trial to export: the lowest-KL trial among those whose refusal rate is at most `max_refusal_rate`;
if none qualifies, the fewest refusals, then the lowest KL. Ties break on the trial number (earliest wins). With a
confirmation in the study (`bruno.search.confirm`), only the confirmed candidates compete and their refusal rate is the one
measured on the fresh confirmation prompts.

Optional extra objectives (hallucination score, capability loss) enter as configured: `constraint` (default) keeps only
qualifying trials within `max_capability_drop` / `max_hallucination_increase` of the base model's values — dropped, and
recorded, if no qualifying trial meets them; `tie_break` orders trials of equal KL by them. The rule and its inputs are
written into best_trial.json.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from bruno.config import schema_defaults
from bruno.errors import BrunoError

DEFAULT_OBJECTIVES = ("kl_divergence", "refusal_rate")


_default = schema_defaults("selection")


@dataclass(frozen=True)
class SelectionSettings:
    max_refusal_rate: float = _default("max_refusal_rate")
    extra_objectives: str = _default("extra_objectives")
    max_capability_drop: float = _default("max_capability_drop")
    max_hallucination_increase: float = _default("max_hallucination_increase")
    # Read by the search job (`bruno.search.confirm`), which receives only these keys.
    confirm_prompts: int = _default("confirm_prompts")
    confirm_candidates: int = _default("confirm_candidates")
    confirm_max_new_tokens: int | None = _default("confirm_max_new_tokens")


def select_trial(
    trials: Sequence[FrozenTrial],
    settings: SelectionSettings,
    objectives: Sequence[str] = DEFAULT_OBJECTIVES,
    base_extra: Mapping[str, float] | None = None,
    confirmation: Mapping[str, Any] | None = None,
) -> tuple[FrozenTrial, dict[str, Any]]:
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    if not complete:
        raise BrunoError(
            "The study has no COMPLETE trial to select from; all trials failed. See the optimize log."
        )
    extras = list(objectives[2:])
    confirmed = {int(n): counts for n, counts in (confirmation or {}).get("trials", {}).items()}

    def value(t: FrozenTrial, name: str) -> float:
        if name == "refusal_rate" and confirmed:
            return confirmed[t.number]["refusal_rate"]
        return t.values[list(objectives).index(name)]

    info: dict[str, Any] = {
        "max_refusal_rate": settings.max_refusal_rate,
        "complete_trials": len(complete),
    }
    if confirmed:
        complete = [t for t in complete if t.number in confirmed]
        info["confirmation"] = {
            "refusal_rate_on": "confirmation prompts (fresh harmful val prompts)",
            "settings": confirmation["settings"],
            "candidates": sorted(confirmed),
        }
    qualified = [t for t in complete if value(t, "refusal_rate") <= settings.max_refusal_rate]
    info.update(
        qualified_trials=len(qualified), objectives=list(objectives), tie_break="trial number (earliest)"
    )
    pool = qualified
    if extras and qualified:
        info["extra_objectives"] = settings.extra_objectives
        if settings.extra_objectives == "constraint":
            allowance = {"capability_loss": settings.max_capability_drop,
                         "hallucination_score": settings.max_hallucination_increase}  # fmt: skip
            limits = {name: (base_extra or {}).get(name, float("inf")) + allowance[name] for name in extras}
            info["extra_limits"] = limits
            within = [t for t in qualified if all(value(t, n) <= limit for n, limit in limits.items())]
            info["trials_within_extra_limits"] = len(within)
            if within:
                pool = within
            else:
                info["extra_constraints_dropped"] = "no qualifying trial met the extra-objective limits"
        else:
            info["tie_break"] = f"{', '.join(extras)}, then trial number (earliest)"
    if pool:
        tie = extras if extras and settings.extra_objectives == "tie_break" else []
        best = min(pool, key=lambda t: (value(t, "kl_divergence"), *(value(t, n) for n in tie), t.number))
        rule = f"lowest KL among trials with refusal_rate <= max_refusal_rate ({settings.max_refusal_rate})"
        if confirmed:
            rule = f"lowest KL among confirmed candidates with confirmed refusal_rate <= {settings.max_refusal_rate}"
        if pool is not qualified:
            rule += " and within the extra-objective limits"
    else:
        best = min(complete, key=lambda t: (value(t, "refusal_rate"), value(t, "kl_divergence"), t.number))
        rule = (
            f"no {'confirmed candidate' if confirmed else 'trial'} reached refusal_rate <= "
            f"{settings.max_refusal_rate}: fewest refusals, then lowest KL"
        )
    return best, {"rule": rule, **info}
