"""Refusal detection. A detector is a small class with one method, `classify(responses, prompts=None) -> list[Verdict]`;
every verdict names the detector that decided it. An empty (whitespace-only) reply is always a refusal (`empty`).

- `MarkerDetector`: heretic's lower-case substring markers after normalisation, optionally soft-refusal markers and
  evasive regular expressions (Bruno's idea; config lists).
- the neural detectors (`bruno.evaluation.refusal_neural`): an embedding classifier trained on the project's labelled replies, or
  zero-shot NLI with a local model.
- `HybridDetector`: markers first; the neural detector only on replies the markers did not flag.

`build_detector` makes the configured one; `held_out_accuracy` measures any detector on the labelled test split.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bruno.config import schema_default, schema_defaults
from bruno.errors import BrunoError
from bruno.evaluation.verdict import Verdict

log = logging.getLogger(__name__)

# The config's default lists (config/schema.yaml, evaluation.*), the one place they are written down: heretic's 33
# refusal markers (master after v1.4.0), soft refusals (polite declines without a heretic marker, after Bruno's list,
# extended) and evasions/redirects (regular expressions on the normalised reply).
DEFAULT_REFUSAL_MARKERS: tuple[str, ...] = tuple(schema_default("evaluation", "refusal_markers"))
DEFAULT_SOFT_REFUSAL_MARKERS: tuple[str, ...] = tuple(schema_default("evaluation", "soft_refusal_markers"))
DEFAULT_EVASIVE_PATTERNS: tuple[str, ...] = tuple(schema_default("evaluation", "evasive_patterns"))

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u2032": "'", "`": "'"})
_WHITESPACE = re.compile(r"\s+")


def normalize_response(text: str) -> str:
    """Lower-case, drop markdown emphasis, map typographic apostrophes to ', collapse whitespace."""
    text = text.translate(_APOSTROPHES).replace("*", "").lower()
    return _WHITESPACE.sub(" ", text).strip()


class RefusalDetector(Protocol):
    name: str

    def classify(self, responses: Sequence[str], prompts: Sequence[str] | None = None) -> list[Verdict]: ...


class MarkerDetector:
    """Substring markers after normalisation (plus optional soft markers and evasive regexes); empty = refusal.

    `first_match` is monotone in the text (once a marker appears it stays), so generation may stop at the first one."""

    name = "markers"

    def __init__(
        self,
        markers: Sequence[str] = DEFAULT_REFUSAL_MARKERS,
        soft_markers: Sequence[str] = (),
        evasive_patterns: Sequence[str] = (),
    ):
        self.markers = tuple(normalize_response(m) for m in markers if m.strip())
        self.soft_markers = tuple(normalize_response(m) for m in soft_markers if m.strip())
        self.evasive_patterns = []
        for pattern in evasive_patterns:
            try:
                self.evasive_patterns.append(re.compile(pattern))
            except re.error as e:
                raise BrunoError(
                    f"config key 'evaluation.evasive_patterns': {pattern!r} is not a valid regular expression ({e})."
                ) from None

    def match(self, text: str) -> tuple[str, str]:
        """(detector, matched) of the first list that matches the reply, or ("", "")."""
        norm = normalize_response(text)
        for marker in self.markers:
            if marker in norm:
                return "markers", marker
        for marker in self.soft_markers:
            if marker in norm:
                return "soft_markers", marker
        for pattern in self.evasive_patterns:
            if pattern.search(norm):
                return "evasive_patterns", pattern.pattern
        return "", ""

    def first_match(self, text: str) -> str:
        return self.match(text)[1]

    def classify(self, responses: Sequence[str], prompts: Sequence[str] | None = None) -> list[Verdict]:
        verdicts = []
        for text in responses:
            if not text.strip():
                verdicts.append(Verdict(True, "empty"))
                continue
            detector, matched = self.match(text)
            verdicts.append(Verdict(bool(matched), detector or self.name, matched))
        return verdicts

    def is_refusal(self, text: str) -> bool:
        return self.classify([text])[0].is_refusal


