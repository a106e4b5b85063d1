"""Cloze scoring of multiple-choice questions: the log-likelihood of each choice's own text after the question.

Letter scoring (`bruno.evaluation.capability`) asks the model to map options to letters, which models of about 100 M parameters
barely do (they sit near chance on letters while knowing many of the answers). Cloze scoring, as lm-eval scores ARC and
HellaSwag, shows the question alone ("Question: ...\\nAnswer:" as raw text, or the question as the user turn of the chat
template) and scores each choice as its continuation: the sum of the log-probs of its tokens. The prediction is the
choice with the highest sum divided by the number of characters of the choice text (lm-eval's `acc_norm`): dividing by
characters rather than tokens keeps the score independent of the tokenizer, so figures compare across models and with
published acc_norm numbers, and for this ASCII text characters and bytes are the same count. The unnormalised choice
(lm-eval's `acc`) is recorded too.

Each question's prompt runs once into a KV cache that its four continuations share (one forward for the prompts of a
batch, one for their continuations); a model whose cache layers are not plain full attention (sliding windows) runs
prompt + continuation as whole sequences instead. Both give the log-probs of a plain forward up to float rounding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bruno.errors import BrunoError
from bruno.evaluation.capability import LETTERS, MCQuestion, MMLUResult
from bruno.model.generation import left_padded, model_device, next_token_logits, plain_cache

SCORING = "cloze: log-likelihood of each choice's text after the question, per character (lm-eval acc_norm)"


def cloze_prompt(
    tokenizer: Any, q: MCQuestion, shots: Sequence[MCQuestion], chat: bool, system: str | None,
    prefix: str = "",
) -> tuple[str, str]:  # fmt: skip
    """(prompt, separator): the text before a choice, and what joins the choice to it. Chat: each shot a
    user/assistant turn (the answer's text), then the question ending with the generation prompt and the response
    `prefix` (`bruno.model.thinking`); the choice is the start of the answer. Raw: lm-eval's ARC text
    "Question: ...\\nAnswer:" per shot and question; " choice"."""
    if chat:
        messages = [{"role": "system", "content": system}] if system else []
        for shot in shots:
            messages += [
                {"role": "user", "content": shot.question},
                {"role": "assistant", "content": shot.choices[LETTERS.index(shot.answer)]},
            ]
        messages.append({"role": "user", "content": q.question})
        chat_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return chat_prompt + prefix, ""
    body = "".join(f"Question: {s.question}\nAnswer: {s.choices[LETTERS.index(s.answer)]}\n\n" for s in shots)
    return f"{body}Question: {q.question}\nAnswer:", " "


def continuation_ids(
    tokenizer: Any, prompt_ids: list[int], prompt: str, continuation: str, add_special_tokens: bool
) -> list[int]:
    """The tokens of `continuation` after `prompt`: the tail of the joint tokenisation when the prompt's own tokens are
    unchanged by it (the usual case), else the continuation tokenised alone (a merge across the boundary would
    otherwise change the scored prompt)."""
    joint = tokenizer(prompt + continuation, add_special_tokens=add_special_tokens)["input_ids"]
    if joint[: len(prompt_ids)] == prompt_ids and len(joint) > len(prompt_ids):
        return joint[len(prompt_ids) :]
    alone = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if not alone:
        raise BrunoError(f"Cloze scoring: the choice {continuation!r} encodes to no tokens.")
    return alone


@dataclass(frozen=True)
class ClozeItem:
    prompt_ids: list[int]
    choice_ids: tuple[list[int], ...]  # one token list per choice
    choice_chars: tuple[int, ...]  # characters of each choice's text (the acc_norm denominator)


class ClozeEvaluator:
    """Cloze multiple-choice scoring with the interface of `MMLUEvaluator` (`evaluate`, `accuracy`)."""

    def __init__(
        self,
        tokenizer: Any,
        questions: Sequence[MCQuestion],
        use_chat_template: bool = True,
        shots: Mapping[str, Sequence[MCQuestion]] | None = None,
        system_prompt: str | None = None,
        batch_size: int = 16,
        share_prompt: bool | None = None,
        response_prefix: str = "",
    ):
        """`share_prompt`: None = share each prompt's KV cache among its choices when the model's cache allows it;
        False = whole sequences (tests compare the two)."""
        if not questions:
            raise BrunoError("ClozeEvaluator: no questions to evaluate.")
        self.questions = list(questions)
        self.batch_size = batch_size
        self.share_prompt = share_prompt
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        add_special = not use_chat_template  # a chat template writes its own special tokens
        self.items = []
        for q in self.questions:
            shots_q = (shots or {}).get(q.subject, ())
            prompt, separator = cloze_prompt(
                tokenizer, q, shots_q, use_chat_template, system_prompt, response_prefix
            )
            prompt_ids = tokenizer(prompt, add_special_tokens=add_special)["input_ids"]
            self.items.append(
                ClozeItem(
                    prompt_ids,
                    tuple(
                        continuation_ids(tokenizer, prompt_ids, prompt, separator + c, add_special)
                        for c in q.choices
                    ),
                    tuple(len(c) for c in q.choices),
                )
            )

    @torch.inference_mode()
    def choice_logliks(
        self, model: nn.Module, indices: Sequence[int] | None = None
    ) -> dict[int, torch.Tensor]:
        """{question index: [4] summed log-probs of each choice's tokens after the question} (float32, raw logits)."""
        wanted = sorted(set(indices)) if indices is not None else list(range(len(self.questions)))
        order = sorted(wanted, key=lambda i: len(self.items[i].prompt_ids))
        share = plain_cache(model) if self.share_prompt is None else self.share_prompt
        out: dict[int, torch.Tensor] = {}
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            items = [self.items[i] for i in chunk]
            scores = (
                _shared_prompt_logliks(model, items, self.pad_id)
                if share
                else _whole_logliks(model, items, self.pad_id)
            )
            for row, i in enumerate(chunk):
                out[i] = scores[row]
        return out

    def evaluate(self, model: nn.Module, indices: Sequence[int] | None = None) -> MMLUResult:
        logliks = self.choice_logliks(model, indices)
        rows = []
        for i in sorted(logliks):
            q, item, ll = self.questions[i], self.items[i], logliks[i]
            normalised = ll / torch.tensor(item.choice_chars, dtype=ll.dtype)
            predicted = LETTERS[int(normalised.argmax())]
            rows.append(
                {
                    "subject": q.subject,
                    "question_id": q.id,
                    "gold": q.answer,
                    "predicted": predicted,
                    **{f"logprob_{letter}": float(ll[k]) for k, letter in enumerate(LETTERS)},
                    **{
                        f"logprob_per_char_{letter}": float(normalised[k]) for k, letter in enumerate(LETTERS)
                    },
                    "predicted_unnormalised": LETTERS[int(ll.argmax())],
                    "correct": predicted == q.answer,
                }
            )
        return MMLUResult(rows, len(rows), sum(r["correct"] for r in rows), scoring="cloze")

    def accuracy(self, model: nn.Module, indices: Sequence[int] | None = None) -> float:
        """Fraction correct on the given questions (all by default): the per-trial capability check."""
        return self.evaluate(model, indices).accuracy


def _gather_sums(logprobs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over positions of logprobs[r, j, targets[r, j]] where mask[r, j]: [rows]."""
    picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


def _right_padded(token_lists: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(t) for t in token_lists)
    ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, tokens in enumerate(token_lists):
        ids[row, : len(tokens)] = torch.tensor(list(tokens), dtype=torch.long)
        mask[row, : len(tokens)] = 1
    return ids, mask


def _shared_prompt_logliks(model: nn.Module, items: Sequence[ClozeItem], pad_id: int) -> torch.Tensor:
    """Prompts (left-padded) into one KV cache, repeated per choice; the choices (right-padded) continue it. The first
    choice token is scored by the prompt's last logits, token j by the continuation's logits at j - 1: [n, 4]."""
    from transformers import DynamicCache

    device = model_device(model)
    n_choices = len(LETTERS)
    prompts = left_padded([it.prompt_ids for it in items], pad_id, device)
    cache = DynamicCache(config=model.config)
    first = torch.log_softmax(next_token_logits(model, prompts, cache).float(), dim=-1)
    cache.batch_repeat_interleave(n_choices)
    ids, mask = _right_padded([c for it in items for c in it.choice_ids], pad_id)
    ids, mask = ids.to(device), mask.to(device)
    prompt_mask = prompts.attention_mask.repeat_interleave(n_choices, dim=0)
    start = prompt_mask.sum(-1, keepdim=True)  # each row's next position (positions count real tokens only)
    out = model(
        input_ids=ids,
        attention_mask=torch.cat([prompt_mask, mask], dim=1),
        position_ids=start + torch.arange(ids.shape[1], device=device),
        past_key_values=cache,
        use_cache=True,
    )
    later = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
    first_token = first.repeat_interleave(n_choices, dim=0).gather(-1, ids[:, :1]).squeeze(-1)
    sums = first_token + _gather_sums(later, ids[:, 1:], mask[:, 1:])
    return sums.view(len(items), n_choices).cpu()


def _whole_logliks(model: nn.Module, items: Sequence[ClozeItem], pad_id: int) -> torch.Tensor:
    """Prompt + choice as whole left-padded sequences, logits kept for the last (longest choice + 1) positions."""
    device = model_device(model)
    sequences = [it.prompt_ids + c for it in items for c in it.choice_ids]
    lengths = [len(c) for it in items for c in it.choice_ids]
    width = max(lengths)
    batch = left_padded(sequences, pad_id, device)
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
        logits_to_keep=width + 1,
    )
    logprobs = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)  # predicts the last `width` tokens
    targets = batch.input_ids[:, -width:]
    mask = torch.tensor([[j >= width - n for j in range(width)] for n in lengths], device=device)
    return _gather_sums(logprobs, targets, mask.float()).view(len(items), len(LETTERS)).cpu()
