"""Stage `optimize`: the resumable Optuna search.

The working study is an Optuna journal file (results/{variant}/optuna/journal.log); the SQLite `study.db` is a
snapshot written when the search ends. One worker (default): the job creates or resumes the study and runs it to
`n_trials` COMPLETE trials. Within a job, `search.parallel_trials` trials are scored at once (on the CPU: trial worker
processes with their own copy of the model, `bruno.search.pool`; 1 on a GPU), asked and told in a fixed order. Several
search workers (`search.optimize_workers` > 1, jobs, e.g. one GPU job each on a cluster): `init` creates the study
once (safe on shared filesystems) and enqueues the warm start, `work` runs one worker (seed + worker index; trials
counted across all workers), `snapshot_only` writes the SQLite snapshot when all workers are done.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from bruno.directions.mean import load_directions
from bruno.edit.plan import AbliterationSettings, DirectionSet
from bruno.errors import BrunoError
from bruno.evaluation.refusal import MarkerDetector
from bruno.evaluation.stage import EvaluationSettings
from bruno.model.loading import ModelSettings, load_model, resolve_device
from bruno.model.placement import resolve_batch_size
from bruno.model.thinking import ResponseFormat
from bruno.prompts import read_prompts
from bruno.search.confirm import confirm, confirmation_prompts
from bruno.search.fingerprint import study_fingerprint
from bruno.search.objectives import extra_objectives
from bruno.search.pool import TrialPool, TrialWorkers, model_bytes, resolve_parallel_trials
from bruno.search.select import SelectionSettings
from bruno.search.space import SearchSettings, SearchSpace, sample, warm_start_values
from bruno.search.study import (
    TrialFailed,
    count,
    create_or_check_study,
    fail_stale_trials,
    release_stale_lock,
    run_study,
    snapshot,
)
from bruno.search.trial import Decoding, TrialEvaluator, TrialPrompts

log = logging.getLogger(__name__)
OBJECTIVES = ["kl_divergence", "refusal_rate"]
EXTRA_OBJECTIVES = ("hallucination_score", "capability_loss")  # in this order, each when enabled


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


@dataclass
class SearchContext:
    evaluator: TrialEvaluator
    directions: DirectionSet
    space: SearchSpace
    fingerprint: dict[str, Any]
    settings: SearchSettings
    objectives: list[str]
    pool: TrialPool  # this process's evaluator, or trial worker processes for several trials at a time
    # every harmful val prompt: the search's first, then the confirmation's (bruno.search.confirm)
    harmful_val: list[str]

    def close(self) -> None:
        """Stop the trial worker processes (they also stop when this process exits)."""
        self.pool.close()


def _start_workers(
    n_parallel: int, threads: int, worker_args: dict[str, Any]
) -> TrialWorkers | None:  # fmt: skip
    """With more than one trial at a time, that many worker processes, the job's torch threads split among them."""
    if n_parallel <= 1:
        return None
    threads_each = max(1, threads // n_parallel)
    log.info("%d trials at a time, on %d worker processes with %d thread(s) each", n_parallel, n_parallel,
             threads_each)  # fmt: skip
    return TrialWorkers(functools.partial(_worker_evaluator, **worker_args), n_parallel, threads_each)


def _check_space(space: SearchSpace) -> None:
    for name, dist in space.distributions().items():
        if hasattr(dist, "low") and dist.low > dist.high:
            raise BrunoError(
                f"config key 'search' ({name}): range lower bound {dist.low} exceeds upper bound {dist.high}."
            )


def prepare(
    model_path: str,
    model_settings: ModelSettings,
    directions_path: str | Path,
    harmful_val_path: str | Path,
    harmless_val_path: str | Path,
    settings: SearchSettings,
    abliteration: AbliterationSettings,
    refusal_markers: list[str],
    evaluation: EvaluationSettings | None = None,
    seed: int = 0,
    parallel: bool = True,
) -> SearchContext:
    """Load the model once and everything a trial needs that never changes between trials.

    With `parallel` and more than one trial at a time (`search.parallel_trials`), that many worker processes start
    first and build their evaluators while this process builds its own (which then scores no trials: it asks and
    tells Optuna); the job's torch threads are split evenly among the workers."""
    import torch

    threads = torch.get_num_threads()
    n_parallel = (
        resolve_parallel_trials(
            settings.parallel_trials, resolve_device(model_settings.device), threads, model_bytes(model_path)
        )
        if parallel
        else 1
    )
    workers = _start_workers(n_parallel, threads, dict(
        model_path=model_path, model_settings=model_settings, directions_path=directions_path,
        harmful_val_path=harmful_val_path, harmless_val_path=harmless_val_path, settings=settings,
        abliteration=abliteration, refusal_markers=refusal_markers, evaluation=evaluation, seed=seed,
    ))  # fmt: skip
    system_prompt = model_settings.system_prompt
    with contextlib.ExitStack() as on_error:  # the workers stop if this preparation fails
        if workers is not None:
            on_error.callback(workers.close)
        model, tokenizer = load_model(model_path, model_settings)
        payload = load_directions(directions_path)
        directions = DirectionSet.from_payload(payload)
        harmful_val = [p.text for p in read_prompts(harmful_val_path)]
        refusal_prompts = harmful_val[: settings.n_refusal_prompts]
        kl_prompts = [p.text for p in read_prompts(harmless_val_path)][: settings.n_kl_prompts]
        prefix, tags = payload["metadata"].get("response_prefix", ""), model_settings.thinking_tags
        response_format = ResponseFormat.of(tokenizer, system_prompt, prefix, tags)
        batch_size = resolve_batch_size(
            settings.batch_size, model, tokenizer, refusal_prompts, system_prompt, settings.max_new_tokens
        )
        evaluator = TrialEvaluator(
            model,
            tokenizer,
            directions,
            abliteration,
            TrialPrompts(refusal_prompts, kl_prompts, system_prompt, prefix, tags),
            Decoding(
                batch_size, settings.max_new_tokens, settings.refusal_early_stop, settings.prefix_reuse_mb
            ),
            MarkerDetector(refusal_markers),
            extra_objectives=extra_objectives(
                settings, evaluation, tokenizer, system_prompt, seed, response_format
            ),
        )
        objectives = OBJECTIVES + [name for name in EXTRA_OBJECTIVES if name in evaluator.extra_objectives]
        space = SearchSpace.resolve(settings, evaluator.n_layers, abliteration.components)
        _check_space(space)
        fingerprint = study_fingerprint(
            space, objectives, settings, abliteration, payload, model_path, system_prompt, refusal_prompts,
            kl_prompts, refusal_markers, prefix,
        )  # fmt: skip
        on_error.pop_all()
    return SearchContext(
        evaluator,
        directions,
        space,
        fingerprint,
        settings,
        objectives,
        TrialPool(evaluator, workers),
        harmful_val,
    )


def _worker_evaluator(seed: int, **args: Any) -> TrialEvaluator:
    """A trial worker's evaluator (`bruno.search.pool`): the same preparation, no workers of its own."""
    from bruno.runtime import seed_everything

    seed_everything(seed)
    return prepare(seed=seed, parallel=False, **args).evaluator


def _sampler(settings: SearchSettings, seed: int) -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(
        multivariate=True,
        seed=seed,
        n_startup_trials=settings.n_startup_trials,
        n_ei_candidates=settings.n_ei_candidates,
    )


def _open(ctx: SearchContext, storage_path: str | Path, seed: int) -> tuple[optuna.Study, bool]:
    study, created = create_or_check_study(
        storage_path, ctx.fingerprint, ctx.objectives, _sampler(ctx.settings, seed)
    )
    if created:
        study.set_user_attr("base_extra_objectives", ctx.evaluator.base_extra)
        warm = warm_start_values(ctx.space, ctx.settings)
        for values in warm:
            study.enqueue_trial(values, skip_if_exists=True)
        log.info("new study: enqueued %d warm-start trial(s)", len(warm))
    return study, created


def _objective(ctx: SearchContext, study: optuna.Study, worker: int | None):
    """`start(trial, slot)`: sample the trial's parameters and start scoring them in the pool's slot;
    `finish(trial, slot)`: its result, recorded in the trial's attributes, as objective values (TrialFailed if the
    values are unusable)."""
    evaluator, settings = ctx.evaluator, ctx.settings

    def record(trial: optuna.Trial, values: dict[str, Any], params: Any, result: Any) -> tuple[float, ...]:
        trial.set_user_attr("resolved", params.to_dict())
        trial.set_user_attr("layer_weights", params.layer_weights(evaluator.n_layers))
        trial.set_user_attr("direction_index_used", params.direction_scope == "global")
        trial.set_user_attr("n_refusals", result.n_refusals)
        trial.set_user_attr("n_prompts", result.n_prompts)
        trial.set_user_attr("seconds", result.seconds)
        trial.set_user_attr("seconds_kl", result.seconds_kl)
        trial.set_user_attr("seconds_generation", result.seconds_generation)
        for name, seconds in result.extra_seconds.items():
            trial.set_user_attr(f"seconds_{name}", seconds)
        done = count(study, TrialState.COMPLETE) + 1
        extras = "".join(f" | {name} {value:.3f}" for name, value in result.extra.items())
        log.info(
            "trial %d (%d/%d) | %s | KL %.4f | refusals %d/%d%s | %.2f s",
            trial.number, done, settings.n_trials, _summary(values), result.kl_divergence,
            result.n_refusals, result.n_prompts, extras, result.seconds,
        )  # fmt: skip
        if result.kl_divergence != result.kl_divergence:  # NaN
            trial.set_user_attr("fail_reason", "non-finite KL divergence")
            raise TrialFailed("non-finite KL divergence")
        if settings.refusal_constraint is not None:
            # TPE treats trials above the refusal rate as infeasible and samples around the feasible ones.
            trial.set_constraint("refusal_rate", result.refusal_rate - settings.refusal_constraint)
        return (
            result.kl_divergence,
            result.refusal_rate,
            *(result.extra[name] for name in ctx.objectives[2:]),
        )

    pool, sampled = ctx.pool, {}

    def start(trial: optuna.Trial, slot: int) -> None:
        if worker is not None:
            trial.set_user_attr("worker", worker)
        values = sample(trial, ctx.space)
        params = ctx.space.to_params(values, ctx.directions.weight_scale)
        sampled[trial.number] = (values, params)
        pool.submit(slot, params)

    def finish(trial: optuna.Trial, slot: int) -> tuple[float, ...]:
        values, params = sampled.pop(trial.number)
        return record(trial, values, params, pool.collect(slot))

    return start, finish


def run(
    ctx: SearchContext,
    seed: int,
    storage: str | Path,
    out_db: str | Path,
    selection: SelectionSettings | None = None,
) -> dict[str, Any]:
    """One worker: create or resume the working study (a journal file, or SQLite for a `.db` path), run it to
    n_trials COMPLETE, confirm its candidates (`selection.confirm_prompts` > 0), write the SQLite snapshot. Stops the
    context's trial workers when done.

    The rule uses the journal: Optuna's SQLite storage commits (and syncs) every parameter and attribute separately,
    63 ms per trial on the organism against about 13 ms for the journal (trials take about 0.3 s)."""
    with contextlib.closing(ctx):
        if selection is not None and selection.confirm_prompts > 0:  # enough val prompts? before any trial
            confirmation_prompts(ctx.harmful_val, ctx.settings.n_refusal_prompts, selection.confirm_prompts)
        # one worker by contract: a lock left behind can only be from a killed run
        release_stale_lock(storage)
        study, created = _open(ctx, storage, seed)
        if not created:
            fail_stale_trials(study)
            log.info(
                "resuming study: %d COMPLETE, %d FAIL",
                count(study, TrialState.COMPLETE),
                count(study, TrialState.FAIL),
            )
        _run(ctx, study, None)
        ctx.pool.close()  # the trial workers are done; confirmation scores in this process
        _confirm(ctx, study, selection)
    snapshot(storage, out_db)
    complete = count(study, TrialState.COMPLETE)
    log.info("search done: %d COMPLETE trials, snapshot %s", complete, out_db)
    return {"complete": complete}


def _confirm(ctx: SearchContext, study: optuna.Study, selection: SelectionSettings | None) -> None:
    if selection is not None and selection.confirm_prompts > 0:
        settings = ctx.settings
        confirm(
            study,
            ctx.evaluator,
            selection,
            ctx.harmful_val,
            settings.n_refusal_prompts,
            settings.max_new_tokens,
        )


def _run(ctx: SearchContext, study: optuna.Study, worker: int | None) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.set_user_attr("parallel_trials", ctx.pool.size)
    start, finish = _objective(ctx, study, worker)
    run_study(study, start, finish, ctx.settings.n_trials, ctx.settings.max_failed_trials, ctx.pool.size)


def init(ctx: SearchContext, seed: int, journal: str | Path) -> None:
    """Several workers: create the journal study once (before any worker starts) with its warm start."""
    with contextlib.closing(ctx):
        _open(ctx, journal, seed)


def work(ctx: SearchContext, seed: int, journal: str | Path, worker: int) -> dict[str, Any]:
    """Several workers: run trials until the study holds n_trials COMPLETE trials from all workers."""
    with contextlib.closing(ctx):
        study, _ = create_or_check_study(
            journal, ctx.fingerprint, ctx.objectives, _sampler(ctx.settings, seed + worker)
        )
        fail_stale_trials(study, worker=worker)  # only this worker's: the others may be running
        _run(ctx, study, worker)
    mine = [
        t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.user_attrs.get("worker") == worker
    ]
    log.info("worker %d done: %d of its trials COMPLETE", worker, len(mine))
    return {"complete": len(mine)}


def snapshot_only(
    journal: str | Path,
    out_db: str | Path,
    ctx: SearchContext | None = None,
    selection: SelectionSettings | None = None,
) -> None:
    """Several workers, all done: confirm the study's candidates (with a context, `bruno.search.confirm`), then snapshot."""
    if ctx is not None:
        with contextlib.closing(ctx):
            study, _ = create_or_check_study(
                journal, ctx.fingerprint, ctx.objectives, _sampler(ctx.settings, 0)
            )
            _confirm(ctx, study, selection)
    snapshot(journal, out_db)
