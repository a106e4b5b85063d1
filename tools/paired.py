"""Paired comparisons of evaluated stages on the same held-out items (a measurement, not a test): prints, for each pair
A -> B, the mean per-item change B - A with a seeded paired-bootstrap 95 % interval, for

- harmful refusal (each harmful test prompt refused or not),
- harmless refusal,
- first-token KL from the base (each harmless test prompt),
- capability (each multiple-choice test item right or wrong),

and whether the interval excludes 0. Stages are paths under RESULTS/eval, e.g. `norm_row/ablated`.

    .venv/bin/python tools/paired.py runs/real/results norm_row/ablated norm_row/healed cones/ablated ... \\
        --pairs "norm_row/ablated>norm_row/healed" "no_cones/ablated>cones/ablated"
    .venv/bin/python tools/paired.py runs/real/results --healing --variants baseline norm_row no_cones cones
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bruno.evaluation.stats import bootstrap_interval  # noqa: E402


def per_item(results: Path, stage: str) -> dict[str, pd.Series]:
    """Per-item values of one stage, each indexed by prompt or question id."""
    folder = results / "eval" / stage
    refusals = pd.read_csv(folder / "refusals.csv", keep_default_na=False)
    series = {}
    for set_name in ("harmful", "harmless"):
        rows = refusals[refusals["set"] == set_name]
        series[f"{set_name}_refusal"] = pd.Series(
            rows["is_refusal"].astype(str).eq("True").astype(float).to_numpy(), index=rows["prompt_id"]
        )
    harmless = refusals[refusals["set"] == "harmless"]
    series["kl"] = pd.Series(
        pd.to_numeric(harmless["kl_divergence"], errors="coerce").fillna(0.0).to_numpy(),
        index=harmless["prompt_id"],
    )
    mmlu = folder / "mmlu.csv"
    if mmlu.is_file():
        items = pd.read_csv(mmlu, keep_default_na=False)
        series["capability"] = pd.Series(
            items["correct"].astype(str).eq("True").astype(float).to_numpy(), index=items["question_id"]
        )
    return series


def compare(results: Path, before: str, after: str) -> list[dict]:
    a, b = per_item(results, before), per_item(results, after)
    rows = []
    for name in a:
        if name not in b:
            continue
        joined = pd.concat([a[name].rename("a"), b[name].rename("b")], axis=1, join="inner").dropna()
        change = (joined["b"] - joined["a"]).tolist()
        lo, hi = bootstrap_interval(change)
        rows.append(
            {
                "before": before,
                "after": after,
                "figure": name,
                "n": len(change),
                "mean_before": float(joined["a"].mean()),
                "mean_after": float(joined["b"].mean()),
                "change": float(joined["b"].mean() - joined["a"].mean()),
                "ci95": [lo, hi],
                "significant": not lo <= 0.0 <= hi,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a run's results folder")
    parser.add_argument("--pairs", nargs="*", default=[], help="BEFORE>AFTER stage pairs")
    parser.add_argument("--variants", nargs="*", default=[])
    parser.add_argument(
        "--healing", action="store_true", help="add VARIANT/ablated>VARIANT/healed per variant"
    )
    parser.add_argument("--vs-base", action="store_true", help="add base>VARIANT/ablated per variant")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    pairs = [tuple(p.split(">", 1)) for p in args.pairs]
    for variant in args.variants:
        if args.vs_base:
            pairs.append(("base", f"{variant}/ablated"))
        if args.healing:
            pairs.append((f"{variant}/ablated", f"{variant}/healed"))
    rows = [row for before, after in pairs for row in compare(args.results, before, after)]
    print(
        f"{'before':>18} -> {'after':<18} {'figure':<17} {'n':>4} {'before':>8} {'after':>8} {'change':>9}  95 % interval"
    )
    for r in rows:
        mark = " *" if r["significant"] else ""
        print(
            f"{r['before']:>18} -> {r['after']:<18} {r['figure']:<17} {r['n']:>4} {r['mean_before']:>8.4f} "
            f"{r['mean_after']:>8.4f} {r['change']:>+9.4f}  [{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}]{mark}"
        )
    print("* the paired-bootstrap interval of the change excludes 0")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
