"""The text table of a trial-benchmark report (`bruno_tools.bench`, results/bench/bench.json): one block per timed run
(its sizes, the mean trial split into KL pass, generation and overhead, trials per minute, peak memory, and the
trial's time against the bandwidth and roofline bounds), then whatever sweeps the report holds."""

from __future__ import annotations

from typing import Any


def _limits_line(name: str, r: dict[str, Any]) -> str:
    return (f"{name}, per trial: {r['weight_gb_read_per_trial']:.3f} GB of weights read, {r['gflop_per_trial']:.1f} GFLOP; "
            f"bounds {r['bandwidth_bound_seconds']:.3g} s (bandwidth), {r['roofline_bound_seconds']:.3g} s (roofline); "
            f"trial time {r['ratio_to_bandwidth_bound']:.1f}x the bandwidth bound, {r['ratio_to_roofline_bound']:.1f}x "
            f"the roofline bound (work counted over {r['work_trials']} trial(s))")  # fmt: skip


def _run_lines(name: str, r: dict[str, Any], print_trials: bool) -> list[str]:
    """A timed run: sizes, the mean trial split into its parts, trials per minute, peak memory, the bounds."""
    gpu = "".join(f", peak {device} memory {mb:.0f} MiB" for device, mb in r.get("peak_gpu_mb", {}).items())
    lines = [
        f"{name}: {r['n_refusal_prompts']} refusal + {r['n_kl_prompts']} KL prompts, {r['max_new_tokens']} tokens, "
        f"batch {r['batch_size']}, {r['n_trials']} trials | per trial {r['seconds_per_trial']:.3f} s = KL pass "
        f"{r['seconds_kl']:.3f} s + generation {r['seconds_generation']:.3f} s + overhead {r['seconds_overhead']:.3f} s "
        f"| {60 * r['trials_per_second']:.1f} trials per minute | peak RSS {r['peak_rss_mb']:.0f} MiB{gpu}"
    ]
    if print_trials:
        lines += [
            f"  trial {i}: KL pass {t['seconds_kl']:.3f} s, generation {t['seconds_generation']:.3f} s, total "
            f"{t['seconds']:.3f} s, refusal rate {t['refusal_rate']:.2f}"
            for i, t in enumerate(r["trials"], 1)
        ]
    if "roofline_bound_seconds" in r:
        lines.append(_limits_line(name, r))
    return lines


def _rates(values: list[float]) -> str:
    return "/".join(f"{v:.3f}" for v in values)


def print_report(report: dict[str, Any], print_trials: bool = False) -> None:
    o = report["main"]
    print(f"model {report['model']} ({report['parameters']:,} parameters, weights: {report['weights']}) on "
          f"{report['machine']['cuda'] or report['machine']['processor']}, {report['machine']['threads']} threads")  # fmt: skip
    k = report["peaks"]
    print(f"{k['device']} ({k['dtype']}): measured {k['bandwidth_gb_per_s']:.1f} GB/s copy bandwidth, "
          f"{k['gflops_per_s']:.1f} GFLOP/s matrix products")  # fmt: skip
    for line in _run_lines("one evaluator", o, print_trials):
        print(line)
    if "search_settings" in report:
        s = report["search_settings"]
        for line in _run_lines(f"search settings of {s['config']}", s, print_trials):
            print(line)
    if "no_prefix_reuse" in report:
        p = report["no_prefix_reuse"]
        print(f"without re-using the unedited leading layers: {p['trials_per_second']:.2f} trials/s (with: "
              f"{o['prefix_layers_kept']} layers kept)")  # fmt: skip
    if "early_stop" in report:
        e = report["early_stop"]
        print(f"refusal early stop: {e['trials_per_second']:.2f} trials/s (refusal rate {e['mean_refusal_rate']:.3f} "
              f"vs {o['mean_refusal_rate']:.3f} without)")  # fmt: skip
    for key, where in (("parallel", ""), ("search_settings_parallel", " at the search settings")):
        if key not in report:
            continue
        q = report[key]
        print(f"{q['n_parallel']} evaluators x {q['threads_each']} thread(s) against one with "
              f"{report['machine']['threads']}{where} (median of {q['rounds']} alternating rounds of {q['n_trials']} "
              f"trials): {q['trials_per_second_parallel']:.3f} vs {q['trials_per_second_one_process']:.3f} trials/s "
              f"(rounds: {_rates(q['rounds_parallel'])} vs {_rates(q['rounds_one_process'])}); "
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
    if "memory" in report:
        m = report["memory"]
        print(f"RSS over {m['n_trials']} trials: first {m['rss_mb_first']:.0f} MiB, last {m['rss_mb_last']:.0f} MiB, "
              f"max {m['rss_mb_max']:.0f} MiB")  # fmt: skip
    print(f"peak RSS of the process {report['peak_rss_mb']:.0f} MiB")
    if "large" in report:
        for line in _run_lines(f"large random model ({report['large']['parameters']:,} parameters)", report["large"],
                               print_trials):  # fmt: skip
            print(line)
    if "scaling" in report:
        print("prompts tokens  s/trial   KL      gen     overhead")
        for r in report["scaling"]:
            print(f"{r['n_refusal_prompts']:7d} {r['max_new_tokens']:6d}  {r['seconds_per_trial']:.3f}   "
                  f"{r['seconds_kl']:.3f}   {r['seconds_generation']:.3f}   {r['seconds_overhead']:.3f}")  # fmt: skip
