"""Stage `report`: a minimal self-contained HTML summary (the full comparison report replaces it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, StrictUndefined

from bruno.io import atomic_write_text

TEMPLATE = """<!doctype html><html><head><meta charset="utf-8"><title>Bruno report</title></head><body>
<h1>Abliteration report</h1><p>Model: {{ model }}</p>
<table border="1"><tr><th>stage</th><th>harmful refusal</th><th>harmless refusal</th><th>KL</th></tr>
{% for row in rows %}<tr><td>{{ row.stage }}</td><td>{{ row.harmful }}</td><td>{{ row.harmless }}</td><td>{{ row.kl }}</td></tr>
{% endfor %}</table></body></html>"""


def _fmt(metric: dict[str, Any]) -> str:
    if metric.get("value") is None:
        return "n/a"
    lo, hi = metric["ci95"]
    return f"{metric['value']:.3f} [{lo:.3f}, {hi:.3f}] (n={metric['n']})"


def run(
    base_metrics: str, variants: list[str], stages: list[str], config: dict[str, Any], out_path: str | Path
) -> None:
    paths = [("base", Path(base_metrics))] + [
        (f"{v}/{s}", Path(f"results/eval/{v}/{s}/metrics.json")) for v in variants for s in stages
    ]
    rows = []
    for stage, path in paths:
        m = json.loads(path.read_text(encoding="utf-8"))
        rows.append(
            {
                "stage": stage,
                "harmful": _fmt(m["refusal_rate_harmful"]),
                "harmless": _fmt(m["refusal_rate_harmless"]),
                "kl": _fmt(m["kl_divergence"]),
            }
        )
    env = Environment(autoescape=True, undefined=StrictUndefined)
    atomic_write_text(out_path, env.from_string(TEMPLATE).render(model=config["model"]["name"], rows=rows))
