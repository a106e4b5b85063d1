"""The resumable Optuna study of the search (its space: `bruno.search.space`).

The study lives in a working file (an Optuna journal, or SQLite for a `.db` path) that Snakemake does not manage (a
failed job must not delete it); it carries a fingerprint of the search space, objectives and inputs, and a mismatch is
an error. A resumed run marks trials left RUNNING by a killed worker as FAIL and continues until `n_trials` trials are
COMPLETE.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from bruno.errors import BrunoError
from bruno.io import atomic_path, sha256_json

log = logging.getLogger(__name__)

STUDY_NAME = "abliteration"


class TrialFailed(Exception):
    """A trial that produced no usable objective values (e.g. non-finite KL); the study goes on."""


def make_storage(path: str | Path) -> optuna.storages.BaseStorage:
    """SQLite (`*.db`) or an append-only journal file (`*.log`: what the rules use, for one worker or several on a
    shared filesystem)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".db":
        return optuna.storages.RDBStorage(
            f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": 60}}
        )
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    return optuna.storages.JournalStorage(
        JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
    )


def release_stale_lock(storage_path: str | Path) -> bool:
    """Remove the journal's lock file left by a run killed while writing (one worker only: with several, another
    worker may hold it). Returns whether there was one."""
    if Path(storage_path).suffix == ".db":
        return False
    from optuna.storages.journal import JournalFileOpenLock

    try:
        JournalFileOpenLock(str(storage_path)).release()
    except RuntimeError:  # no lock file
        return False
    log.warning("Removed a stale lock of the journal %s left by a killed run", storage_path)
    return True


def create_or_check_study(
    storage_path: str | Path,
    fingerprint: Mapping[str, Any],
    objectives: list[str],
    sampler: optuna.samplers.BaseSampler,
) -> tuple[optuna.Study, bool]:
    """Create the study, or load it and check its fingerprint. Returns (study, created)."""
    storage = make_storage(storage_path)
    digest = sha256_json(fingerprint)
    try:
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage, sampler=sampler)
    except KeyError:
        study = optuna.create_study(
            study_name=STUDY_NAME, storage=storage, sampler=sampler, directions=["minimize"] * len(objectives)
        )
        study.set_user_attr("fingerprint", digest)
        study.set_user_attr("fingerprint_inputs", dict(fingerprint))
        study.set_user_attr("objectives", list(objectives))
        return study, True
    stored = study.user_attrs.get("fingerprint")
    if stored != digest:
        old = study.user_attrs.get("fingerprint_inputs", {})
        changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        raise BrunoError(
            f"The study in {storage_path} was created with a different search setup (changed: {', '.join(changed) or 'unknown'}). "
            f"Its trials cannot be mixed with the new ones: delete {storage_path} to start a new search, "
            "or restore the previous config to resume it."
        )
    return study, False


def fail_stale_trials(study: optuna.Study, worker: int | None = None) -> list[int]:
    """Mark RUNNING trials left by a killed run as FAIL: all of them (one worker), or those of this worker index."""
    stale = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if worker is None or t.user_attrs.get("worker") == worker
    ]
    for trial in stale:
        study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", "worker died (left RUNNING)")
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    if stale:
        log.warning(
            "Marked %d trial(s) left RUNNING by a killed run as FAIL: %s",
            len(stale),
            [t.number for t in stale],
        )
    return [t.number for t in stale]


def open_study(
    storage_path: str | Path,
    fingerprint: Mapping[str, Any],
    n_objectives: int,
    sampler: optuna.samplers.BaseSampler,
) -> optuna.Study:
    """Single-worker study: create or resume (fingerprint checked); stale RUNNING trials become FAIL."""
    study, created = create_or_check_study(
        storage_path, fingerprint, [f"objective_{i}" for i in range(n_objectives)], sampler
    )
    if not created:
        fail_stale_trials(study)
    return study


def count(study: optuna.Study, state: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=(state,)))


def run_study(
    study: optuna.Study,
    start: Callable[[optuna.Trial, int], None],
    finish: Callable[[optuna.Trial, int], tuple[float, ...]],
    n_trials: int,
    max_failed_trials: int,
    slots: int = 1,
) -> None:
    """Run until `n_trials` trials are COMPLETE (counting every worker's); stop with an error after
    `max_failed_trials` failures in this run.

    Ask/tell with `slots` trials in flight: `start(trial, slot)` begins scoring an asked trial (enqueued ones come
    first) and `finish(trial, slot)` returns its values (raising TrialFailed for unusable ones). Trials are finished
    and told in the order they were asked, and a freed slot gets the next trial at once, so the sequence of asks and
    tells (ask 0, ask 1, tell 0, ask 2, tell 1, ...) and with it the study depend only on the seed and `slots`, not on
    which trial ended first. While a trial is asked, TPE's constant liar counts the running ones as bad results, so
    trials in flight spread out. With one slot this is the plain sequential loop. An error leaves no trial RUNNING."""
    failed_before = count(study, TrialState.FAIL)
    pending: deque[tuple[optuna.Trial, int]] = deque()
    free = list(range(slots))
    try:
        while True:
            while free and n_trials - count(study, TrialState.COMPLETE) - len(pending) > 0:
                pending.append((study.ask(), free.pop(0)))
                start(*pending[-1])
            if not pending:
                return
            trial, slot = pending[0]
            try:
                values = finish(trial, slot)
            except TrialFailed:
                study.tell(trial, state=TrialState.FAIL)
            else:
                study.tell(trial, values)
            pending.popleft()
            free.append(slot)
            failed = count(study, TrialState.FAIL) - failed_before
            if failed >= max_failed_trials:
                reasons = [
                    t.user_attrs.get("fail_reason", "?") for t in study.get_trials(states=(TrialState.FAIL,))
                ]
                raise BrunoError(
                    f"{failed} trials failed in this run (last reason: {reasons[-1] if reasons else '?'}); stopping. "
                    "Check the model and the search ranges (search.ranges), or raise search.max_failed_trials."
                )
    except BaseException:
        for trial, _ in pending:
            study.tell(trial, state=TrialState.FAIL)
        raise


def snapshot(storage_path: str | Path, out_path: str | Path) -> None:
    """A consistent SQLite copy of the working study (sqlite3 online backup, or a copy of a journal), written atomically."""
    if Path(storage_path).suffix != ".db":
        with atomic_path(out_path) as tmp:
            tmp.unlink()
            optuna.copy_study(
                from_study_name=STUDY_NAME,
                from_storage=make_storage(storage_path),
                to_storage=f"sqlite:///{tmp}",
            )
        return
    with atomic_path(out_path) as tmp:
        src = sqlite3.connect(str(storage_path))
        dst = sqlite3.connect(str(tmp))
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()


def finite(values: tuple[float, ...]) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
