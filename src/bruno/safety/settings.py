"""Settings of the safety-tuning stage (the `safety_tuning:` config section; meanings and defaults are config/schema.yaml's,
which the defaults here are read from). The defaults are the measured recipe of docs/safety-tuning.md."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from bruno.config import schema_defaults
from bruno.errors import BrunoError

_default = schema_defaults("safety_tuning")


@dataclass(frozen=True)
class SafetyTuningSettings:
    enabled: bool = _default("enabled")
    seed: int | None = _default("seed")  # None: the run's top-level seed
    # LoRA adapter, merged into plain weights after training.
    lora_r: int = _default("lora_r")
    lora_alpha: float = _default("lora_alpha")
    lora_target_modules: list[str] = _default("lora_target_modules")
    # Adapters only on decoder layers from this index on: the backward pass stops there (a third less compute on
    # SmolLM2 from layer 10 of 30), and the refusal forms where the pipeline later looks for it.
    first_tuned_layer: int = _default("first_tuned_layer")
    # Optimisation: AdamW, linear warm-up then linear decay to 0.
    learning_rate: float = _default("learning_rate")
    epochs: int = _default("epochs")
    batch_size: int = _default("batch_size")
    warmup_steps: int = _default("warmup_steps")
    weight_decay: float = _default("weight_decay")
    # Data mix.
    n_harmful: int | None = _default("n_harmful")  # harmful train prompts used (None: all)
    n_harmless: int | None = _default("n_harmless")  # harmless train prompts used (None: all)
    # Share of prompts repeated once more under an ordinary system message.
    system_prompt_fraction: float = _default("system_prompt_fraction")
    # Greedy tokens of the untuned model's reply kept as a harmless target.
    reply_tokens: int = _default("reply_tokens")
    # Sampled retries (T 0.7) for a harmless reply that holds a refusal marker; then dropped.
    resample_tries: int = _default("resample_tries")
    # Weight of KL(untuned || tuned) on every harmless reply position, beside the cross-entropy on the reply tokens.
    distill_weight: float = _default("distill_weight")
    # Weight of the first reply position (where the model decides to refuse or answer) against 1 for the others.
    first_token_weight: float = _default("first_token_weight")
    generation_batch_size: int = _default("generation_batch_size")

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
