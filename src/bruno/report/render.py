"""Assembling the report: read the results tree (`load`), build the tables (`tables`) and figures (`plots`), and fill
the Jinja2 template (autoescape on: model text is untrusted input; StrictUndefined: a missing template variable is a
bug, not an empty cell). The output is one HTML file with inline CSS and data-URI images and no network references.

Instances: with `replicates > 1` every variant has replicate instances `{variant}_rep{k}`; the verdict, success and
per-variant sections show replicate 0 (the plain variant name), the A/B section the means over replicates.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from bruno.config import stage_seed
from bruno.io import sha256_json
from bruno.report import plots
from bruno.report.load import (
    environment,
    finite_or_none,
    load_benchmarks,
    load_directions,
    load_samples,
    load_study,
    paired_kl_change,
    read_csv,
    read_json,
)
from bruno.report.tables import (
    ab_tables,
    capability_task,
    confirmation_rows,
    fmt_number,
    healing_checkpoints,
    healing_summary,
    kl_change_summary,
    significance_statements,
    success_rows,
    verdict_table,
)
from bruno.safety import base_model_label
from bruno.search.study import STUDY_NAME

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE_NAME = "report.html.j2"
STAGE_FILES = ("metrics.json", "refusals.csv", "mmlu.csv", "hallucination.csv")


@dataclass(frozen=True)
class ReportInputs:
    """Where the results are and how the run was configured (the resolved settings of every variant instance)."""

    results_dir: Path
    benchmarks_dir: Path
    config: Mapping[str, Any]
    variants: Mapping[str, Mapping[str, Any]]  # instance -> resolved config, in display order
    stages: Mapping[str, Sequence[str]]  # instance -> enabled edited stages ("ablated", "healed")
    replicate_of: Mapping[str, Sequence[Any]] = field(default_factory=dict)  # instance -> (variant, k)
    n_samples: int = 3
    workdir: Path = Path(".")


def primary_instances(inputs: ReportInputs) -> list[str]:
    return [i for i in inputs.variants if int(inputs.replicate_of.get(i, (i, 0))[1]) == 0]


def seeds(inputs: ReportInputs) -> dict[str, Any]:
    config = inputs.config
    rows = []
    for instance, settings in inputs.variants.items():
        healing = settings.get("healing", {})
        rows.append(
            {
                "instance": instance,
                "replicate": int(inputs.replicate_of.get(instance, (instance, 0))[1]),
                "search": stage_seed(settings.get("search", {}).get("seed"), config.get("seed")),
                "healing": stage_seed(healing.get("seed"), config.get("seed"))
                if healing.get("enable_post_abliteration_finetuning")
                else "off",
            }
        )
    organism = config.get("organism", {}).get("seed") if config["model"]["name"] == "organism" else None
    return {"master": config.get("seed"), "organism": organism, "rows": rows}


def wall_times(benchmarks_dir: Path) -> dict[str, Any]:
    jobs = load_benchmarks(benchmarks_dir)
    per_rule: dict[str, dict[str, Any]] = {}
    for job in jobs:
        entry = per_rule.setdefault(
            job["rule"], {"rule": job["rule"], "jobs": 0, "seconds": 0.0, "max_rss_mb": None}
        )
        entry["jobs"] += 1
        entry["seconds"] += job["seconds"] or 0.0
        if job["max_rss_mb"] is not None:
            entry["max_rss_mb"] = max(entry["max_rss_mb"] or 0.0, job["max_rss_mb"])
    rules = sorted(per_rule.values(), key=lambda r: -r["seconds"])
    total = sum(r["seconds"] for r in rules)
    return {
        "total": _duration(total) if rules else None,
        "rules": [
            {**r, "seconds": _duration(r["seconds"]), "max_rss_mb": fmt_number(r["max_rss_mb"])}
            for r in rules
        ],
    }


def _duration(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:04.1f} s"
    return f"{secs:.1f} s"


def _link(path: Path, out_dir: Path) -> dict[str, str] | None:
    if not path.exists():
        return None
    return {"href": Path(os.path.relpath(path, out_dir)).as_posix(), "label": path.name}


def artifacts(results: Path, instance: str, stages: Sequence[str], out_dir: Path) -> list[dict[str, str]]:
    paths = [
        results / instance / name for name in ("best_trial.json", "ablation.json", "heal_training_log.csv")
    ]
    paths += [results / "eval" / instance / stage / name for stage in stages for name in STAGE_FILES]
    links = []
    for path in paths:
        link = _link(path, out_dir)
        if link:
            link["label"] = path.relative_to(results).as_posix()
            links.append(link)
    return links


def importance_table(study: Any) -> dict[str, Any]:
    objectives = study.objectives
    params = sorted({p for values in study.importances.values() for p in values})
    order = study.importances.get(objectives[0], {})
    params.sort(key=lambda p: -order.get(p, 0.0))
    rows = [
        {"param": p, "values": [fmt_number(study.importances.get(o, {}).get(p)) for o in objectives]}
        for p in params
    ]
    return {"objectives": objectives, "rows": rows, "notes": study.importance_notes}


def variant_section(inputs: ReportInputs, instance: str, out_dir: Path) -> dict[str, Any]:
    results = inputs.results_dir
    settings = inputs.variants[instance]
    stages = list(inputs.stages.get(instance, ["ablated"]))
    best = read_json(results / instance / "best_trial.json")
    study = load_study(results / instance / "study.db", STUDY_NAME)
    directions = load_directions(results / instance / "directions.pt")
    best_number = best.get("trial_number") if best else None
    selection = (best or {}).get("selection") or {}
    max_refusal = finite_or_none(selection.get("max_refusal_rate"))
    if max_refusal is None:
        max_refusal = finite_or_none(settings.get("selection", {}).get("max_refusal_rate"))
    healing_enabled = "healed" in stages
    heal_log = read_csv(results / instance / "heal_training_log.csv") if healing_enabled else None
    healing_record = read_json(results / instance / "healed" / "healing.json") if healing_enabled else None
    meta = (directions or {}).get("metadata", {})
    unused = set((best or {}).get("unused_params", []))
    overrides = (
        inputs.config.get("variants", {}).get(inputs.replicate_of.get(instance, (instance, 0))[0]) or {}
    )
    return {
        "name": instance,
        "anchor": "variant-" + "".join(c if c.isalnum() else "-" for c in instance),
        "overrides": json.dumps(overrides, indent=1, sort_keys=True) if overrides else "",
        "stages": stages,
        "settings": {
            "direction method": meta.get("method", settings.get("directions", {}).get("direction_method")),
            "components": ", ".join(settings.get("abliteration", {}).get("components", [])),
            "norm preservation": settings.get("abliteration", {}).get("norm_preservation"),
            "biprojected": settings.get("abliteration", {}).get("biprojected"),
            "n_trials (configured)": settings.get("search", {}).get("n_trials"),
            "healing (DPO)": "on" if healing_enabled else "off",
        },
        "best": best,
        "params": [
            {"name": k, "value": fmt_number(v) if isinstance(v, float) else str(v), "unused": k in unused}
            for k, v in (best or {}).get("params", {}).items()
        ],
        "metrics_val": [
            {"name": k, "value": fmt_number(v) if isinstance(v, float) else str(v)}
            for k, v in (best or {}).get("metrics_val", {}).items()
        ]
        + confirmation_rows((best or {}).get("metrics_confirmation")),
        "selection": selection,
        "study": None
        if study is None
        else {
            "complete": len(study.trials),
            "failed": study.n_failed,
            "pareto": len(study.pareto),
            "at_zero": study.trials_at_zero_refusals(),
            "best_kl_at_zero": fmt_number(study.best_kl_at_zero_refusals()),
            "best_kl_at_zero_value": study.best_kl_at_zero_refusals(),
            "objectives": ", ".join(study.objectives),
            "importances": importance_table(study),
        },
        "plots": {
            "pareto": plots.pareto_plot(study, best_number, max_refusal) if study else None,
            "history": plots.history_plot(study, best_number) if study else None,
            "kernel": plots.kernel_plot((best or {}).get("layer_weights") or {}),
            "separation": plots.separation_plot((directions or {}).get("separation")),
            "heal": plots.heal_plot(heal_log),
        },
        "directions": None if directions is None else directions_summary(meta),
        "healing": {
            "enabled": healing_enabled,
            "summary": healing_summary(healing_record),
            "checkpoints": healing_checkpoints(healing_record),
            "log_rows": 0 if heal_log is None else len(heal_log),
            "kl_change": kl_change_summary(paired_kl_change(results, instance)) if healing_enabled else None,
        },
        "samples": load_samples(results, instance, stages, inputs.n_samples),
        "artifacts": artifacts(results, instance, stages, out_dir),
    }


def directions_summary(meta: Mapping[str, Any]) -> dict[str, Any]:
    cones = meta.get("concept_cones") or {"status": "off"}
    caa = meta.get("caa") or {"applied": False, "reason": "off"}
    calibration = meta.get("calibration") or {"status": "off", "factor": 1.0}
    return {
        "method": meta.get("method", "—"),
        "orthogonalize": meta.get("orthogonalize_direction"),
        "cones": {
            "status": cones.get("status", "off"),
            "reason": cones.get("reason") or "",
            "silhouette": fmt_number(cones.get("silhouette")),
            "rows": [
                {
                    "cone": c.get("cone"),
                    "size": c.get("size"),
                    "share": fmt_number(c.get("share")),
                    "dominant": c.get("dominant_category", "—"),
                    "purity": fmt_number(c.get("purity")),
                }
                for c in cones.get("cones") or []
            ],
        },
        "caa": {"applied": bool(caa.get("applied")), "reason": str(caa.get("reason", ""))},
        "calibration": {
            "status": calibration.get("status", "on"),
            "factor": fmt_number(calibration.get("factor")),
        },
    }


def build_context(inputs: ReportInputs, out_path: Path) -> dict[str, Any]:
    results = inputs.results_dir
    config = inputs.config
    is_organism = config["model"]["name"] == "organism"
    model_label = config["model"]["name"] if is_organism else base_model_label(config)
    shown = primary_instances(inputs)
    base = read_json(results / "eval" / "base" / "metrics.json")
    stage_metrics = {
        i: {
            s: read_json(results / "eval" / i / s / "metrics.json") for s in inputs.stages.get(i, ["ablated"])
        }
        for i in shown
    }
    verdict = verdict_table(base, stage_metrics, {i: inputs.stages.get(i, ["ablated"]) for i in shown})
    models = [("base", "base", base)] + [
        (f"{i} {s}", s, m) for i in shown for s, m in stage_metrics[i].items()
    ]

    summary = read_csv(results / "ab_summary.csv")
    kl_at_zero: dict[str, tuple[float | None, str | None, int | None]] = {}
    variant_sections = [variant_section(inputs, i, out_path.parent) for i in shown]
    for section in variant_sections:
        kl_at_zero[section["name"]] = _kl_at_zero(section, summary)
    ab = None
    if summary is not None and "variant" in summary.columns:
        ab = ab_tables(summary, shown)
        ab["significance"] = (
            significance_statements(read_csv(results / "ab_significance.csv"))
            if ab["max_replicates"] > 1
            else None
        )
    detector = next((m["refusal_detector"] for _, _, m in models if m and m.get("refusal_detector")), None)
    if isinstance(detector, Mapping):
        accuracy = finite_or_none(detector.get("held_out_accuracy"))
        detector = str(detector.get("mode", "?")) + (
            f" (held-out accuracy {fmt_number(accuracy)})" if accuracy is not None else ""
        )
    return {
        "title": f"Bruno abliteration report — {model_label}",
        "model": config["model"]["name"],
        "model_label": model_label,
        "safety_tuned": bool((config.get("safety_tuning") or {}).get("enabled")),
        "is_organism": is_organism,
        "config_hash": sha256_json(config),
        "config_json": json.dumps(config, indent=1, sort_keys=True, default=str),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "env": environment(inputs.workdir),
        "seeds": seeds(inputs),
        "wall": wall_times(inputs.benchmarks_dir),
        "manifest": read_json(results / "prompts" / "manifest.json"),
        "capability_task": capability_task(
            [base, *(m for s in stage_metrics.values() for m in s.values())], is_organism
        ),
        "detector": detector,
        "verdict": verdict,
        "verdict_plot": plots.verdict_bars(models, verdict["columns"]),
        "eval_costs": [
            {
                "model": label,
                "seconds": fmt_number(m.get("seconds")),
                "peak_rss_mb": fmt_number(m.get("peak_rss_mb")),
            }
            for label, _, m in models
            if m
        ],
        "success": success_rows(base, stage_metrics, kl_at_zero),
        "replicates": [i for i in inputs.variants if i not in shown],
        "ab": ab,
        "variants": variant_sections,
    }


def _kl_at_zero(section: Mapping[str, Any], summary: Any) -> tuple[float | None, str | None, int | None]:
    """Best KL at 0 refusals (validation): from ab_summary.csv where it has the variant, else from the study."""
    if summary is not None and {"variant", "best_kl_at_zero_refusals_val"} <= set(summary.columns):
        match = summary[summary["variant"].astype(str) == section["name"]]
        if len(match):
            row = match.iloc[0]
            n_at_zero = finite_or_none(row.get("trials_at_zero_refusals_val"))
            replicates = finite_or_none(row.get("replicates")) or 1
            source = "A/B summary (val" + (
                f", mean of {replicates:.0f} replicates)" if replicates > 1 else ")"
            )
            return (
                finite_or_none(row["best_kl_at_zero_refusals_val"]),
                source,
                None if n_at_zero is None else int(n_at_zero),
            )
    study = section["study"]
    if study is None:
        return None, None, None
    return study["best_kl_at_zero_value"], "study (val)", study["at_zero"]


def render_html(context: Mapping[str, Any]) -> str:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined, trim_blocks=True,
        lstrip_blocks=True, keep_trailing_newline=True,
    )  # fmt: skip
    return env.get_template(TEMPLATE_NAME).render(**context)


def build_report(inputs: ReportInputs, out_path: str | Path) -> str:
    """Render the report for `inputs`; returns the HTML (the caller writes it)."""
    return render_html(build_context(inputs, Path(out_path)))
