"""The report's tables: the verdict table (base vs every variant's ablated and healed model, each figure with n and 95 %
interval, the best edited model per column marked), the seed plan's success criteria as pass / fail / not measured,
and the A/B summary with its significance statements.

Figures come from metrics.json objects `{"value", "n", "ci95": [lo, hi], ...}`; a missing key or a null value means
the feature was off or the metric was not measured, and the cell says so (never 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bruno.report.load import finite_or_none

# The seed plan's success metrics (reference plan, "Success Metrics").
KL_AT_ZERO_MAX = 0.20
CAPABILITY_DROP_MAX_POINTS = 2.0
HALLUCINATION_RATE_MAX = 0.10
MISSING = "—"


@dataclass(frozen=True)
class MetricSpec:
    key: str
    label: str
    better: str | None  # "lower", "higher", or None (no "best" marked)
    percent: bool  # a rate shown in %
    always: bool  # shown even when no model has it (then every cell says "—")


VERDICT_METRICS = (
    MetricSpec("refusal_rate_harmful", "Harmful refusal", "lower", True, True),
    MetricSpec("refusal_rate_harmless", "Harmless over-refusal", "lower", True, True),
    MetricSpec("refusal_rate_borderline", "Borderline refusal", None, True, False),
    MetricSpec("kl_divergence", "KL vs base (first token)", "lower", False, True),
    MetricSpec("kl_divergence_teacher_forced", "KL vs base (teacher-forced)", "lower", False, False),
    MetricSpec("mmlu_accuracy", "Capability accuracy", "higher", True, True),
    MetricSpec("hallucination_score", "Hallucination score", "lower", False, True),
    MetricSpec("hallucination_rate", "Hallucination rate", "lower", True, True),
)


def fmt_number(value: Any, digits: int = 3) -> str:
    number = finite_or_none(value)
    if number is None:
        return MISSING
    if number == 0:
        return "0"
    if abs(number) >= 1000:
        return f"{number:,.0f}"
    if abs(number) >= 10:
        return f"{number:.1f}"
    return f"{number:.{digits}g}"


def fmt_percent(value: Any) -> str:
    number = finite_or_none(value)
    return MISSING if number is None else f"{100 * number:.1f} %"


def fmt_value(value: Any, percent: bool) -> str:
    return fmt_percent(value) if percent else fmt_number(value)


def fmt_interval(lo: Any, hi: Any, percent: bool) -> str:
    lo, hi = finite_or_none(lo), finite_or_none(hi)
    if lo is None or hi is None:
        return ""
    if percent:
        return f"[{100 * lo:.1f}, {100 * hi:.1f}]"
    return f"[{fmt_number(lo)}, {fmt_number(hi)}]"


def metric_value(metrics: Mapping[str, Any] | None, key: str) -> float | None:
    entry = (metrics or {}).get(key)
    return finite_or_none(entry.get("value")) if isinstance(entry, Mapping) else None


def metric_cell(metrics: Mapping[str, Any] | None, spec: MetricSpec) -> dict[str, Any]:
    entry = (metrics or {}).get(spec.key)
    if not isinstance(entry, Mapping) or finite_or_none(entry.get("value")) is None:
        return {"text": MISSING, "ci": "", "n": None, "value": None, "best": False}
    lo, hi = (list(entry.get("ci95") or []) + [None, None])[:2]
    return {
        "text": fmt_value(entry["value"], spec.percent),
        "ci": fmt_interval(lo, hi, spec.percent),
        "n": entry.get("n"),
        "value": float(entry["value"]),
        "best": False,
    }


def capability_task(metrics: Sequence[Mapping[str, Any] | None], is_organism: bool) -> str:
    """The label of the capability task set ('organism task set', 'cais/mmlu'); never calls the organism's set MMLU."""
    for m in metrics:
        entry = (m or {}).get("mmlu_accuracy")
        if isinstance(entry, Mapping) and entry.get("task"):
            return str(entry["task"])
    return "organism task set" if is_organism else "not measured"


