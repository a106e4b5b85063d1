"""Timing single trials for the benchmark (`bruno_tools.bench`): random parameter sets of the search space on one
evaluator, split into the KL pass, refusal generation and overhead, and their roofline bounds."""

from __future__ import annotations

import random
import resource
import time
from typing import Any

import psutil
import torch

from bruno.directions.mean import mean_difference
from bruno.edit.plan import AbliterationSettings
from bruno.model.generation import encode, last_token_residuals, model_device
from bruno.model.loading import ModelSettings, load_model
from bruno.model.placement import peak_gpu_memory_mb
from bruno.search.space import SearchSettings, SearchSpace
from bruno.search.trial import Decoding, TrialEvaluator, TrialPrompts
from bruno_tools.roofline import DevicePeaks, counting

COMPONENTS = ["attn.o_proj", "mlp.down_proj"]
EDIT = AbliterationSettings(
    components=COMPONENTS, norm_preservation="row"
)  # the edit every timed trial makes


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_directions(model: Any, tokenizer: Any, harmful: list[str], harmless: list[str]) -> torch.Tensor:
    device = model_device(model)
    h = last_token_residuals(model, encode(tokenizer, harmful, None, 64, device)).double().mean(0)
    g = last_token_residuals(model, encode(tokenizer, harmless, None, 64, device)).double().mean(0)
    return mean_difference(h, g, orthogonalize=True)


def bench_space(n_layers: int) -> SearchSpace:
    ranges = {c: {"max_weight": [0.8, 1.5], "max_weight_position": [0.6, 1.0], "min_weight": [0.0, 1.0],
                  "min_weight_distance": [0.0, 0.6]} for c in COMPONENTS}  # fmt: skip
    return SearchSpace.resolve(SearchSettings(ranges=ranges), n_layers, COMPONENTS)


def random_values(space: SearchSpace, rng: random.Random) -> dict[str, Any]:
    """A uniformly random point of the search space (Optuna parameter names -> values)."""
    values = {}
    for name, dist in space.distributions().items():
        values[name] = (
            rng.choice(dist.choices) if hasattr(dist, "choices") else rng.uniform(dist.low, dist.high)
        )
    return values


def time_trials(
    model: Any, tokenizer: Any, directions: torch.Tensor, harmful: list[str], harmless: list[str],
    n_trials: int, max_new_tokens: int, batch_size: int, early_stop: bool = False, seed: int = 0,
    prefix_reuse_mb: float = 1024, peaks: DevicePeaks | None = None, work_trials: int = 8,
) -> dict[str, Any]:  # fmt: skip
    """Random trials through one evaluator, timed; with `peaks`, the first `work_trials` of them run again with
    their linear-layer work counted (`bruno_tools.roofline`), for the bounds and the measured time's ratio to them.
    Peak RSS is the process's highest up to the end of this run, peak GPU memory this run's highest."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()
    evaluator = TrialEvaluator(
        model, tokenizer, directions, EDIT, TrialPrompts(harmful, harmless),
        Decoding(batch_size, max_new_tokens, early_stop, prefix_reuse_mb),
    )  # fmt: skip
    space = bench_space(evaluator.n_layers)
    rng = random.Random(seed)
    evaluator.evaluate(space.to_params(space.full_strength()))  # warm-up
    params = [space.to_params(random_values(space, rng)) for _ in range(n_trials)]
    rows, rss = [], []
    start = time.perf_counter()
    for p in params:
        rows.append(evaluator.evaluate(p))
        rss.append(rss_mb())
    wall = time.perf_counter() - start
    n = len(rows)
    kl = sum(r.seconds_kl for r in rows) / n
    gen = sum(r.seconds_generation for r in rows) / n
    total = sum(r.seconds for r in rows) / n
    limits = {} if peaks is None else work_bounds(evaluator, params[:work_trials], rows[:work_trials], peaks)
    return {
        **limits,
        "n_trials": n,
        "n_refusal_prompts": len(harmful),
        "n_kl_prompts": len(harmless),
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "early_stop": early_stop,
        "prefix_layers_kept": evaluator.prefix.n_layers,
        "seconds_per_trial": total,
        "seconds_kl": kl,
        "seconds_generation": gen,
        "seconds_overhead": total - kl - gen,
        "trials_per_second": n / wall,
        "mean_refusal_rate": sum(r.refusal_rate for r in rows) / n,
        "rss_mb_first": rss[0],
        "rss_mb_last": rss[-1],
        "rss_mb_max": max(rss),
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": peak_gpu_memory_mb(),
        "trials": [
            {
                "seconds": r.seconds,
                "seconds_kl": r.seconds_kl,
                "seconds_generation": r.seconds_generation,
                "refusal_rate": r.refusal_rate,
            }
            for r in rows
        ],  # fmt: skip
    }


def bench_evaluator(
    model_path: str, directions: torch.Tensor, harmful: list[str], harmless: list[str], max_new_tokens: int,
    batch_size: int,
) -> TrialEvaluator:  # fmt: skip
    """The benchmark's trial evaluator for `model_path` (also the factory of the parallel benchmark's workers)."""
    model, tokenizer = load_model(model_path, ModelSettings(device="auto"))
    return TrialEvaluator(
        model,
        tokenizer,
        directions,
        EDIT,
        TrialPrompts(harmful, harmless),
        Decoding(batch_size, max_new_tokens),
    )


def work_bounds(
    evaluator: TrialEvaluator, params: list[Any], timed: list[Any], peaks: DevicePeaks
) -> dict[str, Any]:
    """Run `params` again with their work counted; per trial (means): weight bytes read, operations, the bandwidth
    and roofline bounds at `peaks`, and the ratio of the `timed` results' seconds to each bound."""
    bounds, weight_bytes, flops = [], 0, 0
    for p in params:
        with counting(evaluator.model) as counter:
            evaluator.evaluate(p)
        bounds.append(counter.bounds(peaks))
        weight_bytes += counter.weight_bytes
        flops += counter.flops
    n = len(params)
    measured = sum(r.seconds for r in timed)
    bandwidth = sum(b["bandwidth_bound_seconds"] for b in bounds)
    roofline = sum(b["roofline_bound_seconds"] for b in bounds)
    return {
        "work_trials": n,
        "weight_gb_read_per_trial": weight_bytes / n / 1e9,
        "gflop_per_trial": flops / n / 1e9,
        "bandwidth_bound_seconds": bandwidth / n,
        "compute_bound_seconds": sum(b["compute_bound_seconds"] for b in bounds) / n,
        "roofline_bound_seconds": roofline / n,
        "ratio_to_bandwidth_bound": measured / bandwidth,
        "ratio_to_roofline_bound": measured / roofline,
    }
