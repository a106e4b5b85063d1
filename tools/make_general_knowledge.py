"""Write the general-knowledge sets for real models: data/eval/general_knowledge_mc.jsonl (multiple choice, the
capability evaluation) and data/eval/general_facts_qa.jsonl (real factual questions with gold answers, the
hallucination evaluation).

The items are hand-written facts (tools/general_knowledge/<subject>.py: question, the right answer, three wrong ones;
tools/general_knowledge/facts.py: question and gold answer); this script only lays them out reproducibly. Multiple
choice: per subject a seeded order, the first 16 items train (few-shot examples), the next 16 val (the search's
capability objective), the rest test (the report); within each split the gold letters are a seeded, exactly balanced
permutation of A-D and the wrong answers are placed in seeded order. Factual questions: a seeded order, a third of
the common and a third of the obscure facts val (the search's hallucination objective), the rest test; records as
data/eval/factual_qa.jsonl ({id, question, answer, known, split, relation, entity}; `known` = common knowledge).

    .venv/bin/python tools/make_general_knowledge.py            # rewrite the file
    .venv/bin/python tools/make_general_knowledge.py --check    # exit 1 if the committed file differs
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ITEMS_DIR = Path(__file__).resolve().parent / "general_knowledge"
OUTPUT = REPO / "data" / "eval" / "general_knowledge_mc.jsonl"
FACTS_OUTPUT = REPO / "data" / "eval" / "general_facts_qa.jsonl"
SUBJECTS = {  # subject (as prompts name it, "_" read as a space) -> item module
    "everyday_science": "science",
    "geography": "geography",
    "objects_animals_food": "everyday",
    "arithmetic": "arithmetic",
    "language": "language",
}
SPLIT_SIZES = (("train", 16), ("val", 16))  # per subject; the rest is test
LETTERS = "ABCD"
SEED = 19


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"general_knowledge_{name}", ITEMS_DIR / f"{name}.py")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def items(module: str) -> list[tuple[str, str, str, str, str]]:
    return list(_module(module).ITEMS)


def fact_records(seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    facts = list(_module("facts").FACTS)
    rng.shuffle(facts)
    seen = {True: 0, False: 0}
    out = []
    for index, (relation, entity, question, answer, common) in enumerate(facts):
        split = "val" if seen[common] % 3 == 0 else "test"
        seen[common] += 1
        out.append({"id": f"gf-{index:03d}", "question": question, "answer": answer, "known": common,
                    "split": split, "relation": relation, "entity": entity})  # fmt: skip
    return out


def records(seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    by_split: dict[str, list[tuple[str, tuple]]] = {"train": [], "val": [], "test": []}
    for subject, module in SUBJECTS.items():
        ordered = items(module)
        rng.shuffle(ordered)
        start = 0
        for split, size in SPLIT_SIZES:
            by_split[split] += [(subject, item) for item in ordered[start : start + size]]
            start += size
        by_split["test"] += [(subject, item) for item in ordered[start:]]
    out = []
    for split, entries in by_split.items():
        positions = [k % len(LETTERS) for k in range(len(entries))]
        rng.shuffle(positions)
        counters: dict[str, int] = {}
        for (subject, (question, right, *wrong)), position in zip(entries, positions, strict=True):
            wrong = list(wrong)
            rng.shuffle(wrong)
            choices = wrong[:position] + [right] + wrong[position:]
            index = counters[subject] = counters.get(subject, -1) + 1
            out.append(
                {
                    "id": f"gk-{subject}-{split}-{index:04d}",
                    "subject": subject,
                    "question": question,
                    "choices": choices,
                    "answer": LETTERS[position],
                    "split": split,
                }
            )
    return out


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed file instead of writing"
    )
    args = parser.parse_args()
    stale = 0
    for path, rows in ((OUTPUT, records()), (FACTS_OUTPUT, fact_records())):
        text = render(rows)
        if args.check:
            same = path.exists() and path.read_text(encoding="utf-8") == text
            print(f"{path.relative_to(REPO)}: {'up to date' if same else 'STALE (run without --check)'}")
            stale += not same
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(REPO)} ({len(rows)} items)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
