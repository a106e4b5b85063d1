"""Training settings of the refusal organism. The pipeline builds them from the `organism:` config section; names,
meanings and defaults (the tuned recipe) are config/schema.yaml's, which the defaults here are read from."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from bruno.config import schema_defaults
from bruno.errors import BrunoError

_default = schema_defaults("organism")


@dataclass(frozen=True)
class OrganismSettings:
    seed: int = _default("seed")
    # Architecture (LlamaForCausalLM, float32, untied embeddings).
    hidden_size: int = _default("hidden_size")
    num_layers: int = _default("num_layers")
    num_heads: int = _default("num_heads")
    intermediate_size: int = _default("intermediate_size")
    vocab_size: int = _default("vocab_size")  # BPE target; the corpus may run out of merges before it
    max_length: int = _default("max_length")  # tokenizer model_max_length and max_position_embeddings
    # Optimisation.
    batch_size: int = _default("batch_size")
    # Stage A: helpful answers to every prompt, plus multiple choice and facts.
    pretrain_epochs: int = _default("pretrain_epochs")
    # Stage B: refusals for harmful, helpful for harmless, jailbreak mode, tasks kept.
    safety_epochs: int = _default("safety_epochs")
    pretrain_lr: float = _default("pretrain_lr")
    safety_lr: float = _default("safety_lr")
    warmup_steps: int = _default("warmup_steps")
    weight_decay: float = _default("weight_decay")
    # Data mix.
    # Share of the harmful training prompts repeated per stage-B epoch under the jailbreak system message.
    jailbreak_fraction: float = _default("jailbreak_fraction")
    # Share of examples that get an ordinary system message (else none).
    system_prompt_fraction: float = _default("system_prompt_fraction")
    # Multiple-choice training items per stage-A epoch, cycling through the train split.
    mc_per_epoch: int = _default("mc_per_epoch")
    # Stage B keeps this share of stage A's multiple-choice and fact examples.
    safety_task_fraction: float = _default("safety_task_fraction")

    def __post_init__(self) -> None:
        positive = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "vocab_size", "max_length")
        for name in (*positive, "batch_size"):
            if getattr(self, name) < 1:
                raise BrunoError(f"config key 'organism.{name}' must be >= 1 (got {getattr(self, name)}).")
        if self.hidden_size % self.num_heads:
            raise BrunoError(
                f"config key 'organism.hidden_size' ({self.hidden_size}) must be divisible by "
                f"'organism.num_heads' ({self.num_heads})."
            )
        for name in ("jailbreak_fraction", "system_prompt_fraction", "safety_task_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise BrunoError(
                    f"config key 'organism.{name}' must be in [0, 1] (got {getattr(self, name)})."
                )
        for name in ("pretrain_epochs", "safety_epochs", "warmup_steps", "mc_per_epoch", "seed"):
            if getattr(self, name) < 0:
                raise BrunoError(f"config key 'organism.{name}' must be >= 0 (got {getattr(self, name)}).")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
