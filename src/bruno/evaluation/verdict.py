"""A refusal detector's verdict on one reply (shared by the marker and the neural detectors)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    is_refusal: bool
    detector: str  # which detector decided: empty, markers, soft_markers, evasive_patterns, neural, nli
    matched: str = ""  # the marker, pattern or label (with its probability) that decided, for inspection