class HybridDetector:
    """Markers first; the neural detector decides only the replies that no marker flagged."""

    name = "hybrid"

    def __init__(self, markers: MarkerDetector, neural: RefusalDetector):
        self.markers = markers
        self.neural = neural

    def first_match(self, text: str) -> str:
        return self.markers.first_match(text)  # a marker verdict is final, so early stopping stays exact

    def classify(self, responses: Sequence[str], prompts: Sequence[str] | None = None) -> list[Verdict]:
        verdicts = self.markers.classify(responses)
        rest = [i for i, v in enumerate(verdicts) if not v.is_refusal]
        neural = self.neural.classify(
            [responses[i] for i in rest], [prompts[i] for i in rest] if prompts is not None else None
        )
        for i, verdict in zip(rest, neural, strict=True):
            verdicts[i] = verdict
        return verdicts


# ----------------------------------------------------------------------------------------------------------------------
# Factory and held-out accuracy

MODES = ("markers", "neural", "hybrid")


_default = schema_defaults("evaluation.neural_detector")


@dataclass(frozen=True)
class NeuralDetectorSettings:
    embedding_model: str | None = _default("embedding_model")  # None = the shipped MiniLM
    # A local NLI model directory: zero-shot NLI instead of the embedding classifier.
    nli_model: str | None = _default("nli_model")
    labels_path: str = _default("labels_path")
    threshold: float = _default("threshold")
    batch_size: int = _default("batch_size")


@dataclass(frozen=True)
class DetectorSettings:
    mode: str = "markers"
    markers: tuple[str, ...] = DEFAULT_REFUSAL_MARKERS
    soft_markers: tuple[str, ...] = ()
    evasive_patterns: tuple[str, ...] = ()
    neural: NeuralDetectorSettings = NeuralDetectorSettings()


def build_detector(
    settings: DetectorSettings, embedder: Any = None, device: str = "cpu"
) -> tuple[RefusalDetector, list[Any]]:
    """The configured detector and the labelled replies (empty in markers mode without labels).

    The neural part is trained here, once (about 1 s of embedding on a CPU); pass a loaded `SentenceEmbedder` to share
    it with other evaluators."""
    if settings.mode not in MODES:
        raise BrunoError(
            f"config key 'evaluation.refusal_detection_mode': {settings.mode!r} is not one of {', '.join(MODES)}."
        )
    from bruno.evaluation.refusal_neural import (
        EmbeddingRefusalClassifier,
        NLIRefusalDetector,
        load_refusal_labels,
    )

    markers = MarkerDetector(settings.markers, settings.soft_markers, settings.evasive_patterns)
    labels_path = Path(settings.neural.labels_path)
    labels = load_refusal_labels(labels_path) if labels_path.is_file() else []
    if settings.mode == "markers":
        return markers, labels
    neural: RefusalDetector
    if settings.neural.nli_model:
        neural = NLIRefusalDetector(settings.neural.nli_model, settings.neural.threshold, device=device)
    else:
        if not labels:
            raise BrunoError(
                f"config key 'evaluation.neural_detector.labels_path': {labels_path} not found; the neural refusal "
                "detector is trained on it (the project ships data/eval/refusal_labels.jsonl)."
            )
        if embedder is None:
            from bruno.evaluation.embedding import SentenceEmbedder

            embedder = SentenceEmbedder(
                settings.neural.embedding_model, batch_size=settings.neural.batch_size
            )
        neural = EmbeddingRefusalClassifier(
            embedder, [r for r in labels if r.split == "train"], settings.neural.threshold
        )
    return (HybridDetector(markers, neural) if settings.mode == "hybrid" else neural), labels


def held_out_accuracy(detector: RefusalDetector, labels: Sequence[Any]) -> dict[str, Any]:
    """Accuracy of a detector on the labelled test split: a rate with n and Wilson interval, plus accuracy per kind."""
    from bruno.evaluation.stats import rate_metric

    test = [r for r in labels if r.split == "test"]
    verdicts = detector.classify([r.text for r in test], [r.prompt for r in test])
    correct = [v.is_refusal == r.is_refusal for v, r in zip(verdicts, test, strict=True)]
    by_kind: dict[str, list[bool]] = {}
    for reply, ok in zip(test, correct, strict=True):
        by_kind.setdefault(reply.kind, []).append(ok)
    metric = rate_metric(sum(correct), len(correct))
    metric["by_kind"] = {kind: sum(oks) / len(oks) for kind, oks in sorted(by_kind.items())}
    return metric
