"""Subprocesses of the tests, each in its own process group, killed as a whole group on timeout and at teardown.

`subprocess.run(timeout=...)` kills only the process it started: a Snakemake run killed that way leaves its running job
(an organism training, a search worker) going for as long as it takes. Here every command starts a new session (its own
process group), a timeout or any other exception kills the whole group, and `kill_leftovers` (an autouse fixture in
conftest.py) kills the group of every process a test started that is still running when the test ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from typing import Any

_STARTED: list[subprocess.Popen] = []


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group `proc` leads (its children too), then reap `proc`."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def popen(command: Sequence[str], **kwargs: Any) -> subprocess.Popen:
    """Popen in a new process group, remembered for `kill_leftovers`."""
    proc = subprocess.Popen(list(command), start_new_session=True, **kwargs)
    _STARTED.append(proc)
    return proc


def run(command: Sequence[str], *, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess:
    """Like `subprocess.run(capture_output=True, text=True, timeout=...)`, but on timeout (TimeoutExpired is raised,
    with the output so far) or any other exception the command's whole process group is killed."""
    kwargs.setdefault("text", True)
    proc = popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        stdout, stderr = proc.communicate()
        raise subprocess.TimeoutExpired(proc.args, timeout, output=stdout, stderr=stderr) from None
    except BaseException:
        kill_group(proc)
        raise
    finally:
        kill_group(proc)  # the command has ended; anything it left running in its group ends with it
        _forget(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _forget(proc: subprocess.Popen) -> None:
    if proc in _STARTED:
        _STARTED.remove(proc)


def kill_leftovers() -> int:
    """Kill the group of every started process still running; returns how many there were."""
    alive = [proc for proc in _STARTED if proc.poll() is None]
    for proc in alive:
        kill_group(proc)
    _STARTED.clear()
    return len(alive)