def verdict_table(
    base: Mapping[str, Any] | None,
    stage_metrics: Mapping[str, Mapping[str, Mapping[str, Any] | None]],
    enabled_stages: Mapping[str, Sequence[str]],
) -> dict[str, Any]:
    """Columns and rows of the verdict table. `stage_metrics`: {instance: {stage: metrics or None}} (None: not run)."""
    every = [base, *(m for stages in stage_metrics.values() for m in stages.values())]
    specs = [s for s in VERDICT_METRICS if s.always or any(metric_value(m, s.key) is not None for m in every)]
    rows = [{"instance": "base", "stage": "base", "status": "ok" if base else "not run",
             "cells": [metric_cell(base, s) for s in specs]}]  # fmt: skip
    for instance, stages in stage_metrics.items():
        for stage in ("ablated", "healed"):
            if stage not in enabled_stages.get(instance, ()):
                status = "disabled"
            else:
                status = "ok" if stages.get(stage) else "not run"
            cells = [metric_cell(stages.get(stage), s) for s in specs] if status == "ok" else []
            rows.append({"instance": instance, "stage": stage, "status": status, "cells": cells})
    for column, spec in enumerate(specs):
        if spec.better is None:
            continue
        values = [r["cells"][column]["value"] for r in rows[1:] if r["cells"]]
        values = [v for v in values if v is not None]
        if len(set(values)) < 2:  # one edited model, or all tied: nothing is "best"
            continue
        best = min(values) if spec.better == "lower" else max(values)
        for row in rows[1:]:
            if row["cells"] and row["cells"][column]["value"] is not None:
                row["cells"][column]["best"] = math.isclose(
                    row["cells"][column]["value"], best, abs_tol=1e-12
                )
    return {"columns": specs, "rows": rows}


def _criterion(status: str, value: str, detail: str) -> dict[str, str]:
    return {"status": status, "value": value, "detail": detail}


def kl_at_zero_criterion(best_kl: float | None, source: str | None, n_at_zero: int | None) -> dict[str, str]:
    if source is None:
        return _criterion("not measured", MISSING, "no study or A/B summary")
    if best_kl is None:
        return _criterion("fail", "no trial at 0 refusals", f"{source}: no trial reached 0 refusals")
    count = f", {n_at_zero} trial(s) at 0 refusals" if n_at_zero is not None else ""
    status = "pass" if best_kl < KL_AT_ZERO_MAX else "fail"
    return _criterion(status, fmt_number(best_kl), f"{source}{count}; target < {KL_AT_ZERO_MAX:.2f}")


def capability_criterion(base: Mapping[str, Any] | None, stage: Mapping[str, Any] | None) -> dict[str, str]:
    base_acc, acc = metric_value(base, "mmlu_accuracy"), metric_value(stage, "mmlu_accuracy")
    if base_acc is None or acc is None:
        which = "base" if base_acc is None else "this model"
        return _criterion("not measured", MISSING, f"no capability accuracy for {which}")
    delta = 100 * (acc - base_acc)
    # a tolerance for float round-off at the boundary (0.58 vs 0.60 is exactly -2 points)
    status = "pass" if delta >= -CAPABILITY_DROP_MAX_POINTS - 1e-9 else "fail"
    return _criterion(
        status,
        f"{delta:+.1f} pts",
        f"{fmt_percent(acc)} vs base {fmt_percent(base_acc)}; target ≥ −{CAPABILITY_DROP_MAX_POINTS:.0f} pts",
    )


def hallucination_criterion(stage: Mapping[str, Any] | None) -> dict[str, str]:
    entry = (stage or {}).get("hallucination_rate")
    rate = metric_value(stage, "hallucination_rate")
    if rate is None:
        return _criterion("not measured", MISSING, "hallucination evaluation off or not run")
    hi = finite_or_none((entry.get("ci95") or [None, None])[1])
    status = "pass" if rate < HALLUCINATION_RATE_MAX else "fail"
    detail = f"target < {100 * HALLUCINATION_RATE_MAX:.0f} %"
    if status == "pass" and hi is not None and hi >= HALLUCINATION_RATE_MAX:
        detail += f"; point estimate only, the 95 % interval reaches {100 * hi:.1f} %"
    return _criterion(status, fmt_percent(rate), detail)


def overall(criteria: Sequence[Mapping[str, str]]) -> str:
    statuses = {c["status"] for c in criteria}
    if "fail" in statuses:
        return "fail"
    return "pass" if statuses == {"pass"} else "incomplete"


