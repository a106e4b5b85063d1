"""Print the evaluation results of a finished run as a Markdown table (base, then every variant's ablated and
healed model): the figures the README quotes, read from results/eval/*/metrics.json and benchmarks/.

    .venv/bin/python tools/results_table.py [results-dir] [benchmarks-dir]
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

COLUMNS = [
    ("refusal_rate_harmful", "harmful refusal"),
    ("refusal_rate_harmless", "harmless refusal"),
    ("refusal_rate_borderline", "borderline refusal"),
    ("kl_divergence", "KL (first token)"),
    ("kl_divergence_teacher_forced", "KL (16 tokens)"),
    ("mmlu_accuracy", "task-set accuracy"),
    ("hallucination_rate", "wrong facts"),
]


def cell(metric: dict) -> str:
    value, (lo, hi) = metric["value"], metric["ci95"]
    digits = 4 if value < 0.1 and value != 0 else 3
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def main() -> None:
    results = Path(sys.argv[1] if len(sys.argv) > 1 else "results")
    benchmarks = Path(sys.argv[2] if len(sys.argv) > 2 else "benchmarks")
    stages = [("base", results / "eval" / "base")]
    for variant in sorted(p.name for p in (results / "eval").iterdir() if p.name != "base"):
        for stage in ("ablated", "healed"):
            if (results / "eval" / variant / stage / "metrics.json").exists():
                stages.append((f"{variant} {stage}", results / "eval" / variant / stage))
    print("| model | " + " | ".join(label for _, label in COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for name, folder in stages:
        metrics = json.loads((folder / "metrics.json").read_text())
        print(f"| {name} | " + " | ".join(cell(metrics[key]) for key, _ in COLUMNS) + " |")
    n = {key: json.loads((stages[0][1] / "metrics.json").read_text())[key]["n"] for key, _ in COLUMNS}
    print("\nn per column: " + ", ".join(f"{label} {n[key]}" for key, label in COLUMNS))
    if benchmarks.is_dir():
        totals: dict[str, float] = {}
        for tsv in sorted(benchmarks.glob("*/*.tsv")):
            with open(tsv, encoding="utf-8") as f:
                row = next(csv.DictReader(f, delimiter="\t"))
            totals[tsv.parent.name] = totals.get(tsv.parent.name, 0.0) + float(row["s"])
        print("\nseconds per rule (all jobs): " + ", ".join(f"{k} {v:.0f}" for k, v in totals.items()))
        print(f"sum of job seconds: {sum(totals.values()):.0f}")


if __name__ == "__main__":
    main()
