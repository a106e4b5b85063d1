"""The ready configs in config/examples/: valid against the schema, sensible splits, and a DAG that builds offline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from workflow_rules import REPO, dry_run

from bruno.config import load_config, resolve_variants

EXAMPLES = sorted((REPO / "config" / "examples").glob("*.yaml"))
HUB_PROMPTS = {"harmful": "mlabonne/harmful_behaviors", "harmless": "mlabonne/harmless_alpaca"}
_SLICE = re.compile(r"^(\w+)\[(\d*):(\d*)\]$")


def test_there_are_examples_for_a_24gb_and_an_80gb_gpu():
    names = [p.name for p in EXAMPLES]
    assert any("24gb" in n for n in names) and any("80gb" in n for n in names), names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates_and_uses_the_hub_prompt_sets(path: Path):
    config = load_config(path)
    assert resolve_variants(config)
    assert config["model"]["name"] != "organism"
    for set_name, dataset in HUB_PROMPTS.items():
        sources = config["data"][set_name]
        assert {s["dataset"] for s in sources.values()} == {dataset}, (set_name, sources)


def _rows(split: str) -> tuple[str, range]:
    match = _SLICE.match(split.replace(" ", ""))
    assert match, f"split '{split}' is not of the form name[a:b]"
    start, stop = int(match[2] or 0), int(match[3] or 10**9)
    return match[1], range(start, stop)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_splits_do_not_overlap(path: Path):
    """train / val / test of a prompt set never share rows (same dataset and base split: disjoint slices)."""
    config = load_config(path)
    for set_name, sources in config["data"].items():
        taken: dict[tuple, list[tuple[str, range]]] = {}
        for split, source in sources.items():
            base, rows = _rows(source["split"])
            key = (source["dataset"], source.get("config"), base)
            for other, other_rows in taken.get(key, []):
                overlap = range(max(rows.start, other_rows.start), min(rows.stop, other_rows.stop))
                assert not overlap, f"{path.name}: data.{set_name}.{split} overlaps data.{set_name}.{other}"
            taken.setdefault(key, []).append((split, rows))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_dag_builds_without_touching_the_hub(path: Path, tmp_path: Path):
    """The dry run plans every stage and loads no dataset: nothing is written to the (empty) HF cache."""
    hf_home = tmp_path / "hf"
    offline = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    run = dry_run(tmp_path, "--cores", "1", "--configfile", str(path), env=offline)
    n_variants = len(load_config(path)["variants"])
    for rule in ("prompts", "evaluate_base", "report"):
        assert run.jobs.get(rule) == 1, (rule, run.jobs)
    for rule in ("optimize", "select", "abliterate"):
        assert run.jobs.get(rule) == n_variants, (rule, run.jobs)
    # each variant's directions: computed, or copied from a variant with the same directions settings
    assert run.jobs.get("directions", 0) + run.jobs.get("share_directions", 0) == n_variants, run.jobs
    assert "organism" not in run.jobs
    assert not hf_home.exists() or not any(hf_home.rglob("*")), "the dry run wrote to the Hugging Face cache"
