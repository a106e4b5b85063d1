"""Stage seeds are derived in one place, `bruno.config.stage_seed`: a section's own `seed`, else the master seed, plus the
replicate index. The pinned values were computed with the code before the derivation moved there (rules/common.smk's
`variant_seed`, rules/safety.smk, jobs/heal.py, the report's seed table, `expand_replicates`), so no run's seeds and
results change."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bruno.config import expand_replicates, stage_seed
from bruno.report.render import ReportInputs, seeds

REPO = Path(__file__).resolve().parents[1]

# (master seed, search.seed, healing.seed) -> {instance: (search seed, healing seed)} with replicates: 3
PINNED = [
    ((0, None, None), {"a": (0, 0), "a_rep1": (1, 1), "a_rep2": (2, 2)}),
    ((7, None, 40), {"a": (7, 40), "a_rep1": (8, 41), "a_rep2": (9, 42)}),
    ((123, 5, None), {"a": (5, 123), "a_rep1": (6, 124), "a_rep2": (7, 125)}),
    ((3, 0, 0), {"a": (0, 0), "a_rep1": (1, 1), "a_rep2": (2, 2)}),  # an explicit 0 is a seed, not "unset"
]


@pytest.mark.parametrize(("seeds_in", "expected"), PINNED)
def test_stage_seeds_of_replicates_are_pinned(seeds_in, expected):
    master, search_seed, healing_seed = seeds_in
    variants = {
        "a": {
            "search": {"seed": search_seed},
            "healing": {"seed": healing_seed, "enable_post_abliteration_finetuning": True},
        }
    }
    origin = expand_replicates(variants, 3, master)
    derived = {
        instance: (stage_seed(v["search"]["seed"], master), stage_seed(v["healing"]["seed"], master))
        for instance, v in variants.items()
    }
    assert derived == expected
    config = {"seed": master, "model": {"name": "x"}}
    rows = seeds(ReportInputs(Path("."), Path("."), config, variants, {}, origin))["rows"]
    assert {row["instance"]: (row["search"], row["healing"]) for row in rows} == expected


def test_stage_seed():
    assert stage_seed(None, 7) == 7
    assert stage_seed(0, 7) == 0
    assert stage_seed(5, 7, replicate=2) == 7
    assert stage_seed(None, 7, replicate=2) == 9


def test_no_other_place_derives_a_stage_seed():
    """The fallback `seed if seed is not None else master` is written only in bruno.config.stage_seed."""
    pattern = re.compile(r"seed\b[^\n]*\bis (not )?None\b[^\n]*\belse\b")
    files = [REPO / "Snakefile", *(REPO / "rules").glob("*.smk")]
    files += [p for d in ("src", "scripts", "tools") for p in (REPO / d).rglob("*.py")]
    found = [
        f"{path.relative_to(REPO)}:{number}"
        for path in files
        if path != REPO / "src" / "bruno" / "config.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, f"derive stage seeds with bruno.config.stage_seed: {found}"
