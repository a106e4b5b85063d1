"""Compare the figures of two results directories (for example a default run before and after a refactor).

    python tools/compare_runs.py RUN_A/results RUN_B/results

Compares every file the two trees share, by what it holds rather than by bytes where a file carries times:
- CSV files: every column but those that hold times or memory (`volatile`: a name with `seconds` or `rss`);
- safetensors weights and other files: byte for byte;
- JSON files: equal after dropping keys that hold times, memory, dates, absolute paths or versions
  (`VOLATILE_KEYS`; e.g. `seconds`, `peak_rss_mb`);
- `.pt` files (directions): the same keys and equal tensors (`torch.load(weights_only=True)`);
- skipped: logs, benchmarks, Optuna storages (`.db`, journals: they hold timestamps; the trials' values are in
  best_trial.json), the HTML report (it holds dates and timings).
Prints each difference and a summary; exits 1 if any figure differs or a file is in one tree only.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

VOLATILE_KEYS = {
    "seconds", "seconds_by_part", "seconds_kl", "seconds_generation", "peak_rss_mb", "peak_gpu_memory_mb",
    "peak_gpu_reserved_mb", "started", "finished", "date", "created", "versions", "python", "hostname", "model",
    "source_model", "same_model_as", "wall_seconds", "timestamp",
}  # fmt: skip
SKIPPED_SUFFIXES = {".log", ".db", ".html", ".tsv", ".png", ".lock"}
SKIPPED_PARTS = {"optuna", "logs", "benchmarks"}


def volatile(key: str) -> bool:
    return key in VOLATILE_KEYS or "seconds" in key or "rss" in key


def strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if not volatile(k)}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def same_pt(a: Path, b: Path) -> bool:
    import torch

    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)

    def equal(u: Any, v: Any) -> bool:
        if isinstance(u, torch.Tensor) or isinstance(v, torch.Tensor):
            return isinstance(u, torch.Tensor) and isinstance(v, torch.Tensor) and torch.equal(u, v)
        if isinstance(u, dict) and isinstance(v, dict):
            keys = {k for k in u if not volatile(k)}
            return keys == {k for k in v if not volatile(k)} and all(equal(u[k], v[k]) for k in keys)
        if isinstance(u, (list, tuple)) and isinstance(v, (list, tuple)):
            return len(u) == len(v) and all(equal(p, q) for p, q in zip(u, v, strict=True))
        return strip(u) == strip(v)

    return equal(x, y)


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return [{k: v for k, v in row.items() if not volatile(k)} for row in csv.DictReader(f)]


def files(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix not in SKIPPED_SUFFIXES
        and not SKIPPED_PARTS & set(p.relative_to(root).parts)
    }


def compare(a: Path, b: Path) -> list[str]:
    diffs = []
    names_a, names_b = files(a), files(b)
    diffs += [f"only in {a}: {n}" for n in sorted(names_a - names_b)]
    diffs += [f"only in {b}: {n}" for n in sorted(names_b - names_a)]
    for name in sorted(names_a & names_b):
        pa, pb = a / name, b / name
        if pa.suffix == ".json":
            same = strip(json.loads(pa.read_text())) == strip(json.loads(pb.read_text()))
        elif pa.suffix == ".csv":
            same = csv_rows(pa) == csv_rows(pb)
        elif pa.suffix == ".pt":
            same = same_pt(pa, pb)
        else:
            same = pa.read_bytes() == pb.read_bytes()
        if not same:
            diffs.append(f"differs: {name}")
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    diffs = compare(args.a, args.b)
    print("\n".join(diffs) if diffs else "")
    shared = len(files(args.a) & files(args.b))
    print(f"{shared} shared files compared, {len(diffs)} difference(s)")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
