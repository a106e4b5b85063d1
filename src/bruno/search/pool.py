"""Several trials at once on the CPU: trial worker processes, each with its own copy of the model and its own evaluator.

On a CPU, one process with T threads uses them poorly for a small model: a decoding step is a chain of small operations
and Python between them, and most of them run on one thread. Splitting the threads among processes that each evaluate
a different trial uses them better (on the organism on 2 cores: two 1-thread processes did 5.97 trials/s together
against 3.64 for one 2-thread process, median of 6 alternating rounds). On a GPU one process is right: the default
is 1 there (`resolve_parallel_trials`).

A worker is `python -m bruno.search.pool`: it reads a pickled zero-argument factory from stdin, builds its evaluator,
then answers each pickled `AblationParams` with a pickled `TrialResult` (or the text of the error), until stdin closes.
With workers, every trial runs on a worker (this process asks and tells Optuna meanwhile); the search hands a slot its
next trial in a fixed order (`bruno.search.study.run_study`). Every worker uses the same number of threads, so a trial's
values do not depend on the worker that scored it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import subprocess
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import torch

from bruno.edit.plan import AblationParams
from bruno.errors import BrunoError
from bruno.search.trial import TrialEvaluator, TrialResult

log = logging.getLogger(__name__)

MAX_AUTO_PARALLEL_TRIALS = 4


def model_bytes(path: str | Path) -> int | None:
    """Size of a local model directory's safetensors weights, or None (a hub id, or no weights found)."""
    files = list(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []
    return sum(f.stat().st_size for f in files) or None


def resolve_parallel_trials(
    configured: int, device: torch.device, threads: int, weights_bytes: int | None
) -> int:
    """`configured` if > 0; for 0 (auto): 1 on a GPU; on the CPU one per thread, at most MAX_AUTO_PARALLEL_TRIALS, and
    only as many as fit in half of the available memory with their own model copy (plus the job's own copy)."""
    if configured > 0:
        return configured
    if device.type != "cpu":
        return 1
    n = max(1, min(threads, MAX_AUTO_PARALLEL_TRIALS))
    if weights_bytes:
        import psutil

        n = min(n, int(psutil.virtual_memory().available * 0.5 // weights_bytes) - 1)
    return n if n > 1 else 1


class TrialWorkers:
    """Worker processes, each building an evaluator with `factory` (a picklable zero-argument callable) and
    `threads` torch threads. They start at once and build in the background; `wait_ready` waits for them."""

    def __init__(self, factory: Callable[[], TrialEvaluator], n: int, threads: int):
        self.processes: list[subprocess.Popen] = []
        self.ready = False
        payload = pickle.dumps((factory, threads))
        stderr = _fileno_or_none(sys.stderr)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        src = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        try:
            for _ in range(n):
                process = subprocess.Popen(
                    [sys.executable, "-m", "bruno.search.pool"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    env=env,
                )
                assert process.stdin is not None
                process.stdin.write(payload)
                process.stdin.flush()
                self.processes.append(process)
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self.processes)

    def wait_ready(self) -> None:
        if not self.ready:
            for index in range(len(self.processes)):
                self._receive(index)  # "ready"
            self.ready = True

    def send(self, index: int, params: AblationParams) -> None:
        stdin = self.processes[index].stdin
        assert stdin is not None
        try:
            pickle.dump(params, stdin)
            stdin.flush()
        except BrokenPipeError:
            self._died(index)

    def receive(self, index: int) -> TrialResult:
        result = self._receive(index)
        if not isinstance(result, TrialResult):
            raise BrunoError(f"trial worker {index + 1} sent {type(result).__name__}, not a trial result")
        return result

    def _receive(self, index: int) -> Any:
        stdout = self.processes[index].stdout
        assert stdout is not None
        try:
            kind, value = pickle.load(stdout)
        except (EOFError, pickle.UnpicklingError):
            self._died(index)
        if kind == "error":
            raise BrunoError(f"trial worker {index + 1} failed:\n{value}")
        return value

    def _died(self, index: int) -> NoReturn:
        code = self.processes[index].wait()
        raise BrunoError(
            f"trial worker {index + 1} exited (code {code}); its error is in the job log above. "
            "Set search.parallel_trials: 1 to run the trials in one process."
        )

    def close(self) -> None:
        for process in self.processes:
            if process.stdin is not None and not process.stdin.closed:
                with contextlib.suppress(BrokenPipeError):
                    process.stdin.close()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes = []


class TrialPool:
    """Trial slots: with workers, slot k is worker k and this process only hands out parameter sets and collects
    results; without, the one slot is this process's evaluator. `submit` starts a slot's trial, `collect` waits for
    its result."""

    def __init__(self, local: TrialEvaluator | None, workers: TrialWorkers | None = None):
        if local is None and workers is None:
            raise ValueError("a trial pool needs an evaluator or workers")
        self.local = local
        self.workers = workers
        self._pending: dict[int, AblationParams] = {}

    @property
    def size(self) -> int:
        return len(self.workers) if self.workers is not None else 1

    def submit(self, slot: int, params: AblationParams) -> None:
        if not 0 <= slot < self.size or slot in self._pending:
            raise ValueError(f"slot {slot} is busy or not one of the {self.size} slots")
        self._pending[slot] = params
        if self.workers is not None:
            self.workers.wait_ready()
            self.workers.send(slot, params)

    def collect(self, slot: int) -> TrialResult:
        params = self._pending.pop(slot)
        if self.workers is not None:
            return self.workers.receive(slot)
        assert self.local is not None
        return self.local.evaluate(params)

    def evaluate(self, batch: Sequence[AblationParams]) -> list[TrialResult]:
        """Up to `size` parameter sets at once, results in order."""
        for slot, params in enumerate(batch):
            self.submit(slot, params)
        return [self.collect(slot) for slot in range(len(batch))]

    def close(self) -> None:
        """Stop the workers; the pool is then this process's evaluator alone (if it has one)."""
        if self.workers is not None:
            self.workers.close()
            self.workers = None
            self._pending.clear()


def _fileno_or_none(stream: Any) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _send(out: BinaryIO, kind: str, value: Any) -> None:
    pickle.dump((kind, value), out)
    out.flush()


def worker_main() -> None:
    """The worker loop (stdin: factory, then parameter sets; stdout: results). Library output goes to stderr."""
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    source = sys.stdin.buffer
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s trial worker: %(message)s")
    try:
        factory, threads = pickle.load(source)
        torch.set_num_threads(threads)
        evaluator = factory()
    except Exception:
        _send(protocol_out, "error", traceback.format_exc())
        return
    _send(protocol_out, "ready", None)
    while True:
        try:
            params = pickle.load(source)
        except EOFError:
            return
        try:
            _send(protocol_out, "result", evaluator.evaluate(params))
        except Exception:
            _send(protocol_out, "error", traceback.format_exc())


if __name__ == "__main__":
    worker_main()
