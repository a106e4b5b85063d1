"""Job setup shared by the Snakemake scripts: log redirection, threads, seeds, and a timing/memory record."""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from typing import Any

_START = time.time()


def setup_job(snakemake: Any, seed: int | None = None) -> logging.Logger:
    """Send stdout/stderr and logging to the job's log file, set torch threads and seeds. Returns a logger."""
    if snakemake.log:
        stream = open(snakemake.log[0], "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (lives for the job)
        sys.stdout = stream
        sys.stderr = stream
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("httpx", "urllib3", "filelock", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch

    threads = max(1, int(getattr(snakemake, "threads", 1) or 1))
    torch.set_num_threads(threads)
    if seed is not None:
        seed_everything(seed)
    logger = logging.getLogger(f"bruno.{snakemake.rule}")
    logger.info("rule %s, threads %d, seed %s", snakemake.rule, threads, seed)
    return logger


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def peak_memory() -> dict[str, Any]:
    """Peak RSS of this process (MB) and peak CUDA memory (MB) where CUDA is used."""
    import resource

    from bruno.model.placement import peak_gpu_memory_mb

    info: dict[str, Any] = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    gpu = peak_gpu_memory_mb()
    if gpu:
        info["peak_cuda_mb"] = gpu
    return info


def run_job(snakemake: Any, main: Any, seed_key: str | None = "seed") -> None:
    """Entry point of every Snakemake script: set the job up, run `main(snakemake, log)`, report errors clearly."""
    from bruno.errors import BrunoError

    seed = getattr(snakemake.params, seed_key) if seed_key and hasattr(snakemake.params, seed_key) else None
    log = setup_job(snakemake, seed)
    start = time.time()
    try:
        main(snakemake, log)
    except BrunoError as error:
        log.error("%s", error)
        message = f"Error in rule {snakemake.rule}: {error}"
        print(message, file=sys.__stderr__, flush=True)  # the console too, not only the job's log
        raise SystemExit(message) from None
    log.info("done in %.1f s; %s", time.time() - start, peak_memory())
