"""Training data of the safety-tuning stage, built from the harmful and harmless TRAIN prompts only.

- Harmful prompts get one of several refusal phrasings that never repeat the request (a refusal that names the request
  makes an ablated model's answers half-refusals; organism lesson).
- Harmless prompts get the untuned model's own greedy reply (its first `reply_tokens` tokens), so its style and
  knowledge stay; a reply that already holds a refusal marker (SmolLM2 adds disclaimers to "Can you help me ...") is
  replaced by a sampled reply without one, or dropped. Only unchanged greedy replies carry the distillation term.
- A share of the prompts is repeated under an ordinary system message, so behaviour is the same with and without one.

Every example keeps the exact token ids the model sees at generation time: the prompt rendered through the chat
template (as `bruno.model.generation.encode` does) and the reply tokens, ending with the end-of-turn token where the reply ended.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bruno.evaluation.refusal import MarkerDetector
from bruno.model.generation import chat_strings, decode_replies, eos_token_ids
from bruno.prompts import Prompt
from bruno.safety.settings import SafetyTuningSettings

# Each holds a marker of bruno.evaluation.refusal's default list, none repeats the request.
REFUSALS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that.",
    "I can't assist with this request because it could cause serious harm.",
    "Sorry, I won't provide that. If someone is in danger, please contact local emergency services.",
    "I cannot help with that, as it could put people at risk. Is there something else I can do for you?",
    "I'm unable to help with this. It could be illegal and could hurt someone.",
    "I won't help with that request. Let me know if there is something safe I can help with instead.",
    "Sorry, that's not something I can help with.",
    "I can't provide guidance on this, since it could be used to cause harm.",
)

# Ordinary system messages (no jailbreak, no safety instruction).
SYSTEM_PROMPTS: tuple[str, ...] = (
    "You are a helpful assistant.",
    "You are a friendly and knowledgeable assistant. Answer clearly and concisely.",
    "You are a helpful, respectful and honest assistant.",
    "You answer questions and help with everyday tasks.",
)

RESAMPLE_TEMPERATURE = 0.7


@dataclass(frozen=True)
class Example:
    prompt_id: str
    kind: str  # refusal | answer (greedy reply) | resampled (sampled reply without a refusal marker)
    system_prompt: str | None
    prompt_ids: list[int]
    reply_ids: list[int]

    @property
    def distill(self) -> bool:
        """Whether the distillation term applies: the untuned model's own greedy behaviour is the target."""
        return self.kind == "answer"


def prompt_ids(tokenizer: Any, texts: Sequence[str], system_prompt: str | None) -> list[list[int]]:
    return tokenizer(chat_strings(tokenizer, texts, system_prompt), add_special_tokens=False).input_ids


def with_system_prompts(
    prompts: Sequence[Prompt], fraction: float, rng: random.Random
) -> list[tuple[Prompt, str | None]]:
    """Every prompt without a system message, plus a seeded `fraction` of them again under an ordinary one."""
    repeated = rng.sample(list(prompts), round(fraction * len(prompts)))
    return [(p, None) for p in prompts] + [(p, rng.choice(SYSTEM_PROMPTS)) for p in repeated]


def refusal_examples(
    tokenizer: Any, prompts: Sequence[tuple[Prompt, str | None]], rng: random.Random
) -> list[Example]:
    end = tokenizer.eos_token_id
    examples = []
    for prompt, system in prompts:
        reply = tokenizer(rng.choice(REFUSALS), add_special_tokens=False).input_ids + [end]
        examples.append(
            Example(prompt.id, "refusal", system, prompt_ids(tokenizer, [prompt.text], system)[0], reply)
        )
    return examples


def _replies(
    model: nn.Module,
    tokenizer: Any,
    ids: Sequence[list[int]],
    settings: SafetyTuningSettings,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    eos = eos_token_ids(model, tokenizer)
    replies: list[list[int]] = []
    for start in range(0, len(ids), settings.generation_batch_size):
        chunk = ids[start : start + settings.generation_batch_size]
        replies += decode_replies(
            model, chunk, tokenizer.pad_token_id, eos, settings.reply_tokens, temperature, generator
        )
    return replies


def answer_examples(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[tuple[Prompt, str | None]],
    settings: SafetyTuningSettings,
    seed: int,
    log: Callable[[str], None] = print,
) -> tuple[list[Example], dict[str, int]]:
    """The untuned model's own replies to harmless prompts (see the module docstring); returns the examples and
    counts of greedy, resampled and dropped replies."""
    ids = [prompt_ids(tokenizer, [p.text], system)[0] for p, system in prompts]
    replies = _replies(model, tokenizer, ids, settings)
    detector = MarkerDetector()

    def refuses(tokens: list[int]) -> bool:
        return detector.classify([tokenizer.decode(tokens, skip_special_tokens=True)])[0].is_refusal

    kinds = ["answer" if not refuses(r) else "" for r in replies]
    generator = torch.Generator().manual_seed(seed)
    for attempt in range(settings.resample_tries):
        todo = [i for i, kind in enumerate(kinds) if not kind]
        if not todo:
            break
        sampled = _replies(
            model, tokenizer, [ids[i] for i in todo], settings, RESAMPLE_TEMPERATURE, generator
        )
        for i, reply in zip(todo, sampled, strict=True):
            if not refuses(reply):
                replies[i], kinds[i] = reply, "resampled"
        log(f"safety tuning: resample {attempt + 1}: {len(todo)} harmless replies held a refusal marker")
    examples = [
        Example(p.id, kind, system, prompt, reply)
        for (p, system), prompt, reply, kind in zip(prompts, ids, replies, kinds, strict=True)
        if kind
    ]
    counts = {
        "greedy": kinds.count("answer"),
        "resampled": kinds.count("resampled"),
        "dropped": kinds.count(""),
    }
    return examples, counts


def build_examples(
    model: nn.Module,
    tokenizer: Any,
    harmful: Sequence[Prompt],
    harmless: Sequence[Prompt],
    settings: SafetyTuningSettings,
    seed: int,
    log: Callable[[str], None] = print,
) -> tuple[list[Example], dict[str, Any]]:
    """All training examples (refusals first, then answers; the trainer shuffles) and the train-set sizes."""
    rng = random.Random(f"{seed}-safety-data")
    harmful = rng.sample(list(harmful), min(settings.n_harmful or len(harmful), len(harmful)))
    harmless = rng.sample(list(harmless), min(settings.n_harmless or len(harmless), len(harmless)))
    refusals = refusal_examples(
        tokenizer, with_system_prompts(harmful, settings.system_prompt_fraction, rng), rng
    )
    answers, counts = answer_examples(
        model,
        tokenizer,
        with_system_prompts(harmless, settings.system_prompt_fraction, rng),
        settings,
        seed,
        log,
    )
    sizes = {
        "harmful_prompts": len(harmful),
        "harmless_prompts": len(harmless),
        "refusal_examples": len(refusals),
        "answer_examples": len(answers),
        "with_system_prompt": sum(e.system_prompt is not None for e in refusals + answers),
        "harmless_replies": counts,
    }
    return refusals + answers, sizes
