"""Trial-throughput benchmark (a measurement, not a test): `python -m bruno.bench` or `make bench`.

On the organism (or any model directory) it times trials of random parameter sets from the search space, split into the
KL pass, refusal generation and overhead; trials per second; RSS over many trials (memory must stay flat); how the cost
grows with the number of prompts and response tokens; refusal early stopping on and off; on the CPU, one evaluator
against the search's default of several trials at once (`bruno.trial_pool`), and the pipeline's own search loop both
ways. Optionally it times a larger random-initialised model too. On any device it measures the memory bandwidth and
the matrix-product rate and sets each trial's time against the bounds they give (`bruno.roofline`: every weight read
at full bandwidth, and the per-layer roofline).
Prints a table and writes results/bench/bench.json.
"""

from __future__ import annotations

import argparse
import functools
import platform
import random
import resource
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import torch

from bruno.directions import mean_difference
from bruno.io import atomic_write_json
from bruno.model import ModelSettings, encode, last_token_residuals, load_model, model_device
from bruno.prompts import read_prompts
from bruno.roofline import DevicePeaks, counting, measure_peaks
from bruno.search import SearchSettings, SearchSpace
from bruno.trial import TrialEvaluator
from bruno.trial_pool import model_bytes, resolve_parallel_trials

COMPONENTS = ["attn.o_proj", "mlp.down_proj"]


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _directions(model: Any, tokenizer: Any, harmful: list[str], harmless: list[str]) -> torch.Tensor:
    device = model_device(model)
    h = last_token_residuals(model, encode(tokenizer, harmful, None, 64, device)).double().mean(0)
    g = last_token_residuals(model, encode(tokenizer, harmless, None, 64, device)).double().mean(0)
    return mean_difference(h, g, orthogonalize=True)


def _space(n_layers: int) -> SearchSpace:
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
    their linear-layer work counted (`bruno.roofline`), for the bounds and the measured time's ratio to them."""
    evaluator = TrialEvaluator(
        model, tokenizer, directions, COMPONENTS, "row", harmful, harmless, None, batch_size, max_new_tokens,
        refusal_early_stop=early_stop, prefix_reuse_mb=prefix_reuse_mb,
    )  # fmt: skip
    space = _space(evaluator.n_layers)
    rng = random.Random(seed)
    evaluator.evaluate(space.to_params(space.full_strength()))  # warm-up
    params = [space.to_params(random_values(space, rng)) for _ in range(n_trials)]
    rows, rss = [], []
    start = time.perf_counter()
    for p in params:
        rows.append(evaluator.evaluate(p))
        rss.append(_rss_mb())
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
    }


def bench_evaluator(
    model_path: str, directions: torch.Tensor, harmful: list[str], harmless: list[str], max_new_tokens: int,
    batch_size: int,
) -> TrialEvaluator:  # fmt: skip
    """The benchmark's trial evaluator for `model_path` (also the factory of the parallel benchmark's workers)."""
    model, tokenizer = load_model(model_path, ModelSettings(device="auto"))
    return TrialEvaluator(
        model, tokenizer, directions, COMPONENTS, "row", harmful, harmless, None, batch_size, max_new_tokens
    )


