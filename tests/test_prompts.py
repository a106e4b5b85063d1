"""Prompt loading from local files and datasets, and the checks on splits."""

from __future__ import annotations

import json

import pytest

from bruno.errors import BrunoError
from bruno.io import read_jsonl
from bruno.prompts import load_source, resolve_prompt_set


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def shipped(tmp_path):
    rows = [
        {"id": f"p{i}", "text": f"prompt {i}", "split": ["train", "val", "test"][i % 3], "category": "c"}
        for i in range(9)
    ]
    return write_jsonl(tmp_path / "set.jsonl", rows)


def spec_for(path):
    return {s: {"path": str(path), "record_split": s} for s in ("train", "val", "test")}


def test_shipped_jsonl_splits(shipped):
    splits = resolve_prompt_set("harmful", spec_for(shipped))
    assert [len(splits[s]) for s in ("train", "val", "test")] == [3, 3, 3]
    assert splits["train"][0].category == "c"


def test_text_and_csv_sources(tmp_path):
    (tmp_path / "p.txt").write_text("first prompt\n\nsecond prompt\n")
    assert [p.text for p in load_source({"path": str(tmp_path / "p.txt")}, "train", "x")] == [
        "first prompt",
        "second prompt",
    ]
    (tmp_path / "p.csv").write_text("goal,kind\nsteal a car,theft\nbake bread,cooking\n")
    prompts = load_source(
        {"path": str(tmp_path / "p.csv"), "column": "goal", "category_column": "kind", "limit": 1}, "val", "x"
    )
    assert [(p.text, p.category) for p in prompts] == [("steal a car", "theft")]


def test_datasets_saved_to_disk(tmp_path):
    import datasets

    ds = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(10)]}),
            "test": datasets.Dataset.from_dict({"text": ["a", "b"]}),
        }
    )
    ds.save_to_disk(str(tmp_path / "ds"))
    prompts = load_source({"dataset": str(tmp_path / "ds"), "split": "train[2:5]"}, "train", "x")
    assert [p.text for p in prompts] == ["t2", "t3", "t4"]


def test_unreachable_hub_dataset_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BrunoError, match="(?i)local copy"):
        load_source({"dataset": "no-such-user/no-such-dataset-xyz", "split": "train"}, "train", "harmful")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(BrunoError, match="missing.jsonl"):
        load_source({"path": str(tmp_path / "missing.jsonl")}, "train", "harmful")


def test_malformed_line_reports_line_number(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": broken}\n')
    with pytest.raises(BrunoError, match="line 2"):
        read_jsonl(path)


def test_empty_split_is_an_error(shipped, tmp_path):
    spec = spec_for(shipped)
    spec["val"] = {"path": str(shipped), "record_split": "nonexistent"}
    with pytest.raises(BrunoError, match="data.harmful.val.*empty"):
        resolve_prompt_set("harmful", spec)


def test_overlapping_splits_are_an_error(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "Same Prompt"}, {"text": "other"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "same   prompt"}])
    c = write_jsonl(tmp_path / "c.jsonl", [{"text": "third"}])
    with pytest.raises(BrunoError, match="share 1 prompt"):
        resolve_prompt_set(
            "harmless", {"train": {"path": str(a)}, "val": {"path": str(b)}, "test": {"path": str(c)}}
        )


def test_missing_column_is_named(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "x"}])
    with pytest.raises(BrunoError, match="column 'text'"):
        load_source({"path": str(path)}, "train", "harmful")
