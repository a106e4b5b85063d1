"""tools/compare_runs.py: figures compared by content, times and paths ignored."""

from __future__ import annotations

import importlib.util
import json

import torch
from conftest import REPO

spec = importlib.util.spec_from_file_location("compare_runs", REPO / "tools" / "compare_runs.py")
compare_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_runs)


def tree(root, kl, seconds, weights, extra=None):
    (root / "eval" / "base").mkdir(parents=True)
    (root / "eval" / "base" / "metrics.json").write_text(
        json.dumps(
            {
                "kl": kl,
                "seconds": seconds,
                "train_seconds": seconds,
                "peak_rss_mb": seconds,
                "model": str(root),
            }
        )
    )
    (root / "eval" / "base" / "refusals.csv").write_text(f"id,refused,seconds\n1,0,{seconds}\n")
    torch.save({"directions": weights, "metadata": {"seconds": seconds}}, root / "directions.pt")
    (root / "logs").mkdir()
    (root / "logs" / "x.log").write_text(str(seconds))
    for name, text in (extra or {}).items():
        (root / name).write_text(text)


def test_times_and_paths_are_ignored_figures_are_not(tmp_path, capsys):
    weights = torch.randn(3, 4)
    tree(tmp_path / "a", 0.1, 1.0, weights)
    tree(tmp_path / "b", 0.1, 2.0, weights.clone())
    assert compare_runs.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "0 difference(s)" in capsys.readouterr().out
    tree(tmp_path / "c", 0.2, 1.0, weights + 1e-7, extra={"only.csv": "x"})
    assert compare_runs.main([str(tmp_path / "a"), str(tmp_path / "c")]) == 1
    out = capsys.readouterr().out
    assert "differs: eval/base/metrics.json" in out and "differs: directions.pt" in out
    assert f"only in {tmp_path / 'c'}: only.csv" in out and "refusals.csv" not in out
