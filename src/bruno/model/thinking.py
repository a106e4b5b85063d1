"""Thinking (reasoning) models: where the answer really starts, and what of a reply is the answer.

A thinking model opens its reply with a block such as `<think> ... </think>`. Directions (last prompt position) and
the first-token KL must be taken where the answer starts, so a *response prefix* is appended to every rendered chat
prompt: `model.response_prefix` set explicitly, '' for none, or 'auto' (heretic's idea): if the chat template itself
leaves a thinking block open, the prefix closes it; else if every one of the base model's greedy replies to a sample
of prompts begins with a thinking opener, the prefix is the empty block (opener + closer) followed by the whitespace
that all replies put after it. With the prefix in the prompt, the generation budget (`max_new_tokens`) is spent on
the answer alone. Refusal detection reads the answer only (`AnswerOnly`): a closed thinking block is cut out, and a
block still open when the budget ran out leaves no answer (an empty reply, which counts as a refusal).

Every stage renders prompts alike: `base_response_prefix` resolves the setting on the *base* model from the first
train prompts of each set, and the directions job, the base evaluation and healing all call it (an ablated model could
reply differently and auto-detect another prefix); the other stages' evaluations reuse the base evaluation's prefix.
`ResponseFormat` bundles the prefix with what of a reply is the answer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from bruno.model.generation import chat_strings, decode_tokens, encode, eos_token_ids, model_device
from bruno.model.loading import ModelSettings
from bruno.prompts import read_prompts

log = logging.getLogger(__name__)

DEFAULT_THINKING_TAGS: tuple[tuple[str, str], ...] = (
    ("<think>", "</think>"),
    ("<thought>", "</thought>"),
    ("[THINK]", "[/THINK]"),
)
AUTO = "auto"
PREFIX_SAMPLE = 8  # `auto` replies to the first this many train prompts of each set


def answer_text(reply: str, tags: Sequence[Sequence[str]] = DEFAULT_THINKING_TAGS, opened: str = "") -> str:
    """The answer part of a reply: thinking blocks cut out; a block left open swallows the rest. `opened` is an
    opener the prompt itself ended with (the reply then starts inside that block)."""
    text = opened + reply
    for opener, closer in tags:
        while (start := text.find(opener)) != -1:
            end = text.find(closer, start + len(opener))
            text = text[:start] + ("" if end == -1 else text[end + len(closer) :])
    return text.strip()


class AnswerOnly:
    """A refusal detector that sees only the answer part of each reply (`answer_text`)."""

    def __init__(
        self, detector: Any, tags: Sequence[Sequence[str]] = DEFAULT_THINKING_TAGS, opened: str = ""
    ):
        self.detector, self.tags, self.opened = detector, tags, opened
        self.name = detector.name

    def first_match(self, text: str) -> str:
        return self.detector.first_match(answer_text(text, self.tags, self.opened))

    def classify(self, responses: Sequence[str], prompts: Sequence[str] | None = None) -> list[Any]:
        return self.detector.classify([answer_text(r, self.tags, self.opened) for r in responses], prompts)


def open_block(
    tokenizer: Any, system_prompt: str | None, tags: Sequence[Sequence[str]]
) -> tuple[str, str] | None:
    """The (opener, closer) of a thinking block that the rendered generation prompt leaves open, if any."""
    rendered = chat_strings(tokenizer, ["Hello"], system_prompt)[0].rstrip()
    for opener, closer in tags:
        if rendered.endswith(opener):
            return opener, closer
    return None


def _replies(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    system_prompt: str | None,
    prefix: str,
    n_tokens: int,
) -> list[str]:
    """Greedy replies decoded as they are (not stripped, added tokens such as <think> kept)."""
    replies = []
    for batch in encode(tokenizer, prompts, system_prompt, len(prompts), model_device(model), prefix):
        tokens = decode_tokens(
            model, batch, n_tokens, eos_token_ids(model, tokenizer), tokenizer.pad_token_id
        )
        replies.extend(tokenizer.batch_decode(tokens, skip_special_tokens=True))
    return replies


def detect_response_prefix(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    system_prompt: str | None,
    tags: Sequence[Sequence[str]] = DEFAULT_THINKING_TAGS,
    n_tokens: int = 16,
) -> str:
    """The response prefix that skips a thinking block ('' for a model that does not think; module docstring)."""
    pair = open_block(tokenizer, system_prompt, tags)
    if pair is not None:
        return pair[1] + "\n\n"
    common = os.path.commonprefix(_replies(model, tokenizer, prompts, system_prompt, "", n_tokens))
    for opener, closer in tags:
        if common.lstrip().startswith(opener):
            block = opener + closer
            after = os.path.commonprefix(_replies(model, tokenizer, prompts, system_prompt, block, n_tokens))
            return block + after[: len(after) - len(after.lstrip())]
    return ""


def resolve_response_prefix(
    setting: str,
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    system_prompt: str | None,
    tags: Sequence[Sequence[str]] = DEFAULT_THINKING_TAGS,
) -> str:
    """`model.response_prefix`: 'auto' detects it (`detect_response_prefix`), anything else is used as it is."""
    if setting == AUTO:
        return detect_response_prefix(model, tokenizer, prompts, system_prompt, tags)
    return setting


def prompt_opened(
    tokenizer: Any, system_prompt: str | None, prefix: str, tags: Sequence[Sequence[str]]
) -> str:
    """The opener a reply starts inside of: the template's open block when the prefix does not close it, else ''."""
    pair = open_block(tokenizer, system_prompt, tags)
    return pair[0] if pair is not None and pair[1] not in prefix else ""


def base_response_prefix(
    model: nn.Module,
    tokenizer: Any,
    model_settings: ModelSettings,
    harmful_train: str | Path,
    harmless_train: str | Path,
) -> str:
    """`model.response_prefix` resolved on the base model with the first `PREFIX_SAMPLE` prompts of each train file:
    the one resolution that the directions job, the base evaluation and healing share, so they agree."""
    sample = [p.text for path in (harmful_train, harmless_train) for p in read_prompts(path)[:PREFIX_SAMPLE]]
    prefix = resolve_response_prefix(
        model_settings.response_prefix, model, tokenizer, sample, model_settings.system_prompt,
        model_settings.thinking_tags,
    )  # fmt: skip
    log.info("response prefix: %r", prefix)
    return prefix


@dataclass(frozen=True)
class ResponseFormat:
    """How a rendered prompt ends and what of a reply is judged: the response prefix, the thinking tags and the
    opener the prompt leaves open (`prompt_opened`). The default is a model that does not think."""

    prefix: str = ""
    tags: Sequence[Sequence[str]] = DEFAULT_THINKING_TAGS
    opened: str = ""

    @classmethod
    def of(
        cls, tokenizer: Any, system_prompt: str | None, prefix: str, tags: Sequence[Sequence[str]]
    ) -> ResponseFormat:
        return cls(prefix, tags, prompt_opened(tokenizer, system_prompt, prefix, tags))

    def answer(self, reply: str) -> str:
        return answer_text(reply, self.tags, self.opened)

    def judge(self, detector: Any) -> AnswerOnly:
        """`detector`, seeing only the answer of each reply."""
        return AnswerOnly(detector, self.tags, self.opened)


DEFAULT_FORMAT = ResponseFormat()  # no prefix: a model that does not think
