"""Hallucination: SelfCheckGPT-style self-consistency of sampled answers, and the greedy answer against a gold answer.

For each factual question the model samples `n_samples` answers (temperature from config; a seeded torch.Generator, so
the same model gives the same samples on every call); a sentence-embedding model embeds them and the score is
1 - mean pairwise cosine similarity (0 = the samples agree; higher = they disagree, a sign the model is making it up).
Where the question has gold answers, the greedy answer is checked against them by normalised containment (lower-case,
punctuation and articles dropped, a gold answer must appear as whole words); the hallucination rate is the share of
such questions answered wrongly. Free-form gold answers (TruthfulQA) make this match strict, so read that rate as an
upper bound there.

A thinking model's questions end with the response prefix and only the answer of each reply is embedded and matched
(`bruno.model.thinking.ResponseFormat`).

`HallucinationDetector` tokenises once in `__init__` and holds the embedder; `score`/`evaluate` can be called again and
again, e.g. with a trial's forward hooks active.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bruno.config import schema_defaults
from bruno.errors import BrunoError
from bruno.model.generation import chat_strings, decode_replies, eos_token_ids, model_device
from bruno.model.thinking import DEFAULT_FORMAT, ResponseFormat


@dataclass(frozen=True)
class FactualQuestion:
    id: str
    question: str
    answers: tuple[str, ...]  # gold answers (empty = none)
    group: str  # "known" / "unknown" for the shipped set (did the model learn the fact?), else "all"


_default = schema_defaults("evaluation.hallucination")


@dataclass(frozen=True)
class HallucinationSettings:
    enabled: bool = _default("enabled")
    source: dict[str, Any] = _default("source")
    hallucination_n_samples: int = _default("hallucination_n_samples")
    temperature: float = _default("temperature")
    max_new_tokens: int = _default("max_new_tokens")
    embedding_model: str | None = _default("embedding_model")
    batch_size: int = _default("batch_size")


# ----------------------------------------------------------------------------------------------------------------------
# Data


def load_factual_questions(source: Mapping[str, Any]) -> list[FactualQuestion]:
    """Questions from the shipped JSONL (`{id, question, answer, known, split}`) or a `datasets` spec."""
    from bruno.prompts import _records_from_dataset

    if "path" in source:
        from bruno.io import read_jsonl

        records = read_jsonl(Path(source["path"]))
        origin = source["path"]
    elif "dataset" in source:
        records = _records_from_dataset(source)
        origin = source["dataset"]
    else:
        raise BrunoError("config key 'evaluation.hallucination.source': needs `path:` or `dataset:`.")
    if source.get("record_split"):
        records = [r for r in records if r.get("split") == source["record_split"]]
    column, answer_column = source.get("column", "question"), source.get("answer_column", "answer")
    questions = []
    for i, record in enumerate(records):
        if column not in record:
            raise BrunoError(
                f"{origin}: record {i} has no column '{column}'. Set `column:` in evaluation.hallucination.source."
            )
        gold = record.get(answer_column)
        answers = (
            tuple(str(a) for a in gold) if isinstance(gold, (list, tuple)) else ((str(gold),) if gold else ())
        )
        known = record.get("known")
        group = "all" if known is None else ("known" if known else "unknown")
        questions.append(
            FactualQuestion(str(record.get("id", f"q-{i:04d}")), str(record[column]), answers, group)
        )
    if source.get("limit"):
        questions = questions[: source["limit"]]
    if not questions:
        raise BrunoError(f"config key 'evaluation.hallucination.source': no questions in {origin}.")
    return questions


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation})


def normalize_answer(text: str) -> str:
    """SQuAD-style: lower-case, punctuation to spaces, articles dropped, whitespace collapsed."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def answer_matches(reply: str, answers: Sequence[str]) -> bool:
    reply_norm = f" {normalize_answer(reply)} "
    return any((gold := normalize_answer(a)) and f" {gold} " in reply_norm for a in answers)


def mean_pairwise_similarity(embeddings: torch.Tensor) -> float:
    """Mean cosine similarity over the distinct pairs of L2-normalised rows (1.0 for fewer than two rows)."""
    n = embeddings.shape[0]
    if n < 2:
        return 1.0
    sims = embeddings @ embeddings.T
    upper = torch.triu_indices(n, n, offset=1)
    return float(sims[upper[0], upper[1]].mean())


# ----------------------------------------------------------------------------------------------------------------------
# Detector


