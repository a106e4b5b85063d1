"""The multiple-choice scorer the config names: letter log-likelihood (`bruno.evaluation.capability`) or cloze
(`bruno.evaluation.cloze`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bruno.errors import BrunoError
from bruno.evaluation.capability import SCORINGS, MCQuestion, MMLUEvaluator, MMLUSettings
from bruno.evaluation.cloze import ClozeEvaluator


def build_evaluator(
    settings: MMLUSettings,
    tokenizer: Any,
    questions: Sequence[MCQuestion],
    shots: Mapping[str, Sequence[MCQuestion]] | None = None,
    system_prompt: str | None = None,
    response_prefix: str = "",
) -> Any:
    """The evaluator `settings.scoring` names (letter: `MMLUEvaluator`; cloze: `bruno.evaluation.cloze.ClozeEvaluator`), with the
    configured chat-template choice and batch size; chat prompts end with `response_prefix`."""
    if settings.scoring not in SCORINGS:
        raise BrunoError(
            f"config key 'evaluation.mmlu.scoring': {settings.scoring!r} is not one of {', '.join(SCORINGS)}."
        )
    args = (tokenizer, questions, settings.use_chat_template, shots, system_prompt, settings.batch_size)
    if settings.scoring == "cloze":
        return ClozeEvaluator(*args, response_prefix=response_prefix)
    return MMLUEvaluator(*args, response_prefix=response_prefix)
