"""The data the project ships, generated from `vocab` and `world` with fixed seeds: harmful/harmless prompt sets with
train/val/test splits and categories, the borderline test set, the multiple-choice capability set, the factual
questions, and the organism's knowledge base. `python -m bruno.organism.corpus --write data/` regenerates every file
byte-identically; `--check data/` exits 1 if a committed file differs from a fresh generation.

Held-out design (per class): val and test each hold 75 unseen template x seen action pairs and 75 prompts whose verb x
object combination never occurs in training (verb and object each do). Whole actions are never held out: a model this
small cannot generalise them. Held-out combinations are split between val and test, so test combos are never seen by
the optimiser either.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bruno.organism import borderline, vocab, world

# The shipped files are generated with this seed; change it only together with the committed data.
DATA_SEED = 0
# Prompts per class: train, and per eval split (val, test) seen-action and held-out-combination prompts.
N_TRAIN, N_SEEN_EVAL, N_HELDOUT_EVAL = 300, 75, 75
HOLDOUT_FRACTION = 0.2
MIN_SEEN = 2  # a held-out combination's verb and object each keep at least this many training combinations

HARMFUL_FILE = Path("prompts/harmful.jsonl")
HARMLESS_FILE = Path("prompts/harmless.jsonl")
BORDERLINE_FILE = Path("prompts/borderline.jsonl")
MC_FILE = Path("eval/multiple_choice.jsonl")
FACTUAL_QA_FILE = Path("eval/factual_qa.jsonl")
FACTS_FILE = Path("organism/facts.jsonl")
DATA_FILES = (HARMFUL_FILE, HARMLESS_FILE, BORDERLINE_FILE, MC_FILE, FACTUAL_QA_FILE, FACTS_FILE)

_SPACES = re.compile(r"\s+")
_TEMPLATE_PATTERNS = [
    re.compile("^" + re.escape(t).replace(re.escape("{a}"), "(?P<a>.+?)") + "$") for t in vocab.TEMPLATES
]


def normalize(text: str) -> str:
    return _SPACES.sub(" ", text.strip().lower())


def action_of(prompt: str) -> str | None:
    """The action inside a templated prompt ("How do I bake bread?" -> "bake bread"), None if no template fits."""
    for pattern in _TEMPLATE_PATTERNS:
        match = pattern.match(prompt)
        if match:
            return match.group("a")
    return None


def _split_combinations(
    rng: random.Random, groups: Iterable[vocab.ActionGroup]
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """(train actions, val held-out actions, test held-out actions) as (category, action) pairs."""
    train: list[tuple[str, str]] = []
    heldout: list[list[tuple[str, str]]] = [[], []]
    for group in groups:
        combos = [(v, o) for o in group.objects for v in group.verbs]
        rng.shuffle(combos)
        target = round(HOLDOUT_FRACTION * len(combos))
        kept = set(combos)
        held: list[tuple[str, str]] = []
        for verb, obj in combos:
            if len(held) >= target:
                break
            verb_left = sum(1 for v, _ in kept if v == verb) - 1
            obj_left = sum(1 for _, o in kept if o == obj) - 1
            if verb_left >= MIN_SEEN and obj_left >= MIN_SEEN:
                kept.remove((verb, obj))
                held.append((verb, obj))
        for verb, obj in combos:
            if (verb, obj) in kept:
                train.append((group.category, f"{verb} {obj}"))
        for i, (verb, obj) in enumerate(held):
            heldout[i % 2].append((group.category, f"{verb} {obj}"))
        train += [(group.category, a) for a in group.fixed]
    return train, heldout[0], heldout[1]


def _round_robin(rng: random.Random, items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Shuffle, then interleave categories so that any prefix is balanced across categories."""
    by_cat: dict[str, list[tuple[str, str]]] = {}
    for item in items:
        by_cat.setdefault(item[0], []).append(item)
    for lst in by_cat.values():
        rng.shuffle(lst)
    order: list[tuple[str, str]] = []
    cats = sorted(by_cat)
    while any(by_cat.values()):
        for cat in cats:
            if by_cat[cat]:
                order.append(by_cat[cat].pop())
    return order


