"""The report's figures, drawn with matplotlib (Agg) and returned as base64 PNG data URIs so the page works offline.

Every function takes already-loaded data and returns a `data:image/png;base64,...` string; a figure whose data is
absent is not drawn (the caller shows why instead).
"""

from __future__ import annotations

import base64
import functools
import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (the backend must be chosen first)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from bruno.report.load import StudyData, finite_or_none  # noqa: E402
from bruno.report.tables import MetricSpec  # noqa: E402

DPI = 100
STAGE_COLORS = {"base": "#7f7f7f", "ablated": "#1f77b4", "healed": "#2ca02c"}
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.grid": True, "grid.alpha": 0.3}


def styled(draw: Callable[..., str | None]) -> Callable[..., str | None]:
    """Draw under the report's matplotlib style without touching the global rcParams."""

    @functools.wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> str | None:
        with plt.rc_context(STYLE):
            return draw(*args, **kwargs)

    return wrapper


def to_data_uri(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _maybe_log(ax: Any, values: Sequence[float]) -> None:
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) / min(positive) > 100:
        ax.set_yscale("log")


@styled
def pareto_plot(study: StudyData, best_number: int | None, max_refusal_rate: float | None) -> str | None:
    """All trials (KL vs refusal rate on the validation prompts), the Pareto front, the chosen trial."""
    trials = study.trials
    if trials.empty or not {"kl_divergence", "refusal_rate"} <= set(trials.columns):
        return None
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    ax.scatter(100 * trials["refusal_rate"], trials["kl_divergence"], s=14, alpha=0.5, color="#1f77b4",
               label=f"trials (n={len(trials)})")  # fmt: skip
    front = trials[trials["number"].isin(study.pareto)].sort_values(["refusal_rate", "kl_divergence"])
    if len(front):
        ax.step(100 * front["refusal_rate"], front["kl_divergence"], where="post", color="#ff7f0e", lw=1.5,
                marker="o", ms=4, label="Pareto front")  # fmt: skip
    if max_refusal_rate is not None:
        ax.axvline(100 * max_refusal_rate, color="#7f7f7f", ls="--", lw=1,
                   label=f"max_refusal_rate {100 * max_refusal_rate:g} %")  # fmt: skip
    chosen = trials[trials["number"] == best_number]
    if len(chosen):
        ax.scatter(100 * chosen["refusal_rate"], chosen["kl_divergence"], marker="*", s=220, color="#d62728",
                   edgecolor="black", zorder=5, label=f"chosen trial #{best_number}")  # fmt: skip
    _maybe_log(ax, trials["kl_divergence"].tolist())
    ax.set_xlabel("refusal rate on harmful val prompts (%)")
    ax.set_ylabel("KL vs base (harmless val)")
    ax.set_title("Search: all trials and Pareto front")
    ax.legend(fontsize=7, loc="best")
    return to_data_uri(fig)


