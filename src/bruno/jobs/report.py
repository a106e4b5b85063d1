"""Stage `report`: the self-contained HTML comparison report across variants -> results/report.html.

It reads the results tree (docs/architecture.md, "Results layout, in full"), so every file it shows is an input of
the rule; parts of the pipeline that are disabled (healing, concept cones, the A/B summary, hallucination …) are
stated as such on the page.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bruno.io import atomic_write_text
from bruno.report.render import ReportInputs, build_report

log = logging.getLogger(__name__)


def run(
    results_dir: str | Path,
    benchmarks_dir: str | Path,
    variants: Mapping[str, Mapping[str, Any]],
    stages: Mapping[str, Sequence[str]],
    config: Mapping[str, Any],
    out_path: str | Path,
    replicate_of: Mapping[str, Sequence[Any]] | None = None,
    n_samples: int = 3,
    workflow_dir: str | Path = ".",
) -> str:
    """Render the report; `variants` maps each variant instance to its resolved config (display order = key order),
    `stages` to its enabled edited stages, `replicate_of` to (variant, replicate index); `workflow_dir` is where the
    git commit of the workflow is read. Returns the HTML."""
    inputs = ReportInputs(
        results_dir=Path(results_dir),
        benchmarks_dir=Path(benchmarks_dir),
        config=config,
        variants=variants,
        stages=stages,
        replicate_of=replicate_of or {},
        n_samples=n_samples,
        workdir=Path(workflow_dir),
    )
    html = build_report(inputs, out_path)
    atomic_write_text(out_path, html)
    log.info("report: %s (%.0f kB)", out_path, len(html.encode("utf-8")) / 1024)
    return html