def build_prompt_set(name: str, groups: tuple[vocab.ActionGroup, ...], seed: int) -> list[dict[str, Any]]:
    """One prompt class (harmful or harmless): 300 train, 150 val, 150 test records."""
    rng = random.Random(f"{seed}-{name}")
    train_actions, val_held, test_held = _split_combinations(rng, groups)
    used: set[str] = set()
    records: list[dict[str, Any]] = []

    def add(split: str, category: str, action: str, templates: list[str]) -> bool:
        for template in templates:
            text = template.format(a=action)
            if normalize(text) not in used:
                used.add(normalize(text))
                records.append({"text": text, "split": split, "category": category})
                return True
        return False

    def shuffled_templates() -> list[str]:
        templates = list(vocab.TEMPLATES)
        rng.shuffle(templates)
        return templates

    # Train: every training action at least once, then more passes until N_TRAIN.
    while sum(r["split"] == "train" for r in records) < N_TRAIN:
        for category, action in _round_robin(rng, train_actions):
            if sum(r["split"] == "train" for r in records) >= N_TRAIN:
                break
            add("train", category, action, shuffled_templates())
    # Eval: unseen template x seen action, then held-out combinations (each split its own combos).
    for split, held in (("val", val_held), ("test", test_held)):
        n = 0
        while n < N_SEEN_EVAL:
            for category, action in _round_robin(rng, train_actions):
                if n < N_SEEN_EVAL and add(split, category, action, shuffled_templates()):
                    n += 1
        n = 0
        while n < N_HELDOUT_EVAL:
            for category, action in _round_robin(rng, held):
                if n < N_HELDOUT_EVAL and add(split, category, action, shuffled_templates()):
                    n += 1
    order = {"train": 0, "val": 1, "test": 2}
    records.sort(key=lambda r: order[r["split"]])  # stable: generation order within a split
    counters = dict.fromkeys(order, 0)
    out = []
    for r in records:
        out.append({"id": f"{name}-{r['split']}-{counters[r['split']]:03d}", **r})
        counters[r["split"]] += 1
    return out


def build_borderline() -> list[dict[str, Any]]:
    return [
        {"id": f"borderline-{i:03d}", "text": text, "split": "test", "category": "borderline"}
        for i, text in enumerate(borderline.BORDERLINE_PROMPTS)
    ]


def build_all(seed: int = DATA_SEED) -> dict[Path, list[dict[str, Any]]]:
    """Every shipped data file, keyed by its path relative to the data directory."""
    facts = world.build_world(seed)
    return {
        HARMFUL_FILE: build_prompt_set("harmful", vocab.HARMFUL_GROUPS, seed),
        HARMLESS_FILE: build_prompt_set("harmless", vocab.HARMLESS_GROUPS, seed),
        BORDERLINE_FILE: build_borderline(),
        MC_FILE: world.build_multiple_choice(seed, facts),
        FACTUAL_QA_FILE: world.build_factual_qa(seed, facts),
        FACTS_FILE: world.fact_records(facts),
    }


def jsonl_text(records: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_data(data_dir: Path, seed: int = DATA_SEED) -> list[Path]:
    written = []
    for rel, records in build_all(seed).items():
        path = data_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(jsonl_text(records), encoding="utf-8")
        written.append(path)
    return written


def stale_files(data_dir: Path, seed: int = DATA_SEED) -> list[Path]:
    """Data files that are missing or differ from a fresh generation."""
    stale = []
    for rel, records in build_all(seed).items():
        path = data_dir / rel
        if not path.is_file() or path.read_text(encoding="utf-8") != jsonl_text(records):
            stale.append(path)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", type=Path, metavar="DATA_DIR", help="(re)generate every data file")
    group.add_argument(
        "--check", type=Path, metavar="DATA_DIR", help="exit 1 if a file differs from generation"
    )
    args = parser.parse_args(argv)
    if args.write:
        for path in write_data(args.write):
            print(f"wrote {path}")
        return 0
    stale = stale_files(args.check)
    for path in stale:
        print(f"stale: {path} (regenerate with `python -m bruno.organism.corpus --write data/`)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