def success_rows(
    base: Mapping[str, Any] | None,
    stage_metrics: Mapping[str, Mapping[str, Mapping[str, Any] | None]],
    kl_at_zero: Mapping[str, tuple[float | None, str | None, int | None]],
) -> list[dict[str, Any]]:
    """One row per instance and stage that ran; `kl_at_zero`: {instance: (best KL, source, trials at 0)}."""
    rows = []
    for instance, stages in stage_metrics.items():
        kl = kl_at_zero_criterion(*kl_at_zero.get(instance, (None, None, None)))
        for stage, metrics in stages.items():
            if metrics is None:
                continue
            criteria = [kl, capability_criterion(base, metrics), hallucination_criterion(metrics)]
            rows.append(
                {"instance": instance, "stage": stage, "criteria": criteria, "overall": overall(criteria)}
            )
    return rows


# A/B summary columns (ab_summary.csv) in display order: (column, label, percent).
AB_SEARCH_COLUMNS = (
    ("n_trials", "trials", False),
    ("direction_method", "direction method", False),
    ("norm_preservation", "norm preservation", False),
    ("concept_cones", "concept cones", False),
    ("n_cones", "cones", False),
    ("silhouette", "silhouette", False),
    ("best_kl_at_zero_refusals_val", "best KL at 0 refusals (val)", False),
    ("mean_kl_val", "mean KL over trials (val)", False),
    ("best_kl_val", "best KL (val)", False),
    ("seconds_per_trial", "s / trial", False),
    ("peak_rss_mb", "peak RSS MB (search)", False),
)
AB_TEST_METRICS = (
    ("refusal_rate_harmful", "harmful refusal", True),
    ("refusal_rate_harmless", "harmless refusal", True),
    ("kl_divergence", "KL", False),
    ("mmlu_accuracy", "capability", True),
    ("hallucination_score", "halluc. score", False),
    ("hallucination_rate", "halluc. rate", True),
)


def _ab_cell(row: Mapping[str, Any], column: str, percent: bool) -> dict[str, str]:
    value = row.get(column)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return {"text": MISSING, "ci": ""}
    if isinstance(value, str) and finite_or_none(value) is None:
        return {"text": value, "ci": ""}
    ci = fmt_interval(row.get(f"{column}_ci95_lo"), row.get(f"{column}_ci95_hi"), percent)
    if column in ("n_trials", "n_cones", "replicates"):
        return {"text": f"{float(value):.0f}", "ci": ci}
    return {"text": fmt_value(value, percent), "ci": ci}


def ab_tables(summary: pd.DataFrame, variant_order: Sequence[str]) -> dict[str, Any]:
    """The A/B summary as two tables (search and directions; held-out metrics of the chosen trial)."""
    records = summary.to_dict("records")
    order = {v: i for i, v in enumerate(variant_order)}
    records.sort(key=lambda r: (order.get(str(r["variant"]), len(order)), str(r["variant"])))
    search_columns = [c for c in AB_SEARCH_COLUMNS if c[0] in summary.columns]
    test_columns = [
        (f"{stage}_{key}", f"{stage} {label}", percent)
        for stage in ("ablated", "healed")
        for key, label, percent in AB_TEST_METRICS
        if f"{stage}_{key}" in summary.columns
    ]

    def table(columns: Sequence[tuple[str, str, bool]]) -> dict[str, Any]:
        return {
            "labels": [label for _, label, _ in columns],
            "rows": [
                {
                    "variant": str(r["variant"]),
                    "replicates": _ab_cell(r, "replicates", False)["text"] if "replicates" in r else "1",
                    "cells": [_ab_cell(r, column, percent) for column, _, percent in columns],
                }
                for r in records
            ],
        }

    replicates = [finite_or_none(r.get("replicates")) or 1 for r in records]
    return {
        "search": table(search_columns),
        "test": table(test_columns),
        "max_replicates": int(max(replicates, default=1)),
    }


def significance_statements(tests: pd.DataFrame | None, alpha: float = 0.05) -> dict[str, Any]:
    """Plain-language statements from ab_significance.csv (Welch t-tests between variants over replicates)."""
    if tests is None or tests.empty:
        return {
            "rows": [],
            "summary": "No pairwise test was possible (each variant needs at least 2 replicates).",
        }
    rows = []
    for r in tests.to_dict("records"):
        significant = str(r.get("significant")).strip().lower() in ("true", "1")
        p = finite_or_none(r.get("p_value"))
        rows.append(
            {
                "pair": f"{r['variant_a']} vs {r['variant_b']}",
                "metric": str(r["metric"]),
                "means": f"{fmt_number(r.get('mean_a'))} vs {fmt_number(r.get('mean_b'))}",
                "p": MISSING if p is None else f"{p:.3g}",
                "test": str(r.get("test", "")),
                "significant": significant,
            }
        )
    n_sig = sum(r["significant"] for r in rows)
    summary = (
        f"{n_sig} of {len(rows)} comparisons differ at α = {alpha} "
        "(two-sided, no correction for multiple comparisons: read single hits with care)."
    )
    return {"rows": rows, "summary": summary}


