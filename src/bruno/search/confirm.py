"""Confirming the search's best candidates on fresh validation prompts before one is selected.

A search counts each trial's refusals on `search.n_refusal_prompts` harmful val prompts. With few of them, the lowest-KL
trial at or below `selection.max_refusal_rate` is often one whose count was low by chance: on SmolLM2 with 24 prompts the
selected trials refused 0-1 of 24 in the search and 10-19 % of the held-out test prompts (docs/real-model.md). With
`selection.confirm_prompts` > 0, the search job re-scores the `confirm_candidates` trials with the fewest search refusals
(ties: lower KL, then the earlier trial) on the next `confirm_prompts` harmful val prompts, which no trial has seen, and
stores the counts in the study (user attribute `confirmation`). Selection then qualifies trials on these independent
counts alone (`bruno.search.select`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from bruno.edit.plan import AblationParams
from bruno.errors import BrunoError
from bruno.evaluation.stats import wilson_interval
from bruno.io import sha256_texts
from bruno.search.select import SelectionSettings
from bruno.search.trial import TrialEvaluator

log = logging.getLogger(__name__)

CONFIRM_KEYS = ("confirm_prompts", "confirm_candidates", "confirm_max_new_tokens")


def candidates(trials: Sequence[FrozenTrial], k: int) -> list[FrozenTrial]:
    """The k COMPLETE trials with the lowest search refusal rate; ties: lower KL, then the earlier trial. Objective
    values are (KL, refusal rate, ...)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    return sorted(complete, key=lambda t: (t.values[1], t.values[0], t.number))[:k]


def confirmation_prompts(harmful_val: Sequence[str], n_search: int, n_confirm: int) -> list[str]:
    """The harmful val prompts after the search's own: [n_search, n_search + n_confirm)."""
    fresh = list(harmful_val[n_search : n_search + n_confirm])
    if len(fresh) < n_confirm:
        raise BrunoError(
            f"selection.confirm_prompts = {n_confirm} needs {n_search + n_confirm} harmful val prompts "
            f"(search.n_refusal_prompts = {n_search} come first), but the val split has {len(harmful_val)}: "
            "lower selection.confirm_prompts or search.n_refusal_prompts, or add val prompts"
        )
    return fresh


def _key(settings: SelectionSettings, prompts: Sequence[str], max_new_tokens: int) -> dict[str, Any]:
    return {
        **{k: getattr(settings, k) for k in CONFIRM_KEYS},
        "max_new_tokens": max_new_tokens,
        "prompts_sha256": sha256_texts(list(prompts)),
    }


def confirm(
    study: optuna.Study,
    evaluator: TrialEvaluator,
    settings: SelectionSettings,
    harmful_val: Sequence[str],
    n_search_prompts: int,
    search_max_new_tokens: int,
) -> dict[str, Any]:
    """Re-score the candidates on the confirmation prompts and store the result in the study's user attribute
    `confirmation` ({"settings", "trials": {number: counts}}); a study that already holds a confirmation with the
    same settings and prompts keeps it (a re-run job resumes). Returns the stored value."""
    prompts = confirmation_prompts(harmful_val, n_search_prompts, settings.confirm_prompts)
    max_new_tokens = settings.confirm_max_new_tokens or search_max_new_tokens
    key = _key(settings, prompts, max_new_tokens)
    chosen = candidates(study.get_trials(deepcopy=False), settings.confirm_candidates)
    stored = study.user_attrs.get("confirmation")
    if (
        stored
        and stored["settings"] == key
        and {int(n) for n in stored["trials"]} == {t.number for t in chosen}
    ):
        log.info("confirmation of trials %s already in the study", sorted(int(n) for n in stored["trials"]))
        return stored
    rescoring = evaluator.rescoring(prompts, max_new_tokens)
    results: dict[str, dict[str, Any]] = {}
    for trial in chosen:
        result = rescoring.evaluate(AblationParams.from_dict(trial.user_attrs["resolved"]))
        low, high = wilson_interval(result.n_refusals, result.n_prompts)
        results[str(trial.number)] = {
            "n_refusals": result.n_refusals,
            "n_prompts": result.n_prompts,
            "refusal_rate": result.refusal_rate,
            "refusal_rate_ci95": [low, high],
            "kl_divergence": result.kl_divergence,
            "search_refusal_rate": trial.values[1],
            "seconds": result.seconds,
        }
        log.info(
            "confirmation: trial %d | KL %.4f | refusals %d/%d (search %d/%d) | %.2f s",
            trial.number, result.kl_divergence, result.n_refusals, result.n_prompts,
            trial.user_attrs.get("n_refusals", -1), trial.user_attrs.get("n_prompts", -1), result.seconds,
        )  # fmt: skip
    stored = {"settings": key, "trials": results}
    study.set_user_attr("confirmation", stored)
    return stored