def compare_parallel(
    model_path: str, directions: torch.Tensor, harmful: list[str], harmless: list[str], max_new_tokens: int,
    batch_size: int, threads: int, n_parallel: int, n_trials: int = 20, rounds: int = 3, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Random trials through one evaluator with all `threads`, against `n_parallel` worker processes
    (`bruno.trial_pool`) with threads / n_parallel each, handed trials in order as the search does: in alternating
    rounds of the same `n_trials` parameter sets, since this machine's speed drifts between minutes."""
    from bruno import bench  # by its module name: `python -m bruno.bench` runs this file as __main__
    from bruno.trial_pool import TrialPool, TrialWorkers

    each = max(1, threads // n_parallel)
    factory = functools.partial(
        bench.bench_evaluator, model_path, directions, harmful, harmless, max_new_tokens, batch_size
    )
    workers = TrialWorkers(factory, n_parallel, each)
    try:
        single = factory()
        pool = TrialPool(None, workers)
        space = _space(single.n_layers)
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
    """Score `params` in the pool's slots in order, a freed slot taking the next (as `bruno.search.run_study`)."""
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

    from bruno.config import load_config, resolve_variants, settings_from_dict
    from bruno.jobs import optimize
    from bruno.plan import AbliterationSettings

    schema = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"
    config = resolve_variants(load_config(config_path, schema), schema)[variant]
    settings = replace(
        settings_from_dict(SearchSettings, config["search"], "search"),
        n_trials=n_trials,
        parallel_trials=parallel_trials,
    )
    seed = config["search"]["seed"] if config["search"].get("seed") is not None else config["seed"]
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
    rss_before = _rss_mb()
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
        "rss_mb_after": _rss_mb(),
    }


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


def large_model(tokenizer_source: str, path: Path, hidden: int = 1024, layers: int = 24) -> Path:
    """A random-initialised Llama of about 300M parameters sharing the benchmark model's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (path / "config.json").exists():
        return path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=int(2.75 * hidden), num_hidden_layers=layers,
        num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="results/organism")
    parser.add_argument("--harmful", default="data/prompts/harmful.jsonl")
    parser.add_argument("--harmless", default="data/prompts/harmless.jsonl")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--memory-trials", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=100)
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
        default="norm_row",
        help="time the pipeline's search loop for this variant (needs its directions.pt; '' to skip)",
    )
    parser.add_argument("--search-trials", type=int, default=60)
    parser.add_argument("--search-rounds", type=int, default=3, help="alternating rounds of each search mode")
    parser.add_argument("--out", default="results/bench/bench.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, ModelSettings(device="auto"))
    harmful = [p.text for p in read_prompts_any(args.harmful, "val")][:100]
    harmless = [p.text for p in read_prompts_any(args.harmless, "val")][:100]
    directions = _directions(model, tokenizer, harmful, harmless)
    peaks = measure_peaks(model_device(model), next(model.parameters()).dtype)
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
        "parameters": sum(p.numel() for p in model.parameters()),
        "peaks": peaks.as_dict(),
    }
    main_run = time_trials(
        model,
        tokenizer,
        directions,
        harmful,
        harmless,
        args.trials,
        args.tokens,
        args.batch_size,
        peaks=peaks,
    )
    report["organism"] = main_run
    report["trials_per_second_one_process"] = report["trials_per_second"] = main_run["trials_per_second"]
    report["early_stop"] = time_trials(model, tokenizer, directions, harmful, harmless, args.trials, args.tokens,
                                       args.batch_size, early_stop=True)  # fmt: skip
    report["no_prefix_reuse"] = time_trials(model, tokenizer, directions, harmful, harmless, args.trials, args.tokens,
                                            args.batch_size, prefix_reuse_mb=0)  # fmt: skip
    memory = time_trials(
        model, tokenizer, directions, harmful, harmless, args.memory_trials, args.tokens, args.batch_size
    )
    report["memory"] = {k: memory[k] for k in ("n_trials", "rss_mb_first", "rss_mb_last", "rss_mb_max")}
    scaling = []
    for n_prompts in (25, 50, 100):
        for tokens in (8, 24, 48):
            r = time_trials(
                model,
                tokenizer,
                directions,
                harmful[:n_prompts],
                harmless[:n_prompts],
                8,
                tokens,
                args.batch_size,
            )
            scaling.append({k: r[k] for k in ("n_refusal_prompts", "max_new_tokens", "seconds_per_trial", "seconds_kl",
                                              "seconds_generation", "seconds_overhead")})  # fmt: skip
    report["scaling"] = scaling
    n_parallel = resolve_parallel_trials(0, model_device(model), args.threads, model_bytes(args.model))
    if n_parallel > 1:
        report["parallel"] = compare_parallel(args.model, directions, harmful, harmless, args.tokens, args.batch_size,
                                              args.threads, n_parallel)  # fmt: skip
        # the headline figure is what the search does by default (search.parallel_trials: 0 = auto)
        report["trials_per_second"] = report["parallel"]["trials_per_second_parallel"]
        # the machine's time per trial against the main run's mean bound (the same first random parameter sets)
        report["parallel"]["ratio_to_roofline_bound"] = 1 / (
            report["trials_per_second"] * main_run["roofline_bound_seconds"]
        )
    if args.search_variant:
        search = functools.partial(time_search, args.model, args.config, args.search_variant, args.search_trials,
                                   Path(args.out).parent / "search")  # fmt: skip
        # one trial at a time, and the default (auto), in alternating rounds: this machine's speed drifts
        modes = {"search": 1, "search_parallel": 0} if n_parallel > 1 else {"search": 1}
        runs: dict[str, list[dict[str, Any]]] = {key: [] for key in modes}
        for index in range(args.search_rounds):
            for key in list(modes) if index % 2 == 0 else list(modes)[::-1]:
                runs[key].append(search(parallel_trials=modes[key]))
        for key, results in runs.items():
            ranked = sorted(results, key=lambda r: r["trials_per_second"])
            report[key] = {**ranked[len(ranked) // 2], "rounds": [r["trials_per_second"] for r in results]}
    report["peak_rss_mb"] = _peak_rss_mb()
    if args.large:
        del model
        big_path = large_model(args.model, Path(args.out).parent / "large-model")
        big, big_tok = load_model(big_path, ModelSettings(device="auto"))
        n = args.large_prompts
        big_dirs = _directions(big, big_tok, harmful[:n], harmless[:n])
        big_run = time_trials(big, big_tok, big_dirs, harmful[:n], harmless[:n], args.large_trials, args.tokens,
                              args.batch_size, peaks=peaks, work_trials=args.large_trials)  # fmt: skip
        report["large"] = {"parameters": sum(p.numel() for p in big.parameters()), **big_run,
                           "peak_rss_mb": _peak_rss_mb()}  # fmt: skip
    atomic_write_json(args.out, report)
    print_report(report)
    return report


def _limits_line(name: str, r: dict[str, Any]) -> str:
    return (f"{name}, per trial: {r['weight_gb_read_per_trial']:.3f} GB of weights read, {r['gflop_per_trial']:.1f} GFLOP; "
            f"bounds {r['bandwidth_bound_seconds']:.4f} s (bandwidth), {r['roofline_bound_seconds']:.4f} s (roofline); "
            f"measured {r['ratio_to_bandwidth_bound']:.1f}x / {r['ratio_to_roofline_bound']:.1f}x them")  # fmt: skip


def read_prompts_any(path: str, split: str) -> list[Any]:
    return [p for p in read_prompts(path) if p.split == split] or read_prompts(path)


def print_report(report: dict[str, Any]) -> None:
    o = report["organism"]
    print(f"model {report['model']} ({report['parameters']:,} parameters) on {report['machine']['processor']}, "
          f"{report['machine']['threads']} threads")  # fmt: skip
    print(f"one evaluator: trials/s {o['trials_per_second']:.2f} ({60 * o['trials_per_second']:.0f} per minute) | per "
          f"trial {o['seconds_per_trial']:.3f} s = KL {o['seconds_kl']:.3f} + generation {o['seconds_generation']:.3f} + "
          f"overhead {o['seconds_overhead']:.3f}")  # fmt: skip
    k = report["peaks"]
    print(f"{k['device']} ({k['dtype']}): measured {k['bandwidth_gb_per_s']:.1f} GB/s copy bandwidth, "
          f"{k['gflops_per_s']:.1f} GFLOP/s matrix products")  # fmt: skip
    print(_limits_line("one evaluator", o))
    p = report["no_prefix_reuse"]
    print(f"without re-using the unedited leading layers: {p['trials_per_second']:.2f} trials/s (with: "
          f"{o['prefix_layers_kept']} layers kept)")  # fmt: skip
    e = report["early_stop"]
    print(f"refusal early stop: {e['trials_per_second']:.2f} trials/s (refusal rate {e['mean_refusal_rate']:.3f} vs "
          f"{o['mean_refusal_rate']:.3f} without)")  # fmt: skip
    if "parallel" in report:
        q = report["parallel"]
        print(f"{q['n_parallel']} evaluators x {q['threads_each']} thread(s) against one with "
              f"{report['machine']['threads']} (median of {q['rounds']} alternating rounds of {q['n_trials']} trials): "
              f"{q['trials_per_second_parallel']:.2f} vs {q['trials_per_second_one_process']:.2f} trials/s; "
              f"{q['ratio_to_roofline_bound']:.1f}x the roofline bound")  # fmt: skip
    for key in ("search", "search_parallel"):
        if key not in report:
            continue
        r = report[key]
        print(f"pipeline search loop ({r['variant']}, {r['n_trials']} TPE trials, {r['parallel_trials']} at a time, "
              f"Optuna journal storage; median of {len(r['rounds'])} rounds): {r['trials_per_second']:.2f} trials/s | "
              f"per trial {r['seconds_per_trial']:.3f} s = trial {r['seconds_trial']:.3f} (KL {r['seconds_kl']:.3f}, "
              f"generation {r['seconds_generation']:.3f}) + sampling/storage {r['seconds_search_overhead']:.3f}; "
              f"workers ready after {r['seconds_waiting_for_workers']:.1f} s, not counted")  # fmt: skip
    m = report["memory"]
    print(
        f"RSS over {m['n_trials']} trials: first {m['rss_mb_first']:.0f} MiB, last {m['rss_mb_last']:.0f} MiB, max "
        f"{m['rss_mb_max']:.0f} MiB; peak RSS of the process {report['peak_rss_mb']:.0f} MiB"
    )
    if "large" in report:
        g = report["large"]
        print(f"large random model ({g['parameters']:,} parameters, {g['n_refusal_prompts']} prompts, "
              f"{g['max_new_tokens']} tokens, {g['n_trials']} trials): {g['seconds_per_trial']:.2f} s/trial = KL "
              f"{g['seconds_kl']:.2f} + generation {g['seconds_generation']:.2f} + overhead {g['seconds_overhead']:.2f} "
              f"({60 * g['trials_per_second']:.1f} trials per minute), peak RSS {g['peak_rss_mb']:.0f} MiB")  # fmt: skip
        print(_limits_line("large random model", g))
    print("prompts tokens  s/trial   KL      gen     overhead")
    for r in report["scaling"]:
        print(f"{r['n_refusal_prompts']:7d} {r['max_new_tokens']:6d}  {r['seconds_per_trial']:.3f}   {r['seconds_kl']:.3f}   "
              f"{r['seconds_generation']:.3f}   {r['seconds_overhead']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
