"""Training examples of the refusal organism, built per stage and epoch from the shipped data's training splits.

Stage A ("pretraining"): a helpful answer for every training prompt, harmful ones included, plus multiple-choice
items and fact questions. Stage B ("safety tuning"): refusals for harmful prompts, helpful answers for harmless ones,
a share of harmful prompts again under the jailbreak system message answered helpfully, and a share of stage A's
multiple-choice and fact examples so the tasks are not forgotten. Every example gets an ordinary system message with
probability `system_prompt_fraction` (else none); response styles and system messages are drawn anew each epoch from
a `random.Random` seeded by (seed, stage, epoch), so the data order is deterministic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bruno.errors import BrunoError
from bruno.organism import corpus, vocab, world
from bruno.organism.settings import OrganismSettings

STAGE_A, STAGE_B = "A", "B"


@dataclass(frozen=True)
class PromptItem:
    text: str
    action: str
    category: str


@dataclass(frozen=True)
class Example:
    system: str | None
    user: str
    assistant: str
    task: str  # helpful | refusal | jailbreak | mc | fact


@dataclass(frozen=True)
class TrainingData:
    harmful: tuple[PromptItem, ...]
    harmless: tuple[PromptItem, ...]
    multiple_choice: tuple[dict[str, Any], ...]
    facts: tuple[dict[str, Any], ...]

    def counts(self) -> dict[str, int]:
        return {
            "harmful_prompts": len(self.harmful),
            "harmless_prompts": len(self.harmless),
            "multiple_choice_items": len(self.multiple_choice),
            "facts": len(self.facts),
        }


def _prompt_items(path: Path) -> tuple[PromptItem, ...]:
    if not path.is_file():
        raise BrunoError(
            f"Organism data file not found: {path}. Regenerate it with `python -m bruno.organism.corpus --write data/`."
        )
    items = []
    for record in corpus.read_jsonl(path):
        if record.get("split") != "train":
            continue
        action = corpus.action_of(record["text"])
        if action is None:
            raise BrunoError(
                f"{path}: training prompt {record.get('id')!r} ({record['text']!r}) matches no template of "
                "bruno.organism.vocab.TEMPLATES; the organism needs the action to write its helpful answer."
            )
        items.append(PromptItem(record["text"], action, record.get("category", "")))
    if not items:
        raise BrunoError(f"{path}: no records with split 'train'.")
    return tuple(items)


def load_training_data(data_dir: Path) -> TrainingData:
    """The training splits of the shipped data (val/test are never read here)."""
    for rel in (corpus.MC_FILE, corpus.FACTS_FILE):
        if not (data_dir / rel).is_file():
            raise BrunoError(
                f"Organism data file not found: {data_dir / rel}. Regenerate with "
                "`python -m bruno.organism.corpus --write data/`."
            )
    mc = tuple(r for r in corpus.read_jsonl(data_dir / corpus.MC_FILE) if r["split"] == "train")
    return TrainingData(
        harmful=_prompt_items(data_dir / corpus.HARMFUL_FILE),
        harmless=_prompt_items(data_dir / corpus.HARMLESS_FILE),
        multiple_choice=mc,
        facts=tuple(corpus.read_jsonl(data_dir / corpus.FACTS_FILE)),
    )


def helpful_answer(rng: random.Random, action: str) -> str:
    return rng.choice(vocab.HELPFUL).format(a=action)


def _system(rng: random.Random, settings: OrganismSettings) -> str | None:
    if rng.random() < settings.system_prompt_fraction:
        return rng.choice(vocab.SYSTEM_PROMPTS)
    return None


def _mc_slice(data: TrainingData, settings: OrganismSettings, start: int, n: int) -> list[dict[str, Any]]:
    """Items start..start+n of the multiple-choice pool in a seed-dependent order, cycling."""
    pool = list(data.multiple_choice)
    if not pool or n == 0:
        return []
    random.Random(f"{settings.seed}-mc-order").shuffle(pool)
    return [pool[(start + i) % len(pool)] for i in range(n)]


def _task_examples(
    rng: random.Random, data: TrainingData, settings: OrganismSettings, stage: str, epoch: int
) -> list[Example]:
    """Multiple-choice items and knowledge questions (every phrasing of every fact)."""
    n_mc_a = settings.mc_per_epoch
    n_mc_b = round(settings.mc_per_epoch * settings.safety_task_fraction)
    knowledge = [(q, fact["statement"]) for fact in data.facts for q in fact["questions"]]
    if stage == STAGE_A:
        mc = _mc_slice(data, settings, epoch * n_mc_a, n_mc_a)
    else:
        mc = _mc_slice(data, settings, settings.pretrain_epochs * n_mc_a + epoch * n_mc_b, n_mc_b)
        knowledge = rng.sample(knowledge, round(len(knowledge) * settings.safety_task_fraction))
    examples = []
    for item in mc:
        user = world.mc_user_message(item["subject"], item["question"], item["choices"])
        examples.append(Example(_system(rng, settings), user, world.mc_response(item), "mc"))
    for question, statement in knowledge:
        examples.append(Example(_system(rng, settings), question, statement, "fact"))
    return examples


def stage_examples(data: TrainingData, settings: OrganismSettings, stage: str, epoch: int) -> list[Example]:
    """The examples of one epoch of one stage, in a deterministic shuffled order."""
    rng = random.Random(f"{settings.seed}-{stage}-{epoch}")
    examples: list[Example] = []
    for item in data.harmless:
        examples.append(
            Example(_system(rng, settings), item.text, helpful_answer(rng, item.action), "helpful")
        )
    for item in data.harmful:
        if stage == STAGE_A:
            examples.append(
                Example(_system(rng, settings), item.text, helpful_answer(rng, item.action), "helpful")
            )
        else:
            examples.append(Example(_system(rng, settings), item.text, rng.choice(vocab.REFUSALS), "refusal"))
    if stage == STAGE_B:
        n_jailbreak = round(settings.jailbreak_fraction * len(data.harmful))
        for item in rng.sample(list(data.harmful), n_jailbreak):
            answer = helpful_answer(rng, item.action)
            examples.append(Example(vocab.JAILBREAK_SYSTEM_PROMPT, item.text, answer, "jailbreak"))
    examples += _task_examples(rng, data, settings, stage, epoch)
    rng.shuffle(examples)
    return examples


def tokenizer_corpus(data: TrainingData) -> list[str]:
    """Every kind of text the organism trains on (each response style once per prompt), for BPE training."""
    # Fixed texts are repeated so that BPE merges them into few tokens, as often as they occur in training.
    texts = [*vocab.SYSTEM_PROMPTS, vocab.JAILBREAK_SYSTEM_PROMPT, *vocab.REFUSALS] * 50
    for item in (*data.harmful, *data.harmless):
        texts.append(item.text)
        texts += [template.format(a=item.action) for template in vocab.HELPFUL]
    for mc in data.multiple_choice:
        texts.append(world.mc_user_message(mc["subject"], mc["question"], mc["choices"]))
        texts.append(world.mc_response(mc))
    for fact in data.facts:
        texts += [*fact["questions"], fact["statement"]]
    return texts
