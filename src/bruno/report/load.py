"""Reading the results tree for the report, defensively: a stage or feature that is off leaves its files absent (or a
metric key missing) and the loaders return None, so the page can say "disabled" or "not measured" instead of failing.

Everything here reads files only; nothing is recomputed except what the files store in another form (the Pareto front
and parameter importances of an Optuna study, the per-layer separation when an old directions file lacks it).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from bruno.evaluation.stats import bootstrap_interval

log = logging.getLogger(__name__)

# Package versions shown in the header (distribution names).
PACKAGES = (
    "torch",
    "transformers",
    "trl",
    "peft",
    "optuna",
    "snakemake",
    "sentence-transformers",
    "pandas",
    "matplotlib",
    "jinja2",
)
DEFAULT_OBJECTIVES = ("kl_divergence", "refusal_rate")
SAMPLE_SETS = ("harmful", "harmless", "borderline")


def read_json(path: str | Path) -> Any | None:
    path = Path(path)
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def read_csv(path: str | Path, **kwargs: Any) -> pd.DataFrame | None:
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    return pd.read_csv(path, **kwargs)


def finite_or_none(value: Any) -> float | None:
    """A float that is finite, else None (CSV cells: NaN, empty, text)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass
class StudyData:
    """What the report shows of one Optuna study."""

    objectives: list[str]
    trials: pd.DataFrame  # one row per COMPLETE trial: number, one column per objective, params_* columns
    n_failed: int
    pareto: list[int]  # trial numbers on the Pareto front
    importances: dict[str, dict[str, float]] = field(default_factory=dict)  # objective -> param -> importance
    importance_notes: dict[str, str] = field(default_factory=dict)  # objective -> why there are none

    def best_kl_at_zero_refusals(self) -> float | None:
        if not {"kl_divergence", "refusal_rate"} <= set(self.trials.columns):
            return None
        at_zero = self.trials.loc[self.trials["refusal_rate"] == 0, "kl_divergence"]
        return float(at_zero.min()) if len(at_zero) else None

    def trials_at_zero_refusals(self) -> int:
        if "refusal_rate" not in self.trials.columns:
            return 0
        return int((self.trials["refusal_rate"] == 0).sum())


def study_objectives(study: Any) -> list[str]:
    names = study.user_attrs.get("objectives") or study.user_attrs.get("fingerprint_inputs", {}).get(
        "objectives"
    )
    n = len(study.directions)
    names = list(names or DEFAULT_OBJECTIVES)[:n]
    return names + [f"objective_{i}" for i in range(len(names), n)]


def load_study(path: str | Path, study_name: str, importance_seed: int = 0) -> StudyData | None:
    """Trials, Pareto front and parameter importances (fANOVA, seeded) of a study snapshot; None if absent."""
    path = Path(path)
    if not path.is_file():
        return None
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{path}")
    objectives = study_objectives(study)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    rows = []
    for trial in complete:
        row: dict[str, Any] = {"number": trial.number}
        row.update(zip(objectives, trial.values, strict=True))
        row.update({f"params_{k}": v for k, v in trial.params.items()})
        rows.append(row)
    trials = pd.DataFrame(rows, columns=None if rows else ["number", *objectives])
    n_failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
    pareto = sorted(t.number for t in study.best_trials) if complete else []
    data = StudyData(objectives, trials, n_failed, pareto)
    for index, name in enumerate(objectives):
        if len(complete) < 2:
            data.importance_notes[name] = f"needs at least 2 complete trials ({len(complete)} found)"
            continue
        if trials[name].nunique() == 1:
            data.importance_notes[name] = (
                f"the same value ({trials[name].iloc[0]:.4g}) in every trial: nothing to attribute"
            )
            continue
        try:
            importances = get_param_importances(
                study,
                evaluator=FanovaImportanceEvaluator(seed=importance_seed),
                target=lambda t, i=index: t.values[i],
            )
        # Optuna raises these for degenerate studies (one distinct value, no shared parameter); the page shows why.
        except (ValueError, RuntimeError) as error:
            data.importance_notes[name] = f"not available: {error}"
            continue
        data.importances[name] = {k: float(v) for k, v in importances.items()}
        if not importances:
            data.importance_notes[name] = "no parameter shared by all trials"
    return data


def layer_separation(payload: dict[str, Any]) -> dict[str, list[float]] | None:
    """Per-row ‖harmful mean − harmless mean‖ and cosine of the means, from metadata or from the stored means."""
    stored = payload.get("metadata", {}).get("separation")
    if stored:
        return stored
    if "harmful_mean" not in payload or "harmless_mean" not in payload:
        return None
    import torch

    harmful, harmless = payload["harmful_mean"].float(), payload["harmless_mean"].float()
    cosine = torch.nn.functional.cosine_similarity(harmful, harmless, dim=-1)
    return {"difference_norm": (harmful - harmless).norm(dim=-1).tolist(), "means_cosine": cosine.tolist()}


