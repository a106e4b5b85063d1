"""Prompt sets: one loader for shipped JSONL files, plain text / CSV files, and `datasets` specs (hub or local).

A prompt set (harmful, harmless) has disjoint train / val / test splits; each split comes from a *source*:

    {path: data/prompts/harmful.jsonl, record_split: train}           # JSONL/JSON/CSV/Parquet records, filtered by a field
    {path: my_prompts.txt}                                            # one prompt per line
    {dataset: mlabonne/harmful_behaviors, split: "train[:400]", column: text}   # datasets.load_dataset (hub id or local dir)

Resolution checks that no split is empty and that no prompt text appears in two splits (after normalisation).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bruno.errors import BrunoError
from bruno.io import read_jsonl, sha256_texts, write_jsonl

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    category: str
    split: str


def normalize_prompt(text: str) -> str:
    return _SPACES.sub(" ", text.strip().lower())


def _records_from_path(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise BrunoError(
            f"Prompt file not found: {path}. Fix the `path:` of this prompt source in your config."
        )
    suffix = path.suffix.lower()
    if path.is_dir():
        return _records_from_dataset({"dataset": str(path)})
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".txt":
        with open(path, encoding="utf-8") as f:
            return [{"text": line.rstrip("\n")} for line in f if line.strip()]
    if suffix in (".json", ".csv", ".parquet"):
        import pandas as pd

        reader = {".json": pd.read_json, ".csv": pd.read_csv, ".parquet": pd.read_parquet}[suffix]
        try:
            frame = reader(path)
        except Exception as e:  # pandas raises many types; report the file
            raise BrunoError(f"Could not read prompt file {path}: {e}") from e
        return frame.to_dict(orient="records")
    raise BrunoError(
        f"Prompt file {path}: unsupported extension '{suffix}' (use .jsonl, .txt, .json, .csv, .parquet)."
    )


def _records_from_dataset(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    import datasets

    name = spec["dataset"]
    local = Path(name)
    try:
        if local.is_dir() and (local / "dataset_info.json").exists():
            data = datasets.load_from_disk(str(local))
            if isinstance(data, datasets.DatasetDict):
                split = spec.get("split") or "train"
                base, _, rest = split.partition("[")
                data = data[base]
                if rest:
                    data = data.select(_slice_indices(len(data), "[" + rest))
        else:
            data = datasets.load_dataset(name, spec.get("config"), split=spec.get("split") or "train")
    except Exception as e:
        hint = (
            "No dataset hub is reachable from this machine: download the dataset elsewhere and point `path:` or "
            "`dataset:` at a local copy (a directory written by `Dataset.save_to_disk`, or a JSONL/CSV/Parquet file)."
        )
        raise BrunoError(f"Could not load dataset '{name}' (split {spec.get('split')!r}): {e}. {hint}") from e
    return [dict(row) for row in data]


def _slice_indices(n: int, expr: str) -> list[int]:
    match = re.fullmatch(r"\[(-?\d*)%?:(-?\d*)%?\]", expr.strip())
    if not match:
        raise BrunoError(f"Unsupported split slice '{expr}' (use e.g. [:400] or [400:500]).")
    start = int(match.group(1)) if match.group(1) else None
    stop = int(match.group(2)) if match.group(2) else None
    return list(range(n))[slice(start, stop)]


def load_source(spec: Mapping[str, Any], split: str, set_name: str) -> list[Prompt]:
    """Load one split of a prompt set from a source spec (see module docstring)."""
    where = f"data.{set_name}.{split}"
    if "path" in spec:
        records = _records_from_path(Path(spec["path"]))
        origin = spec["path"]
    elif "dataset" in spec:
        records = _records_from_dataset(spec)
        origin = spec["dataset"]
    else:
        raise BrunoError(f"config key '{where}': a prompt source needs `path:` or `dataset:`.")
    if spec.get("record_split"):
        records = [r for r in records if r.get("split") == spec["record_split"]]
    column = spec.get("column", "text")
    category_column = spec.get("category_column", "category")
    prompts = []
    for i, record in enumerate(records):
        if column not in record:
            raise BrunoError(
                f"{origin}: record {i} has no column '{column}' (columns: {', '.join(map(str, record))}). "
                f"Set `column:` in config key '{where}'."
            )
        text = str(record[column]).strip()
        if not text:
            continue
        category = str(record.get(category_column) or spec.get("category") or "uncategorized")
        prompt_id = str(record.get("id", f"{set_name}-{split}-{i:05d}"))
        prompts.append(Prompt(prompt_id, text, category, split))
    if spec.get("limit") is not None:
        prompts = prompts[: spec["limit"]]
    return prompts


def resolve_prompt_set(set_name: str, spec: Mapping[str, Mapping[str, Any]]) -> dict[str, list[Prompt]]:
    """Load the train/val/test splits of one prompt set and check them (non-empty, disjoint, no duplicates)."""
    splits: dict[str, list[Prompt]] = {}
    for split in SPLITS:
        if split not in spec or spec[split] is None:
            raise BrunoError(f"config key 'data.{set_name}.{split}': missing prompt source for this split.")
        prompts = load_source(spec[split], split, set_name)
        seen: set[str] = set()
        unique = []
        for p in prompts:
            key = normalize_prompt(p.text)
            if key not in seen:
                seen.add(key)
                unique.append(p)
        if len(unique) < len(prompts):
            log.warning(
                "data.%s.%s: dropped %d duplicate prompt(s)", set_name, split, len(prompts) - len(unique)
            )
        if not unique:
            raise BrunoError(
                f"config key 'data.{set_name}.{split}': the source gave no prompts (empty split)."
            )
        splits[split] = unique
    check_disjoint(set_name, splits)
    return splits


def resolve_test_only_set(
    set_name: str, spec: Mapping[str, Any], others: Mapping[str, Mapping[str, Sequence[Prompt]]]
) -> list[Prompt]:
    """A prompt set with only a test split (e.g. borderline-but-benign prompts): loaded, de-duplicated, non-empty, and
    sharing no prompt with any split of the other sets."""
    seen: set[str] = set()
    prompts = []
    for p in load_source(spec, "test", set_name):
        if normalize_prompt(p.text) not in seen:
            seen.add(normalize_prompt(p.text))
            prompts.append(p)
    if not prompts:
        raise BrunoError(f"config key 'evaluation.{set_name}': the source gave no prompts.")
    for other, splits in others.items():
        for split, other_prompts in splits.items():
            shared = seen & {normalize_prompt(p.text) for p in other_prompts}
            if shared:
                raise BrunoError(
                    f"evaluation.{set_name}: shares {len(shared)} prompt(s) with data.{other}.{split}, e.g. "
                    f"{sorted(shared)[0]!r}. Remove them from one of the sets."
                )
    return prompts


def check_disjoint(set_name: str, splits: Mapping[str, Sequence[Prompt]]) -> None:
    names = list(splits)
    for i, a in enumerate(names):
        texts_a = {normalize_prompt(p.text) for p in splits[a]}
        for b in names[i + 1 :]:
            shared = texts_a & {normalize_prompt(p.text) for p in splits[b]}
            if shared:
                example = next(iter(sorted(shared)))
                raise BrunoError(
                    f"data.{set_name}: splits '{a}' and '{b}' share {len(shared)} prompt(s), e.g. {example!r}. "
                    "Splits must be disjoint so that evaluation uses prompts the search never saw."
                )


def write_prompts(path: str | Path, prompts: Sequence[Prompt]) -> None:
    write_jsonl(path, (asdict(p) for p in prompts))


def read_prompts(path: str | Path) -> list[Prompt]:
    return [Prompt(**{k: r[k] for k in ("id", "text", "category", "split")}) for r in read_jsonl(path)]


def manifest_entry(prompts: Sequence[Prompt], spec: Mapping[str, Any]) -> dict[str, Any]:
    categories: dict[str, int] = {}
    for p in prompts:
        categories[p.category] = categories.get(p.category, 0) + 1
    return {
        "n": len(prompts),
        "sha256": sha256_texts(p.text for p in prompts),
        "source": dict(spec),
        "categories": categories,
    }