@styled
def history_plot(study: StudyData, best_number: int | None) -> str | None:
    """Objective values over trials, with the running best of each."""
    trials = study.trials.sort_values("number")
    objectives = [o for o in study.objectives if o in trials.columns]
    if trials.empty or not objectives:
        return None
    fig, axes = plt.subplots(len(objectives), 1, figsize=(6.0, 1.6 + 1.3 * len(objectives)), sharex=True)
    axes = [axes] if len(objectives) == 1 else list(axes)
    for ax, name in zip(axes, objectives, strict=True):
        values = trials[name]
        ax.plot(trials["number"], values, "o", ms=3, alpha=0.6, color="#1f77b4", label=name)
        ax.plot(trials["number"], values.cummin(), color="#ff7f0e", lw=1.2, label="running best")
        if best_number is not None and best_number in set(trials["number"]):
            ax.axvline(best_number, color="#d62728", ls=":", lw=1.2, label=f"chosen #{best_number}")
        if name == "kl_divergence":
            _maybe_log(ax, values.tolist())
        ax.set_ylabel(name.replace("_", " "), fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("trial number")
    axes[0].set_title("Trial history (objectives, minimised)")
    return to_data_uri(fig)


@styled
def kernel_plot(layer_weights: Mapping[str, Sequence[float]]) -> str | None:
    """The chosen per-layer ablation weight of each component."""
    if not layer_weights:
        return None
    fig, ax = plt.subplots(figsize=(6.0, 3.0))
    # distinct markers and dashes: components often share the same kernel and would hide each other
    styles = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-.")]
    for index, (component, weights) in enumerate(layer_weights.items()):
        marker, dashes = styles[index % len(styles)]
        ax.plot(range(len(weights)), weights, marker=marker, ls=dashes, ms=5 - index % 2, label=component)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("ablation weight")
    ax.set_title("Chosen per-layer weight kernel")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    return to_data_uri(fig)


@styled
def separation_plot(separation: Mapping[str, Sequence[float]] | None) -> str | None:
    """Per-row ‖harmful mean − harmless mean‖ (the raw direction norm) and the cosine of the two means."""
    if not separation or not separation.get("difference_norm"):
        return None
    norms = list(separation["difference_norm"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.0, 2.8))
    left.bar(range(len(norms)), norms, color="#9467bd")
    left.set_title("‖mean harmful − mean harmless‖")
    left.set_xlabel("hidden-state row (0 = embeddings)")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    cosine = separation.get("means_cosine") or []
    if cosine:
        right.plot(range(len(cosine)), cosine, marker="o", ms=4, color="#8c564b")
    right.set_title("cosine(mean harmful, mean harmless)")
    right.set_xlabel("hidden-state row (0 = embeddings)")
    fig.tight_layout()
    return to_data_uri(fig)


@styled
def verdict_bars(
    models: Sequence[tuple[str, str, Mapping[str, Any] | None]], specs: Sequence[MetricSpec]
) -> str | None:
    """Grouped bars across models (base and each variant's stages) for every verdict metric, with 95 % intervals.

    `models`: (label, stage, metrics) in display order."""
    present = [s for s in specs if any(_value(m, s.key) is not None for _, _, m in models)]
    if not present:
        return None
    columns = min(4, len(present))
    rows = math.ceil(len(present) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 2.6 * rows), squeeze=False)
    for ax in axes.flat[len(present) :]:
        ax.set_visible(False)
    for ax, spec in zip(axes.flat, present, strict=False):
        scale = 100 if spec.percent else 1
        for i, (_label, stage, metrics) in enumerate(models):
            value = _value(metrics, spec.key)
            if value is None:
                ax.text(i, 0, "—", ha="center", va="bottom", fontsize=8, color="#7f7f7f")
                continue
            lo, hi = _interval(metrics, spec.key)
            err = None
            if lo is not None and hi is not None:
                err = [[max(0.0, value - lo) * scale], [max(0.0, hi - value) * scale]]
            ax.bar(i, value * scale, yerr=err, capsize=3, color=STAGE_COLORS.get(stage, "#17becf"), width=0.7)
        ax.set_xticks(
            range(len(models)), [label for label, _, _ in models], rotation=35, ha="right", fontsize=7
        )
        ax.set_title(spec.label + (" (%)" if spec.percent else ""), fontsize=9)
    fig.tight_layout()
    return to_data_uri(fig)


@styled
def heal_plot(log: Any) -> str | None:
    """DPO training curve: loss, reward margin and accuracy, and the distillation KL where it was on, per logged step."""
    if log is None or log.empty or "step" not in log.columns:
        return None
    series = [
        c
        for c in ("loss", "reward_margin", "reward_accuracy", "distill_kl")
        if c in log.columns and log[c].notna().any()
    ]
    if not series:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(3.0 * len(series), 2.6), squeeze=False)
    for ax, column in zip(axes.flat, series, strict=True):
        data = log[["step", column]].dropna()
        ax.plot(data["step"], data[column], marker="o", ms=3, color="#2ca02c")
        ax.set_title(column.replace("_", " "))
        ax.set_xlabel("step")
    fig.tight_layout()
    return to_data_uri(fig)


def _value(metrics: Mapping[str, Any] | None, key: str) -> float | None:
    entry = (metrics or {}).get(key)
    return finite_or_none(entry.get("value")) if isinstance(entry, Mapping) else None


def _interval(metrics: Mapping[str, Any] | None, key: str) -> tuple[float | None, float | None]:
    entry = (metrics or {}).get(key) or {}
    lo, hi = (list(entry.get("ci95") or []) + [None, None])[:2]
    return finite_or_none(lo), finite_or_none(hi)
