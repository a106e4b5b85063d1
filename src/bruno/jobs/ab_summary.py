"""Stage `ab_summary`: results/ab_summary.csv (one row per variant) and results/ab_significance.csv."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bruno.io import atomic_path
from bruno.report.ab import RunFiles, run_row, significance, summarize

log = logging.getLogger(__name__)


def run(
    runs: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Mapping[str, Any]],
    summary_path: str | Path,
    runs_path: str | Path,
    significance_path: str | Path,
) -> pd.DataFrame:
    """`runs`: one mapping per variant instance with keys instance, variant, replicate, study, directions, benchmark,
    metrics ({stage: path})."""
    rows = []
    for run_files in runs:
        row = run_row(
            RunFiles(
                variant=run_files["variant"],
                replicate=run_files["replicate"],
                study=Path(run_files["study"]),
                directions=Path(run_files["directions"]),
                benchmark=Path(run_files["benchmark"]) if run_files.get("benchmark") else None,
                metrics={stage: Path(p) for stage, p in run_files["metrics"].items()},
            )
        )
        rows.append({"instance": run_files["instance"], **row})
    per_run = pd.DataFrame(rows)
    summary = summarize(per_run.drop(columns=["instance"]), settings)
    tests = significance(per_run)
    for frame, path in ((per_run, runs_path), (summary, summary_path), (tests, significance_path)):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
    log.info("A/B summary of %d variant(s) over %d run(s); %d significant difference(s)",
             len(summary), len(per_run), int(tests["significant"].sum()) if len(tests) else 0)  # fmt: skip
    return summary