def load_directions(path: str | Path) -> dict[str, Any] | None:
    """Metadata and per-layer separation of a directions.pt (plain tensors, read with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        return None
    import torch

    payload = torch.load(path, map_location="cpu", weights_only=True)
    directions = payload.get("directions")
    return {
        "metadata": payload.get("metadata", {}),
        "separation": layer_separation(payload),
        "n_rows": int(directions.shape[0]) if directions is not None else None,
    }


def _verdict(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    return None


def load_samples(
    results: Path, instance: str, stages: list[str], n_per_set: int
) -> dict[str, list[dict[str, Any]]]:
    """A few held-out prompts per set with the base and each stage's response and refusal verdict.

    Harmful prompts the base model refused come first (those show what the edit changed); order is the file order, so
    the choice is deterministic. Returns {set: [{prompt, category, responses: {stage: {text, is_refusal}}}]}."""
    frames = {"base": read_csv(results / "eval" / "base" / "refusals.csv", keep_default_na=False)}
    for stage in stages:
        frames[stage] = read_csv(results / "eval" / instance / stage / "refusals.csv", keep_default_na=False)
    base = frames["base"]
    if base is None or not {"prompt_id", "set", "prompt", "response"} <= set(base.columns):
        return {}
    lookup = {
        stage: {(str(r["set"]), str(r["prompt_id"])): r for r in frame.to_dict("records")}
        for stage, frame in frames.items()
        if frame is not None and {"prompt_id", "set", "response"} <= set(frame.columns)
    }
    samples: dict[str, list[dict[str, Any]]] = {}
    for set_name in SAMPLE_SETS:
        rows = [r for r in base.to_dict("records") if str(r["set"]) == set_name]
        if not rows:
            continue
        if set_name == "harmful":
            rows.sort(key=lambda r: _verdict(r.get("is_refusal")) is not True)  # stable: refused first
        chosen = []
        for row in rows[:n_per_set]:
            key = (set_name, str(row["prompt_id"]))
            responses = {}
            for stage in ["base", *stages]:
                match = lookup.get(stage, {}).get(key)
                responses[stage] = (
                    None
                    if match is None
                    else {"text": str(match["response"]), "is_refusal": _verdict(match.get("is_refusal"))}
                )
            chosen.append(
                {
                    "prompt_id": str(row["prompt_id"]),
                    "prompt": str(row["prompt"]),
                    "category": str(row.get("category", "")),
                    "responses": responses,
                }
            )
        samples[set_name] = chosen
    return samples


def paired_kl_change(
    results: Path, instance: str, before: str = "ablated", after: str = "healed"
) -> dict[str, Any] | None:
    """The per-prompt first-token KL (refusals.csv, harmless rows) of two stages of a variant on the same prompts:
    means, the mean change (after - before) with a seeded paired bootstrap 95 % interval, on how many prompts `after`
    is lower, and the median per prompt. None when either file lacks the per-prompt KL."""
    columns = []
    for stage in (before, after):
        frame = read_csv(results / "eval" / instance / stage / "refusals.csv", keep_default_na=False)
        if frame is None or "kl_divergence" not in frame.columns:
            return None
        harmless = frame[frame["set"].astype(str) == "harmless"]
        values = pd.to_numeric(harmless["kl_divergence"], errors="coerce")
        columns.append(pd.Series(values.to_numpy(), index=harmless["prompt_id"].astype(str), name=stage))
    joined = pd.concat(columns, axis=1, join="inner").dropna()
    if joined.empty:
        return None
    change = joined[after] - joined[before]
    lo, hi = bootstrap_interval(change.tolist())
    return {
        "n": len(joined),
        "before": float(joined[before].mean()),
        "after": float(joined[after].mean()),
        "change": float(change.mean()),
        "ci95": [lo, hi],
        "lower": int((change < 0).sum()),
        "median_before": float(joined[before].median()),
        "median_after": float(joined[after].median()),
    }


def load_benchmarks(benchmarks_dir: str | Path) -> list[dict[str, Any]]:
    """One row per Snakemake benchmark file: rule, job, wall seconds (mean over repeats), peak RSS (MB)."""
    root = Path(benchmarks_dir)
    rows = []
    for path in sorted(root.glob("**/*.tsv")):
        frame = read_csv(path, sep="\t")
        if frame is None or "s" not in frame.columns:
            continue
        relative = path.relative_to(root)
        rows.append(
            {
                "rule": relative.parts[0] if len(relative.parts) > 1 else relative.stem,
                "job": str(relative.with_suffix("")),
                "seconds": finite_or_none(frame["s"].mean()),
                "max_rss_mb": finite_or_none(frame["max_rss"].max()) if "max_rss" in frame.columns else None,
            }
        )
    return rows


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _git_commit(cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment(workdir: str | Path = ".") -> dict[str, Any]:
    """Package versions, Python, the machine (CPU model and cores, GPUs) and the git commit of the workflow."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    gpus: list[str] = []
    if "torch" in sys.modules or versions["torch"] != "not installed":
        import torch

        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "versions": versions,
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "gpus": gpus,
        "platform": platform.platform(),
        "hostname": platform.node(),
        "git_commit": _git_commit(Path(workdir)),
    }
