"""Settings of the safety-tuning stage (the `safety_tuning:` config section; meanings and defaults documented in
config/schema.yaml). The defaults are the measured recipe of docs/safety-tuning.md."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bruno.errors import BrunoError


@dataclass(frozen=True)
class SafetyTuningSettings:
    enabled: bool = False
    seed: int | None = None  # None: the run's top-level seed
    # LoRA adapter, merged into plain weights after training.
    lora_r: int = 16
    lora_alpha: float = 32
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    # Adapters only on decoder layers from this index on: the backward pass stops there (a third less compute on
    # SmolLM2 from layer 10 of 30), and the refusal forms where the pipeline later looks for it.
    first_tuned_layer: int = 10
    # Optimisation: AdamW, linear warm-up then linear decay to 0.
    learning_rate: float = 1e-3
    epochs: int = 3
    batch_size: int = 8
    warmup_steps: int = 10
    weight_decay: float = 0.0
    # Data mix.
    n_harmful: int | None = None  # harmful train prompts used (None: all)
    n_harmless: int | None = None  # harmless train prompts used (None: all)
    system_prompt_fraction: float = (
        0.25  # share of prompts repeated once more under an ordinary system message
    )
    reply_tokens: int = 24  # greedy tokens of the untuned model's reply kept as a harmless target
    resample_tries: int = (
        3  # sampled retries (T 0.7) for a harmless reply that holds a refusal marker; then dropped
    )
    # Weight of KL(untuned || tuned) on every harmless reply position, beside the cross-entropy on the reply tokens.
    distill_weight: float = 1.0
    # Weight of the first reply position (where the model decides to refuse or answer) against 1 for the others.
    first_token_weight: float = 5.0
    generation_batch_size: int = 64

    def __post_init__(self) -> None:
        for name in ("lora_r", "epochs", "batch_size", "reply_tokens", "generation_batch_size"):
            if getattr(self, name) < 1:
                raise BrunoError(
                    f"config key 'safety_tuning.{name}' must be >= 1 (got {getattr(self, name)})."
                )
        for name in (
            "first_tuned_layer",
            "warmup_steps",
            "resample_tries",
            "weight_decay",
            "distill_weight",
            "first_token_weight",
        ):
            if getattr(self, name) < 0:
                raise BrunoError(
                    f"config key 'safety_tuning.{name}' must be >= 0 (got {getattr(self, name)})."
                )
        for name in ("n_harmful", "n_harmless"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BrunoError(f"config key 'safety_tuning.{name}' must be >= 1 or null (got {value}).")
        if not 0.0 <= self.system_prompt_fraction <= 1.0:
            raise BrunoError(
                f"config key 'safety_tuning.system_prompt_fraction' must be in [0, 1] (got {self.system_prompt_fraction})."
            )
        if self.learning_rate <= 0:
            raise BrunoError(
                f"config key 'safety_tuning.learning_rate' must be > 0 (got {self.learning_rate})."
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
