"""Stage `optimize`: the resumable Optuna search.

One worker (default): the job creates or resumes a SQLite study and runs it to `n_trials` COMPLETE trials.
Several workers (`search.optimize_workers` > 1, e.g. one GPU job each on a cluster): `init` creates a journal-file study
once (safe on shared filesystems) and enqueues the warm start, `work` runs one worker (seed + worker index; trials counted
across all workers), `snapshot_only` writes the SQLite snapshot when all workers are done.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from bruno.directions import load_directions
from bruno.errors import BrunoError
from bruno.io import sha256_bytes, sha256_texts
from bruno.model import ModelSettings, load_model
from bruno.plan import AbliterationSettings, DirectionSet
from bruno.prompts import read_prompts
from bruno.refusal import MarkerDetector
from bruno.search import (
    SearchSettings,
    SearchSpace,
    TrialFailed,
    count,
    create_or_check_study,
    fail_stale_trials,
    run_study,
    sample,
    snapshot,
    warm_start_values,
)
from bruno.trial import TrialEvaluator

log = logging.getLogger(__name__)
OBJECTIVES = ["kl_divergence", "refusal_rate"]


def _summary(values: dict[str, Any]) -> str:
    parts = []
    if "direction_scope" in values:
        parts.append(values["direction_scope"])
    if "direction_index" in values:
        parts.append(f"idx {values['direction_index']:.2f}")
    for key, value in values.items():
        if key.endswith(".max_weight"):
            component = key.rsplit(".", 1)[0]
            short = component.split(".")[-1]
            parts.append(
                f"{short} w{value:.2f}@{values[component + '.max_weight_position']:.1f}"
                f" min{values[component + '.min_weight']:.2f} d{values[component + '.min_weight_distance']:.1f}"
            )
    return " | ".join(parts)


def _tensor_hash(payload: dict[str, Any]) -> str:
    parts = [payload[k].numpy().tobytes() for k in sorted(payload) if hasattr(payload[k], "numpy")]
    return sha256_bytes(b"".join(parts))


@dataclass
class SearchContext:
    evaluator: TrialEvaluator
    directions: DirectionSet
    space: SearchSpace
    fingerprint: dict[str, Any]
    settings: SearchSettings


def prepare(
    model_path: str,
    model_settings: ModelSettings,
    directions_path: str | Path,
    harmful_val_path: str | Path,
    harmless_val_path: str | Path,
    settings: SearchSettings,
    abliteration: AbliterationSettings,
    refusal_markers: list[str],
) -> SearchContext:
    """Load the model once and everything a trial needs that never changes between trials."""
    model, tokenizer = load_model(model_path, model_settings)
    payload = load_directions(directions_path)
    directions = DirectionSet.from_payload(payload)
    refusal_prompts = [p.text for p in read_prompts(harmful_val_path)][: settings.n_refusal_prompts]
    kl_prompts = [p.text for p in read_prompts(harmless_val_path)][: settings.n_kl_prompts]
    evaluator = TrialEvaluator(
        model,
        tokenizer,
        directions,
        abliteration.components,
        abliteration.norm_preservation,
        refusal_prompts,
        kl_prompts,
        model_settings.system_prompt,
        settings.batch_size,
        settings.max_new_tokens,
        MarkerDetector(refusal_markers),
        biprojected=abliteration.biprojected,
    )
    space = SearchSpace.resolve(settings, evaluator.n_layers, abliteration.components)
    for name, dist in space.distributions().items():
        if hasattr(dist, "low") and dist.low > dist.high:
            raise BrunoError(
                f"config key 'search' ({name}): range lower bound {dist.low} exceeds upper bound {dist.high}."
            )
    fingerprint = {
        "search_space": space.describe(),
        "objectives": OBJECTIVES,
        "directions": _tensor_hash(payload),
        "model": model_path,
        "refusal_prompts": sha256_texts(refusal_prompts),
        "kl_prompts": sha256_texts(kl_prompts),
        "system_prompt": model_settings.system_prompt or "",
        "max_new_tokens": settings.max_new_tokens,
        "abliteration": {
            "components": abliteration.components,
            "norm_preservation": abliteration.norm_preservation,
            "biprojected": abliteration.biprojected,
        },  # fmt: skip
        "refusal_markers": sha256_texts(refusal_markers),
    }
    return SearchContext(evaluator, directions, space, fingerprint, settings)


def _sampler(settings: SearchSettings, seed: int) -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(
        multivariate=True,
        seed=seed,
        n_startup_trials=settings.n_startup_trials,
        n_ei_candidates=settings.n_ei_candidates,
    )


def _open(ctx: SearchContext, storage_path: str | Path, seed: int) -> tuple[optuna.Study, bool]:
    study, created = create_or_check_study(
        storage_path, ctx.fingerprint, OBJECTIVES, _sampler(ctx.settings, seed)
    )
    if created:
        warm = warm_start_values(ctx.space, ctx.settings)
        for values in warm:
            study.enqueue_trial(values, skip_if_exists=True)
        log.info("new study: enqueued %d warm-start trial(s)", len(warm))
    return study, created


def _objective(ctx: SearchContext, study: optuna.Study, worker: int | None):
    evaluator, settings = ctx.evaluator, ctx.settings

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        if worker is not None:
            trial.set_user_attr("worker", worker)
        values = sample(trial, ctx.space)
        params = ctx.space.to_params(values, ctx.directions.weight_scale)
        result = evaluator.evaluate(params)
        trial.set_user_attr("resolved", params.to_dict())
        trial.set_user_attr("layer_weights", params.layer_weights(evaluator.n_layers))
        trial.set_user_attr("direction_index_used", params.direction_scope == "global")
        trial.set_user_attr("n_refusals", result.n_refusals)
        trial.set_user_attr("n_prompts", result.n_prompts)
        trial.set_user_attr("seconds", result.seconds)
        trial.set_user_attr("seconds_kl", result.seconds_kl)
        trial.set_user_attr("seconds_generation", result.seconds_generation)
        done = count(study, TrialState.COMPLETE) + 1
        log.info(
            "trial %d (%d/%d) | %s | KL %.4f | refusals %d/%d | %.2f s",
            trial.number, done, settings.n_trials, _summary(values), result.kl_divergence,
            result.n_refusals, result.n_prompts, result.seconds,
        )  # fmt: skip
        if result.kl_divergence != result.kl_divergence:  # NaN
            trial.set_user_attr("fail_reason", "non-finite KL divergence")
            raise TrialFailed("non-finite KL divergence")
        return result.kl_divergence, result.refusal_rate

    return objective


def run(ctx: SearchContext, seed: int, work_db: str | Path, out_db: str | Path) -> dict[str, Any]:
    """One worker: create or resume the SQLite study, run it to n_trials COMPLETE, write the snapshot."""
    study, created = _open(ctx, work_db, seed)
    if not created:
        fail_stale_trials(study)
        log.info(
            "resuming study: %d COMPLETE, %d FAIL",
            count(study, TrialState.COMPLETE),
            count(study, TrialState.FAIL),
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_study(study, _objective(ctx, study, None), ctx.settings.n_trials, ctx.settings.max_failed_trials)
    snapshot(work_db, out_db)
    complete = count(study, TrialState.COMPLETE)
    log.info("search done: %d COMPLETE trials, snapshot %s", complete, out_db)
    return {"complete": complete}


def init(ctx: SearchContext, seed: int, journal: str | Path) -> None:
    """Several workers: create the journal study once (before any worker starts) with its warm start."""
    _open(ctx, journal, seed)


def work(ctx: SearchContext, seed: int, journal: str | Path, worker: int) -> dict[str, Any]:
    """Several workers: run trials until the study holds n_trials COMPLETE trials from all workers."""
    study, _ = create_or_check_study(
        journal, ctx.fingerprint, OBJECTIVES, _sampler(ctx.settings, seed + worker)
    )
    fail_stale_trials(study, worker=worker)  # only this worker's: the others may be running
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_study(study, _objective(ctx, study, worker), ctx.settings.n_trials, ctx.settings.max_failed_trials)
    mine = [
        t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.user_attrs.get("worker") == worker
    ]
    log.info("worker %d done: %d of its trials COMPLETE", worker, len(mine))
    return {"complete": len(mine)}


def snapshot_only(journal: str | Path, out_db: str | Path) -> None:
    snapshot(journal, out_db)
