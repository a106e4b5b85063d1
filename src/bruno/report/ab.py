"""The A/B comparison of variants: one summary row per variant (aggregated over replicate seeds) and, with several
replicates, Welch t-tests between every pair of variants.

Per run (variant instance) it reads the study (best KL among trials at 0 refusals on val, mean and best KL over trials,
seconds per trial, trial count), the directions metadata (number of cones, silhouette), the optimize job's benchmark (peak
memory) and the chosen trial's held-out metrics of the ablated and healed models.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

TEST_METRICS = (
    "refusal_rate_harmful",
    "refusal_rate_harmless",
    "refusal_rate_borderline",
    "kl_divergence",
    "mmlu_accuracy",
    "hallucination_score",
    "hallucination_rate",
)
# Figures compared between variants when there are replicates (lower is better for all of them but mmlu_accuracy).
COMPARED = (
    "best_kl_at_zero_refusals_val",
    "mean_kl_val",
    "seconds_per_trial",
    "ablated_refusal_rate_harmful",
    "ablated_kl_divergence",
    "ablated_mmlu_accuracy",
    "healed_kl_divergence",
)


@dataclass(frozen=True)
class RunFiles:
    variant: str
    replicate: int
    study: Path
    directions: Path
    benchmark: Path | None
    metrics: Mapping[str, Path]  # stage -> metrics.json


def _value(metrics: Mapping[str, Any], key: str) -> float:
    entry = metrics.get(key)
    if isinstance(entry, Mapping) and entry.get("value") is not None:
        return float(entry["value"])
    return math.nan


def run_row(files: RunFiles) -> dict[str, Any]:
    import optuna
    import torch
    from optuna.trial import TrialState

    from bruno.search.study import STUDY_NAME

    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{files.study}")
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    kls = [t.values[0] for t in trials]
    at_zero = [t.values[0] for t in trials if t.values[1] == 0]
    seconds = [t.user_attrs.get("seconds", math.nan) for t in trials]
    meta = torch.load(files.directions, map_location="cpu", weights_only=True)["metadata"]
    cones = meta.get("concept_cones", {})
    row: dict[str, Any] = {
        "variant": files.variant,
        "replicate": files.replicate,
        "n_trials": len(trials),
        "best_kl_at_zero_refusals_val": min(at_zero) if at_zero else math.nan,
        "trials_at_zero_refusals_val": len(at_zero),
        "mean_kl_val": sum(kls) / len(kls) if kls else math.nan,
        "best_kl_val": min(kls) if kls else math.nan,
        "seconds_per_trial": sum(seconds) / len(seconds) if seconds else math.nan,
        "direction_method": meta.get("method"),
        "concept_cones": cones.get("status", "off"),
        "n_cones": len(cones.get("cones", [])) if cones.get("status") == "used" else 0,
        "silhouette": cones.get("silhouette") if cones.get("silhouette") is not None else math.nan,
        "caa_applied": bool(meta.get("caa", {}).get("applied", False)),
        "calibration_factor": meta.get("calibration", {}).get("factor", 1.0),
        "peak_rss_mb": math.nan,
    }
    # Per-trial cost of each part of the objective (KL pass, refusal generation, extra objectives), seconds.
    parts = sorted({k for t in trials for k in t.user_attrs if k.startswith("seconds_")})
    for key in parts:
        values = [t.user_attrs[key] for t in trials if key in t.user_attrs]
        row[f"{key}_per_trial"] = sum(values) / len(values) if values else math.nan
    if files.benchmark is not None and files.benchmark.is_file():
        bench = pd.read_csv(files.benchmark, sep="\t")
        row["peak_rss_mb"] = float(bench["max_rss"].max())
    for stage, path in files.metrics.items():
        metrics = json.loads(Path(path).read_text(encoding="utf-8"))
        for key in TEST_METRICS:
            row[f"{stage}_{key}"] = _value(metrics, key)
    return row


def _t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    from scipy import stats

    clean = [v for v in values if not math.isnan(v)]
    if not clean:
        return math.nan, math.nan, math.nan
    mean = sum(clean) / len(clean)
    if len(clean) < 2:
        return mean, math.nan, math.nan
    sem = stats.sem(clean)
    if sem == 0:
        return mean, mean, mean
    lo, hi = stats.t.interval(0.95, len(clean) - 1, loc=mean, scale=sem)
    return mean, float(lo), float(hi)


def summarize(runs: pd.DataFrame, settings: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per variant: means over replicates (with 95 % t-intervals when there are several)."""
    rows = []
    for variant, group in runs.groupby("variant", sort=False):
        row: dict[str, Any] = {"variant": variant, "replicates": len(group)}
        for column in group.columns:
            if column in ("variant", "replicate"):
                continue
            values = group[column].tolist()
            if pd.api.types.is_numeric_dtype(group[column]) and not pd.api.types.is_bool_dtype(group[column]):
                mean, lo, hi = _t_interval([float(v) for v in values])
                row[column] = mean
                if len(group) > 1:
                    row[f"{column}_ci95_lo"], row[f"{column}_ci95_hi"] = lo, hi
            else:
                row[column] = values[0] if len(set(map(str, values))) == 1 else ";".join(map(str, values))
        abl = settings.get(variant, {})
        row["norm_preservation"] = abl.get("norm_preservation")
        row["biprojected"] = abl.get("biprojected")
        rows.append(row)
    return pd.DataFrame(rows)


def significance(runs: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Welch t-tests between every pair of variants on the compared figures (needs >= 2 replicates each)."""
    from scipy import stats

    columns = [
        "variant_a",
        "variant_b",
        "metric",
        "mean_a",
        "mean_b",
        "n_a",
        "n_b",
        "p_value",
        "test",
        "significant",
    ]
    rows = []
    variants = list(dict.fromkeys(runs["variant"]))
    for i, a in enumerate(variants):
        for b in variants[i + 1 :]:
            for metric in COMPARED:
                if metric not in runs:
                    continue
                xa = runs.loc[runs["variant"] == a, metric].dropna().astype(float).tolist()
                xb = runs.loc[runs["variant"] == b, metric].dropna().astype(float).tolist()
                if len(xa) < 2 or len(xb) < 2:
                    continue
                if xa == xb or (max(xa) == min(xa) and max(xb) == min(xb)):
                    p = 1.0 if xa[0] == xb[0] else 0.0
                else:
                    p = float(stats.ttest_ind(xa, xb, equal_var=False).pvalue)
                rows.append([a, b, metric, sum(xa) / len(xa), sum(xb) / len(xb), len(xa), len(xb), p, "Welch t-test",
                             bool(p < alpha)])  # fmt: skip
    return pd.DataFrame(rows, columns=columns)
