"""How near a trial runs to the machine's limit: a lower bound on its time from the work it did (`make bench`).

A trial's arithmetic is almost all in the model's linear layers. `WorkCounter` records, for every call of an
`nn.Linear` during a trial, the bytes of weights it reads and the floating-point operations it does (2 x rows x in x
out). Layers a trial does not run (decoder layers replayed by `bruno.model.prefix`, logits of positions that are not kept)
are not called, so they are not counted. `measure_peaks` measures the device's memory bandwidth (a large copy) and
its matrix-product rate (a large square product) with the same threads and dtype. The bounds:

- bandwidth bound: every weight read once per call from memory, at the measured bandwidth. This is the usual
  "decode steps x model bytes / bandwidth" bound of generation, counted per layer call;
- roofline bound: each call takes at least the longer of its weight reads and its arithmetic at the measured peak.

Both leave out what is small for these prompts: attention scores, KV-cache reads, norms, activations, embedding rows
and the edit's hooks. A ratio of measured time to the roofline bound near 1 means the trial cannot get much faster on
this device; a large ratio means time goes to something else (per-operation overhead, Python, kernel launches).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class DevicePeaks:
    device: str
    dtype: str
    bandwidth_bytes_per_s: float
    flops_per_s: float

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "dtype": self.dtype, "bandwidth_gb_per_s": self.bandwidth_bytes_per_s / 1e9,
                "gflops_per_s": self.flops_per_s / 1e9}  # fmt: skip


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(run: Any, device: torch.device, repeats: int) -> float:
    run()  # warm-up
    _synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def measure_peaks(
    device: torch.device,
    dtype: torch.dtype,
    copy_bytes: int | None = None,
    matmul_size: int | None = None,
    repeats: int = 5,
) -> DevicePeaks:
    """The best of `repeats` timings of a copy of `copy_bytes` (read + write counted) and of an n x n matrix product
    (2 n^3 operations) in `dtype` on `device`, with this process's torch threads. The defaults are sized to exceed
    a CPU's caches (256 MiB, n = 2048) or to fill a GPU (1 GiB, n = 8192)."""
    gpu = device.type != "cpu"
    copy_bytes = copy_bytes or (2**30 if gpu else 2**28)
    n = matmul_size or (8192 if gpu else 2048)
    source = torch.ones(copy_bytes // torch.empty((), dtype=dtype).element_size(), dtype=dtype, device=device)
    moved = 2 * source.numel() * source.element_size()  # read and written
    copy = _best_seconds(functools.partial(torch.empty_like(source).copy_, source), device, repeats)
    del source
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    product = _best_seconds(functools.partial(torch.mm, a, b), device, repeats)
    return DevicePeaks(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        dtype=str(dtype).removeprefix("torch."),
        bandwidth_bytes_per_s=moved / copy,
        flops_per_s=2 * n**3 / product,
    )


@dataclass
class WorkCounter:
    """Per linear-layer call: (weight bytes read, floating-point operations). Use `counting(model)`."""

    calls: list[tuple[int, int]] = field(default_factory=list)

    @property
    def weight_bytes(self) -> int:
        return sum(b for b, _ in self.calls)

    @property
    def flops(self) -> int:
        return sum(f for _, f in self.calls)

    def bounds(self, peaks: DevicePeaks) -> dict[str, float]:
        """Seconds: weights read at the peak bandwidth, arithmetic at the peak rate, and the per-call roofline."""
        bw, rate = peaks.bandwidth_bytes_per_s, peaks.flops_per_s
        return {
            "bandwidth_bound_seconds": self.weight_bytes / bw,
            "compute_bound_seconds": self.flops / rate,
            "roofline_bound_seconds": sum(max(b / bw, f / rate) for b, f in self.calls),
        }


@contextmanager
def counting(model: nn.Module) -> Iterator[WorkCounter]:
    """Record the work of every `nn.Linear` call in `model` while the block runs (the hooks cost time: keep timed
    runs outside it)."""
    counter = WorkCounter()

    def record(module: nn.Linear, args: tuple[Any, ...]) -> None:
        weights = [module.weight] + ([module.bias] if module.bias is not None else [])
        weight_bytes = sum(w.numel() * w.element_size() for w in weights)
        rows = args[0].numel() // module.in_features
        counter.calls.append((weight_bytes, 2 * rows * module.in_features * module.out_features))

    handles = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        yield counter
    finally:
        for handle in handles:
            handle.remove()