def confirmation_rows(counts: dict[str, Any] | None) -> list[dict[str, str]]:
    """The chosen trial's refusals on the confirmation prompts (bruno.search.confirm), as rows of its validation metrics."""
    if not counts:
        return []
    low, high = counts["refusal_rate_ci95"]
    rate = f"{counts['n_refusals']}/{counts['n_prompts']} = {fmt_number(counts['refusal_rate'])}"
    return [
        {
            "name": "refusal_rate (confirmation prompts)",
            "value": f"{rate} [{fmt_number(low)}, {fmt_number(high)}]",
        }
    ]


def healing_summary(record: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """The scalar figures of healed/healing.json (preference pairs, training summary, time), formatted."""
    if not record:
        return []
    items = [*(record.get("pairs") or {}).items(), *(record.get("training") or {}).items()]
    items.append(("distill_weight", (record.get("settings") or {}).get("distill_weight", 0.0)))
    items.append(("seconds", record.get("seconds")))
    return [
        (str(k), fmt_number(v) if isinstance(v, float) else str(v))
        for k, v in items
        if isinstance(v, (int, float, str))
    ]


def healing_checkpoints(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The healing's checkpoint selection as `CheckpointProbe` recorded it in healed/healing.json: one row per
    checkpoint (val KL, val refusal rate, whether it was within the refusal guard, whether it was kept) and a sentence
    on the outcome; None without checkpoints. Records written before the guard's verdict was stored show it as not
    recorded."""
    training = (record or {}).get("training") or {}
    checkpoints = training.get("checkpoints") or []
    if not checkpoints:
        return None
    increase = ((record or {}).get("settings") or {}).get("checkpoint_max_refusal_increase", 0.0)
    limit = training.get("checkpoint_refusal_limit")
    selected = training.get("selected_step")
    verdict = {True: "yes", False: "no", None: "not recorded"}
    rows = [
        {
            "step": str(c["step"]),
            "kl": fmt_number(c["val_kl_divergence"]),
            "refusal": f"{100 * c['val_refusal_rate']:.1f} %",
            "allowed": verdict[c.get("within_guard")],
            "selected": c["step"] == selected,
        }
        for c in checkpoints
    ]
    later = checkpoints[1:]
    rejected = [c for c in later if c.get("within_guard") is False]
    lowest = fmt_number(min((c["val_kl_divergence"] for c in rejected), default=math.nan))
    if selected != 0 or not later or limit is None:
        outcome = f"Checkpoint selection kept step {selected} of {checkpoints[-1]['step']}."
    elif len(rejected) == len(later):
        outcome = (
            f"Healing left the ablated model unchanged: every later checkpoint raised the val refusal rate above "
            f"the guard's {100 * limit:.1f} % (step 0's {100 * checkpoints[0]['val_refusal_rate']:.1f} % + "
            f"healing.checkpoint_max_refusal_increase {increase:g}); their val KL reached {lowest}, step 0's "
            f"{fmt_number(checkpoints[0]['val_kl_divergence'])}."
        )
    else:
        outcome = "Healing left the ablated model unchanged: no later checkpoint within the guard had a lower val KL"
        outcome += f" (the ones beyond it reached {lowest})." if rejected else "."
    return {"rows": rows, "outcome": outcome, "increase": f"{increase:g}"}


def kl_change_summary(change: Mapping[str, Any] | None) -> dict[str, str] | None:
    """`paired_kl_change` formatted for the healing section."""
    if not change:
        return None
    lo, hi = change["ci95"]
    return {
        "n": str(change["n"]),
        "before": fmt_number(change["before"]),
        "after": fmt_number(change["after"]),
        "change": f"{change['change']:+.3g}",
        "ci95": f"[{lo:+.3g}, {hi:+.3g}]",
        "lower": str(change["lower"]),
        "median_before": fmt_number(change["median_before"]),
        "median_after": fmt_number(change["median_after"]),
    }
