"""Stage `prompts`: resolve the configured prompt sets into results/prompts/{set}_{split}.jsonl plus a manifest.

The borderline-but-benign set (`evaluation.borderline`) is test-only: results/prompts/borderline_test.jsonl."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bruno.io import atomic_write_json
from bruno.prompts import SPLITS, manifest_entry, resolve_prompt_set, resolve_test_only_set, write_prompts

log = logging.getLogger(__name__)


def run(
    data: Mapping[str, Any],
    out_dir: str | Path,
    manifest_path: str | Path,
    borderline: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    out_dir = Path(out_dir)
    resolved = {name: resolve_prompt_set(name, spec) for name, spec in data.items() if spec is not None}
    manifest: dict[str, Any] = {}
    for name, splits in resolved.items():
        manifest[name] = {}
        for split in SPLITS:
            write_prompts(out_dir / f"{name}_{split}.jsonl", splits[split])
            manifest[name][split] = manifest_entry(splits[split], data[name][split])
            log.info("%s/%s: %d prompts", name, split, len(splits[split]))
    if borderline:
        prompts = resolve_test_only_set("borderline", borderline, resolved)
        write_prompts(out_dir / "borderline_test.jsonl", prompts)
        manifest["borderline"] = {"test": manifest_entry(prompts, borderline)}
        log.info("borderline/test: %d prompts", len(prompts))
    atomic_write_json(manifest_path, manifest)
    return manifest
