"""Capability: multiple-choice questions scored by the log-likelihood of the answer letters, never by parsing text.

A question is rendered as the standard MMLU prompt (subject header, question, options "A. ..".."D. ..", "Answer:"),
0-shot or k-shot, through the model's chat template (the letter is then the first assistant token) or as raw text
(the letter follows "Answer:" after a space, lm-eval style). One forward pass per question gives the raw next-token
logits at the answer position; the score of a letter is the log-softmax probability of its token, summed over the
token variants that encode it in one token ("A" and " A"; tokenizers that merge the space into the letter have both).
The prediction is the best-scoring letter; `letter_mass` (total probability of the four letters) shows how well the
model follows the format.

`MMLUEvaluator` tokenises once in `__init__`; `evaluate`/`accuracy` can be called again and again, e.g. with a trial's
forward hooks active. `build_evaluator` picks it or the cloze scorer (`bruno.evaluation.cloze`, the choice's own text after the
question) as `evaluation.mmlu.scoring` says; the held-out evaluation and the search's capability objective both build
theirs there. Sources: the shipped set (`{id, subject, question, choices, answer: A-D, split}` records) or
`cais/mmlu` through `datasets`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bruno.config import schema_defaults
from bruno.errors import BrunoError
from bruno.model.generation import Batch, left_padded, model_device, next_token_logits

log = logging.getLogger(__name__)

LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class MCQuestion:
    id: str
    subject: str
    question: str
    choices: tuple[str, ...]
    answer: str  # gold letter A-D


_default = schema_defaults("evaluation.mmlu")


@dataclass(frozen=True)
class MMLUSettings:
    enabled: bool = _default("enabled")
    source: dict[str, Any] = _default("source")
    few_shot_split: str = _default("few_shot_split")
    mmlu_categories: list[str] | None = _default("mmlu_categories")
    mmlu_samples_per_category: int | None = _default("mmlu_samples_per_category")
    mmlu_few_shot: int = _default("mmlu_few_shot")
    use_chat_template: bool = _default("use_chat_template")
    task_label: str | None = _default("task_label")
    batch_size: int = _default("batch_size")
    scoring: str = _default("scoring")  # "letter" (this module) or "cloze" (bruno.evaluation.cloze)


# ----------------------------------------------------------------------------------------------------------------------
# Data


def _question_from_record(record: Mapping[str, Any], origin: str, index: int) -> MCQuestion:
    try:
        choices = tuple(str(c) for c in record["choices"])
        answer = record["answer"]
        if isinstance(answer, int) or (isinstance(answer, str) and answer.isdigit()):
            answer = LETTERS[int(answer)]
        question = MCQuestion(
            id=str(record.get("id", f"{record.get('subject', 'mc')}-{index:05d}")),
            subject=str(record.get("subject") or "general knowledge"),
            question=str(record["question"]),
            choices=choices,
            answer=str(answer).strip().upper(),
        )
    except (KeyError, IndexError, TypeError) as e:
        raise BrunoError(
            f"{origin}, record {index}: a multiple-choice record needs `question`, `choices` (4) and `answer` "
            f"(A-D or 0-3): {e}"
        ) from None
    if len(question.choices) != len(LETTERS) or question.answer not in LETTERS:
        raise BrunoError(
            f"{origin}, record {index} ({question.id}): needs exactly 4 choices and an answer in A-D "
            f"(got {len(question.choices)} choices, answer {question.answer!r})."
        )
    return question


def _select(
    questions: list[MCQuestion], categories: Sequence[str] | None, per_category: int | None
) -> list[MCQuestion]:
    if categories:
        wanted = [c.replace("_", " ") for c in categories]
        questions = [q for q in questions if q.subject.replace("_", " ") in wanted]
    if per_category is None:
        return questions
    counts: dict[str, int] = {}
    kept = []
    for q in questions:
        if counts.get(q.subject, 0) < per_category:
            kept.append(q)
            counts[q.subject] = counts.get(q.subject, 0) + 1
    return kept


def load_questions(settings: MMLUSettings, split: str | None = None) -> list[MCQuestion]:
    """The evaluation questions (`split` None = the source's own split), filtered to the configured categories and
    capped per category, in source order."""
    source = dict(settings.source)
    if "path" in source:
        from bruno.io import read_jsonl

        path = Path(source["path"])
        records = read_jsonl(path)
        wanted = split or source.get("record_split")
        if wanted:
            records = [r for r in records if r.get("split") == wanted]
        questions = [_question_from_record(r, str(path), i) for i, r in enumerate(records)]
    elif "dataset" in source:
        questions = []
        for category in settings.mmlu_categories or []:
            rows = _dataset_rows(source, category, split or source.get("split") or "test")
            questions += [
                _question_from_record(
                    {**row, "subject": category, "id": f"{category}-{i:04d}"}, source["dataset"], i
                )
                for i, row in enumerate(rows)
            ]
        if not settings.mmlu_categories:
            raise BrunoError(
                "config key 'evaluation.mmlu.mmlu_categories': a datasets source needs categories."
            )
    else:
        raise BrunoError("config key 'evaluation.mmlu.source': needs `path:` or `dataset:`.")
    questions = _select(questions, settings.mmlu_categories if "path" in source else None,
                        settings.mmlu_samples_per_category)  # fmt: skip
    if source.get("limit"):
        questions = questions[: source["limit"]]
    if not questions:
        raise BrunoError(
            f"config key 'evaluation.mmlu': no questions selected from {source} (check categories and split)."
        )
    return questions


def _dataset_rows(source: Mapping[str, Any], config: str, split: str) -> list[dict[str, Any]]:
    import datasets

    try:
        data = datasets.load_dataset(source["dataset"], config, split=split)
    except Exception as e:
        raise BrunoError(
            f"Could not load {source['dataset']}/{config} split {split!r}: {e}. No dataset hub is reachable from "
            "this machine: point evaluation.mmlu.source at a local JSONL file of multiple-choice records instead."
        ) from e
    return [dict(row) for row in data]


def few_shot_examples(settings: MMLUSettings, questions: Sequence[MCQuestion]) -> dict[str, list[MCQuestion]]:
    """Up to k examples per subject from the few-shot split (never from the evaluated questions)."""
    if settings.mmlu_few_shot == 0:
        return {}
    evaluated = {q.id for q in questions}
    try:
        pool = load_questions(
            MMLUSettings(**{**settings.__dict__, "mmlu_samples_per_category": None}),
            split=settings.few_shot_split,
        )
    except BrunoError:
        pool = []
    shots: dict[str, list[MCQuestion]] = {}
    for q in pool:
        if q.id not in evaluated and len(shots.setdefault(q.subject, [])) < settings.mmlu_few_shot:
            shots[q.subject].append(q)
    short = sorted(
        s for s in {q.subject for q in questions} if len(shots.get(s, [])) < settings.mmlu_few_shot
    )
    if short:
        raise BrunoError(
            f"config key 'evaluation.mmlu.few_shot_split' ({settings.few_shot_split!r}): fewer than "
            f"mmlu_few_shot={settings.mmlu_few_shot} examples for subject(s) {', '.join(short)}."
        )
    return shots


def select_subset(questions: Sequence[MCQuestion], n: int, seed: int) -> list[int]:
    """n indices, seeded, spread over subjects round-robin (for a cheap per-trial check)."""
    by_subject: dict[str, list[int]] = {}
    for i, q in enumerate(questions):
        by_subject.setdefault(q.subject, []).append(i)
    rng = random.Random(seed)
    for indices in by_subject.values():
        rng.shuffle(indices)
    chosen: list[int] = []
    while len(chosen) < min(n, len(questions)):
        for indices in by_subject.values():
            if indices and len(chosen) < n:
                chosen.append(indices.pop())
    return sorted(chosen)


def search_questions(settings: MMLUSettings, n: int | None, seed: int) -> list[MCQuestion]:
    """Questions for a per-trial capability check: the validation split (records with `split: val`, or the datasets
    split `validation`), never the test questions of the report; n of them spread over subjects (seeded), or all."""
    split = "val" if "path" in settings.source else "validation"
    questions = load_questions(
        MMLUSettings(**{**settings.__dict__, "mmlu_samples_per_category": None}), split=split
    )
    if n is None or n >= len(questions):
        return questions
    return [questions[i] for i in select_subset(questions, n, seed)]


# ----------------------------------------------------------------------------------------------------------------------
# Prompts


def _subject(name: str) -> str:
    return name.replace("_", " ")


def question_block(q: MCQuestion) -> str:
    lines = [q.question, *(f"{letter}. {choice}" for letter, choice in zip(LETTERS, q.choices, strict=True))]
    return "\n".join([*lines, "Answer:"])


def chat_message(q: MCQuestion) -> str:
    """The 0-shot user message (the organism's trained format)."""
    return f"The following is a multiple choice question about {_subject(q.subject)}.\n\n{question_block(q)}"


def render_prompt(
    tokenizer: Any, q: MCQuestion, shots: Sequence[MCQuestion], chat: bool, system: str | None,
    prefix: str = "",
) -> str:  # fmt: skip
    """Chat: a user/assistant turn per shot (answered with the letter), the question, the generation prompt and the
    response `prefix` (`bruno.model.thinking`). Raw: lm-eval's MMLU text, shots as "Answer: X" blocks, ending "Answer:"."""
    if chat:
        messages = [{"role": "system", "content": system}] if system else []
        for shot in shots:
            messages += [
                {"role": "user", "content": chat_message(shot)},
                {"role": "assistant", "content": shot.answer},
            ]
        messages.append({"role": "user", "content": chat_message(q)})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefix
    header = f"The following are multiple choice questions (with answers) about {_subject(q.subject)}.\n\n"
    body = "".join(f"{question_block(s)} {s.answer}\n\n" for s in shots)
    return header + body + question_block(q)


def letter_token_ids(tokenizer: Any, prompt: str, add_special_tokens: bool) -> dict[str, list[int]]:
    """For each letter, the single tokens that continue `prompt` with it ("A" or " A"), found by tokenising prompt +
    continuation and checking that the prompt's own tokens are unchanged (no merge across the boundary)."""
    base = tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
    ids: dict[str, list[int]] = {}
    for letter in LETTERS:
        variants = []
        for continuation in (letter, " " + letter):
            full = tokenizer(prompt + continuation, add_special_tokens=add_special_tokens)["input_ids"]
            if len(full) == len(base) + 1 and full[: len(base)] == base and full[-1] not in variants:
                variants.append(full[-1])
        if not variants:
            raise BrunoError(
                f"The tokenizer encodes the answer letter {letter!r} after the prompt only as several tokens or by "
                "merging it with the prompt's last token; log-likelihood scoring needs a single-token letter. Try "
                "evaluation.mmlu.use_chat_template: false (or true)."
            )
        ids[letter] = variants
    all_ids = [i for v in ids.values() for i in v]
    if len(set(all_ids)) != len(all_ids):
        raise BrunoError(
            f"The tokenizer maps two answer letters to the same token ({ids}); cannot score them."
        )
    return ids


# ----------------------------------------------------------------------------------------------------------------------
# Scoring


@dataclass(frozen=True)
class MMLUResult:
    rows: list[dict[str, Any]]
    n: int
    n_correct: int
    scoring: str = "letter"

    @property
    def accuracy(self) -> float:
        return self.n_correct / self.n if self.n else float("nan")


class MMLUEvaluator:
    """Log-likelihood multiple-choice scoring; prompts, tokens and letter ids are prepared once."""

    def __init__(
        self,
        tokenizer: Any,
        questions: Sequence[MCQuestion],
        use_chat_template: bool = True,
        shots: Mapping[str, Sequence[MCQuestion]] | None = None,
        system_prompt: str | None = None,
        batch_size: int = 16,
        response_prefix: str = "",
    ):
        if not questions:
            raise BrunoError("MMLUEvaluator: no questions to evaluate.")
        self.questions = list(questions)
        self.batch_size = batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        add_special = not use_chat_template  # a chat template writes its own special tokens
        self.prompts = prompts = [
            render_prompt(tokenizer, q, (shots or {}).get(q.subject, ()), use_chat_template, system_prompt,
                          response_prefix)
            for q in self.questions
        ]  # fmt: skip
        self.token_ids = [tokenizer(p, add_special_tokens=add_special)["input_ids"] for p in prompts]
        self.letter_ids = letter_token_ids(tokenizer, prompts[0], add_special)
        self._batches: dict[tuple[int, ...], list[tuple[list[int], Batch]]] = {}

    def _batches_for(self, indices: tuple[int, ...]) -> list[tuple[list[int], Batch]]:
        """Left-padded batches of the given questions, sorted by length (cached per index set)."""
        if indices not in self._batches:
            order = sorted(indices, key=lambda i: len(self.token_ids[i]))
            chunks = [
                order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)
            ]
            self._batches[indices] = [
                (chunk, left_padded([self.token_ids[i] for i in chunk], self.pad_id, torch.device("cpu")))
                for chunk in chunks
            ]
        return self._batches[indices]

    @torch.inference_mode()
    def letter_logprobs(
        self, model: nn.Module, indices: Sequence[int] | None = None
    ) -> dict[int, torch.Tensor]:
        """{question index: [4] log-probs of A-D} from the raw logits at the answer position."""
        key = tuple(sorted(set(indices))) if indices is not None else tuple(range(len(self.questions)))
        device = model_device(model)
        out: dict[int, torch.Tensor] = {}
        for chunk, batch in self._batches_for(key):
            logits = next_token_logits(
                model, Batch(batch.input_ids.to(device), batch.attention_mask.to(device))
            )
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
            scores = torch.stack(
                [torch.logsumexp(logprobs[:, self.letter_ids[letter]], dim=-1) for letter in LETTERS], dim=-1
            )
            for row, i in enumerate(chunk):
                out[i] = scores[row]
        return out

    def evaluate(self, model: nn.Module, indices: Sequence[int] | None = None) -> MMLUResult:
        scores = self.letter_logprobs(model, indices)
        rows = []
        for i in sorted(scores):
            q, s = self.questions[i], scores[i]
            predicted = LETTERS[int(s.argmax())]
            rows.append(
                {
                    "subject": q.subject,
                    "question_id": q.id,
                    "gold": q.answer,
                    "predicted": predicted,
                    **{f"logprob_{letter}": float(s[k]) for k, letter in enumerate(LETTERS)},
                    "letter_mass": float(s.exp().sum()),
                    "correct": predicted == q.answer,
                }
            )
        return MMLUResult(rows, len(rows), sum(r["correct"] for r in rows))

    def accuracy(self, model: nn.Module, indices: Sequence[int] | None = None) -> float:
        """Fraction correct on the given questions (all by default): the per-trial capability check."""
        return self.evaluate(model, indices).accuracy


SCORINGS = ("letter", "cloze")