@dataclass(frozen=True)
class HallucinationResult:
    rows: list[dict[str, Any]]

    @property
    def scores(self) -> list[float]:
        return [r["score"] for r in self.rows]

    @property
    def mean_score(self) -> float:
        return sum(self.scores) / len(self.scores) if self.rows else float("nan")


class HallucinationDetector:
    """Self-consistency scoring of factual questions through the chat template; see the module docstring."""

    def __init__(
        self,
        tokenizer: Any,
        questions: Sequence[FactualQuestion],
        embedder: Any,
        n_samples: int = 5,
        temperature: float = 1.0,
        max_new_tokens: int = 64,
        seed: int = 0,
        system_prompt: str | None = None,
        batch_size: int = 32,
        response_format: ResponseFormat = DEFAULT_FORMAT,
    ):
        if n_samples < 2:
            raise BrunoError(
                "config key 'evaluation.hallucination.hallucination_n_samples' must be at least 2."
            )
        if temperature <= 0:
            raise BrunoError("config key 'evaluation.hallucination.temperature' must be > 0 for sampling.")
        self.tokenizer = tokenizer
        self.questions = list(questions)
        self.embedder = embedder
        self.n_samples = n_samples
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.batch_size = batch_size
        self.response_format = response_format
        texts = [q.question for q in self.questions]
        strings = chat_strings(tokenizer, texts, system_prompt, response_format.prefix)
        self.token_ids = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in strings]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def _indices(self, indices: Sequence[int] | None) -> list[int]:
        return list(range(len(self.questions))) if indices is None else list(indices)

    def _run(self, model: nn.Module, rows: list[list[int]], temperature: float) -> list[str]:
        eos = eos_token_ids(model, self.tokenizer)
        generator = None
        if temperature > 0:
            generator = torch.Generator(device=model_device(model)).manual_seed(self.seed)
        texts: list[str] = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            replies = decode_replies(
                model, chunk, self.pad_id, eos, self.max_new_tokens, temperature, generator
            )
            decoded = self.tokenizer.batch_decode(replies, skip_special_tokens=True)
            texts += [self.response_format.answer(t) for t in decoded]  # stripped, thinking cut out
        return texts

    def sample(self, model: nn.Module, indices: Sequence[int] | None = None) -> list[list[str]]:
        """n_samples sampled answers per question (seeded: the same model gives the same samples)."""
        chosen = self._indices(indices)
        rows = [self.token_ids[i] for i in chosen for _ in range(self.n_samples)]
        texts = self._run(model, rows, self.temperature)
        return [texts[k * self.n_samples : (k + 1) * self.n_samples] for k in range(len(chosen))]

    def greedy(self, model: nn.Module, indices: Sequence[int] | None = None) -> list[str]:
        return self._run(model, [self.token_ids[i] for i in self._indices(indices)], 0.0)

    def consistency(self, samples: Sequence[Sequence[str]]) -> list[float]:
        """Mean pairwise cosine similarity of each question's samples (one embedding call for all of them)."""
        flat = [s for group in samples for s in group]
        embeddings = self.embedder.embed(flat)
        sims, start = [], 0
        for group in samples:
            sims.append(mean_pairwise_similarity(embeddings[start : start + len(group)]))
            start += len(group)
        return sims

    def score(self, model: nn.Module, indices: Sequence[int] | None = None) -> float:
        """Mean hallucination score (1 - mean pairwise similarity) over the questions: the per-trial objective."""
        sims = self.consistency(self.sample(model, indices))
        return 1.0 - sum(sims) / len(sims)

    def evaluate(self, model: nn.Module, indices: Sequence[int] | None = None) -> HallucinationResult:
        chosen = self._indices(indices)
        samples = self.sample(model, chosen)
        sims = self.consistency(samples)
        greedy = self.greedy(model, chosen)
        rows = []
        for i, group, sim, answer in zip(chosen, samples, sims, greedy, strict=True):
            q = self.questions[i]
            rows.append(
                {
                    "question_id": q.id,
                    "question": q.question,
                    "group": q.group,
                    "samples": json.dumps(group, ensure_ascii=False),
                    "pairwise_similarity": sim,
                    "score": 1.0 - sim,
                    "greedy_answer": answer,
                    "gold": " | ".join(q.answers),
                    "correct": answer_matches(answer, q.answers) if q.answers else None,
                }
            )
        return HallucinationResult(rows)
