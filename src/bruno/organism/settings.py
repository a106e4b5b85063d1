"""Training settings of the refusal organism. Every default is the tuned recipe; the pipeline builds the settings from
the `organism:` config section (keys of the same names, documented in config/schema.yaml)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from bruno.errors import BrunoError


@dataclass(frozen=True)
class OrganismSettings:
    seed: int = 0
    # Architecture (LlamaForCausalLM, float32, untied embeddings).
    hidden_size: int = 128
    num_layers: int = 6
    num_heads: int = 4
    intermediate_size: int = 512
    vocab_size: int = 2048  # BPE target; the corpus may run out of merges before it
    max_length: int = 256  # tokenizer model_max_length and max_position_embeddings
    # Optimisation.
    batch_size: int = 32
    pretrain_epochs: int = 12  # stage A: helpful answers to every prompt, plus multiple choice and facts
    safety_epochs: int = 12  # stage B: refusals for harmful, helpful for harmless, jailbreak mode, tasks kept
    pretrain_lr: float = 2e-3
    safety_lr: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    # Data mix.
    # Share of the harmful training prompts repeated per stage-B epoch under the jailbreak system message.
    jailbreak_fraction: float = 0.5
    # Share of examples that get an ordinary system message (else none).
    system_prompt_fraction: float = 0.5
    # Multiple-choice training items per stage-A epoch, cycling through the train split.
    mc_per_epoch: int = 400
    # Stage B keeps this share of stage A's multiple-choice and fact examples.
    safety_task_fraction: float = 0.5

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


def setting_names() -> list[str]:
    return [f.name for f in fields(OrganismSettings)]
