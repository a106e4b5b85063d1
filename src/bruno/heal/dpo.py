"""Healing: DPO with a LoRA adapter on the ablated model, then merged back into plain weights.

Preference pairs come from the models themselves, on training prompts only: for a harmful prompt the ablated model's
compliant reply is *chosen* and the base model's actual refusal is *rejected*; optionally, for a harmless prompt the base
model's answer is *chosen* and a degraded copy of it (truncated or word-shuffled) is *rejected*, which pulls the ablated
model back towards the base's harmless behaviour. Training uses TRL's `DPOTrainer` with `ref_model=None` and a
`peft_config`, so the reference is the ablated model with the adapter disabled (no second copy of the model).

DPO's implicit KL term anchors to that reference, the ablated model, not to the base. With `distill_weight` > 0 the
loss also holds a distillation term towards the base: KL(base || model) of the first response token's distribution on
harmless train prompts the base answers (the same quantity the search minimises on val prompts), from base log-probs
computed once before training.

A thinking model (`bruno.model.thinking`): every prompt, of the pairs' replies, the checkpoint probe and the distillation
term, ends with the base model's response prefix, refusals are judged on the answer only, and the pairs' assistant
messages hold the prefix followed by the reply (what the model continues the generation prompt with).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bruno.config import schema_defaults
from bruno.errors import BrunoError
from bruno.evaluation.refusal import MarkerDetector
from bruno.model.generation import (
    Batch,
    first_token_logprobs,
    generate_greedy,
    kl_divergence,
    model_device,
    next_token_logits,
)

log = logging.getLogger(__name__)

# Columns of heal_training_log.csv and the TRL log-history keys they come from.
TRAINING_LOG_COLUMNS = {
    "step": "step",
    "epoch": "epoch",
    "loss": "loss",
    "reward_margin": "rewards/margins",
    "reward_accuracy": "rewards/accuracies",
    "reward_chosen": "rewards/chosen",
    "reward_rejected": "rewards/rejected",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
    "distill_kl": "distill_kl",
}


_default = schema_defaults("healing")


@dataclass(frozen=True)
class HealingSettings:
    """The `healing` config section (see config/schema.yaml for meanings and defaults)."""

    enable_post_abliteration_finetuning: bool = _default("enable_post_abliteration_finetuning")
    dpo_learning_rate: float = _default("dpo_learning_rate")
    dpo_beta: float = _default("dpo_beta")
    dpo_loss_type: list[str] = _default("dpo_loss_type")
    dpo_loss_weights: list[float] | None = _default("dpo_loss_weights")
    dpo_epochs: float = _default("dpo_epochs")
    dpo_max_steps: int | None = _default("dpo_max_steps")
    lr_scheduler_type: str = _default("lr_scheduler_type")
    lora_r: int = _default("lora_r")
    lora_alpha: float = _default("lora_alpha")
    lora_dropout: float = _default("lora_dropout")
    lora_target_modules: str | list[str] = _default("lora_target_modules")
    batch_size: int = _default("batch_size")
    gradient_accumulation_steps: int = _default("gradient_accumulation_steps")
    max_length: int = _default("max_length")
    n_harmful_pairs: int | None = _default("n_harmful_pairs")
    include_harmless_pairs: bool = _default("include_harmless_pairs")
    n_harmless_pairs: int | None = _default("n_harmless_pairs")
    harmless_degradation: str = _default("harmless_degradation")
    distill_weight: float = _default("distill_weight")
    distill_batch_size: int = _default("distill_batch_size")
    max_new_tokens: int = _default("max_new_tokens")
    checkpoint_every: int | None = _default("checkpoint_every")
    checkpoint_val_prompts: int = _default("checkpoint_val_prompts")
    checkpoint_max_refusal_increase: float = _default("checkpoint_max_refusal_increase")
    seed: int | None = _default("seed")

    def __post_init__(self) -> None:
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise BrunoError(
                "config key 'healing.checkpoint_every' must be at least 1, or null to keep the last step."
            )
        if self.dpo_loss_weights is not None and len(self.dpo_loss_weights) != len(self.dpo_loss_type):
            raise BrunoError(
                f"config key 'healing.dpo_loss_weights' has {len(self.dpo_loss_weights)} entries but "
                f"'healing.dpo_loss_type' has {len(self.dpo_loss_type)}; give one weight per loss type or null."
            )


# ----------------------------------------------------------------------------------------------------------------------
# Preference pairs


# ----------------------------------------------------------------------------------------------------------------------
# DPO training


@dataclass
class FirstTokenDistillation:
    """KL(base || model) of the first response token on a seeded random mini-batch of prompts per training step.

    `batch` holds the left-padded prompts (one batch), `base_logprobs` the base model's log-softmax at their first
    response position ([n, vocab], CPU)."""

    batch: Batch
    base_logprobs: torch.Tensor
    weight: float
    batch_size: int
    seed: int
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    def loss(self, model: nn.Module) -> torch.Tensor:
        n = len(self.batch)
        rows = torch.randperm(n, generator=self.generator)[: min(self.batch_size, n)]
        device = model_device(model)
        mask = self.batch.attention_mask[rows]
        width = int(mask.sum(1).max())  # drop the columns that are padding in every drawn row
        sub = Batch(self.batch.input_ids[rows, -width:].to(device), mask[:, -width:].to(device))
        logprobs = torch.log_softmax(next_token_logits(model, sub).float(), dim=-1)
        target = self.base_logprobs[rows].to(device)
        return torch.nn.functional.kl_div(logprobs, target, reduction="batchmean", log_target=True)


def dpo_trainer_class() -> type:
    """TRL's DPOTrainer, plus the optional distillation term (logged as `distill_kl`) in training steps."""
    from trl import DPOTrainer

    class HealingDPOTrainer(DPOTrainer):
        def __init__(self, *args: Any, distillation: FirstTokenDistillation | None = None, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.distillation = distillation

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.distillation is None or not model.training:
                return result
            loss, outputs = result if return_outputs else (result, None)
            kl = self.distillation.loss(model)
            self._metrics["train"]["distill_kl"].append(kl.item())
            loss = loss + self.distillation.weight * kl
            return (loss, outputs) if return_outputs else loss

    return HealingDPOTrainer


def precision(device: torch.device) -> dict[str, bool]:
    """Mixed precision for the trainer: bf16 on GPUs that support it, fp16 on older GPUs, none on CPU."""
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        return {"bf16": bf16, "fp16": not bf16}
    return {"bf16": False, "fp16": False}


def dpo_config(settings: HealingSettings, seed: int, device: torch.device, output_dir: str) -> Any:
    from trl import DPOConfig

    return DPOConfig(
        output_dir=output_dir,
        learning_rate=settings.dpo_learning_rate,
        beta=settings.dpo_beta,
        loss_type=list(settings.dpo_loss_type),
        loss_weights=list(settings.dpo_loss_weights) if settings.dpo_loss_weights is not None else None,
        num_train_epochs=settings.dpo_epochs,
        max_steps=settings.dpo_max_steps if settings.dpo_max_steps is not None else -1,
        lr_scheduler_type=settings.lr_scheduler_type,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        max_length=settings.max_length,
        seed=seed,
        data_seed=seed,
        use_cpu=device.type == "cpu",
        # Activation checkpointing only pays off for memory-bound GPU runs; on CPU it is pure overhead.
        activation_checkpointing=device.type == "cuda",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        **precision(device),
    )


def lora_config(settings: HealingSettings) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=settings.lora_target_modules,
        task_type="CAUSAL_LM",
    )


def training_log_rows(log_history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per logged training step (the trainer's final summary entry is left out)."""
    rows = []
    for entry in log_history:
        if "loss" not in entry:
            continue
        rows.append({column: entry.get(key, math.nan) for column, key in TRAINING_LOG_COLUMNS.items()})
    return rows


@dataclass
class CheckpointProbe:
    """Checkpoint selection on validation prompts: every `every` steps (and before the first) it measures the
    first-token KL from the base model on harmless val prompts and the refusal rate on harmful val prompts, and keeps
    the adapter of the lowest-KL checkpoint whose refusal rate is at most the untrained adapter's plus
    `max_refusal_increase`. Step 0 (the adapter is still zero) is the ablated model itself, so the selected model is
    never worse than the ablated one on these prompts."""

    tokenizer: Any
    kl_batches: list
    base_logprobs: torch.Tensor
    refusal_batches: list
    detector: MarkerDetector
    max_new_tokens: int
    every: int
    max_refusal_increase: float
    history: list[dict[str, float]] = field(default_factory=list)
    best_step: int | None = None
    best_kl: float = math.inf
    best_state: dict[str, torch.Tensor] | None = None

    def measure(self, model: nn.Module) -> tuple[float, float]:
        was_training = model.training
        model.eval()
        try:
            kl = kl_divergence(self.base_logprobs, first_token_logprobs(model, self.kl_batches))
            with torch.inference_mode():
                replies = generate_greedy(model, self.tokenizer, self.refusal_batches, self.max_new_tokens)
        finally:
            model.train(was_training)
        verdicts = self.detector.classify(replies)
        return kl, sum(v.is_refusal for v in verdicts) / max(len(verdicts), 1)

    def record(self, step: int, model: nn.Module) -> None:
        from peft.utils import get_peft_model_state_dict

        kl, refusal = self.measure(model)
        within = refusal <= self.refusal_limit(refusal) + 1e-12
        self.history.append(
            {"step": step, "val_kl_divergence": kl, "val_refusal_rate": refusal, "within_guard": within}
        )
        if within and kl < self.best_kl:
            self.best_step, self.best_kl = step, kl
            self.best_state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
        log.info("healing checkpoint step %d: val KL %.4f, val refusal rate %.3f", step, kl, refusal)

    def refusal_limit(self, first_rate: float | None = None) -> float:
        """The highest val refusal rate a checkpoint may have: the untrained adapter's (step 0, or `first_rate` while
        step 0 is being recorded) plus `max_refusal_increase`."""
        first = self.history[0]["val_refusal_rate"] if self.history else first_rate
        if first is None:
            raise BrunoError("CheckpointProbe: no checkpoint recorded yet.")
        return first + self.max_refusal_increase

    def callback(self) -> Any:
        from transformers import TrainerCallback

        probe = self

        class SelectCheckpoint(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ARG002
                if state.global_step % probe.every == 0 or state.global_step >= state.max_steps:
                    probe.record(state.global_step, model)

        return SelectCheckpoint()


def train_dpo(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[dict[str, Any]],
    settings: HealingSettings,
    seed: int,
    probe: CheckpointProbe | None = None,
    distillation: FirstTokenDistillation | None = None,
) -> tuple[nn.Module, list[dict[str, Any]], dict[str, Any]]:
    """DPO with a fresh LoRA adapter on `model`; returns the merged model, the training log rows and a summary.
    With a `probe`, the adapter of the checkpoint it selects is merged instead of the last one; with a
    `distillation`, its weighted term is added to the loss of every training step."""
    from datasets import Dataset
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    if not pairs:
        raise BrunoError("DPO healing got no preference pairs (see the pair counts in the log).")
    device = model_device(model)
    dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    with tempfile.TemporaryDirectory(prefix="bruno-dpo-") as output_dir:
        trainer = dpo_trainer_class()(
            model=model,
            ref_model=None,
            args=dpo_config(settings, seed, device, output_dir),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora_config(settings),
            callbacks=[probe.callback()] if probe is not None else None,
            distillation=distillation,
        )
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        start = time.perf_counter()
        if probe is not None:
            probe.record(0, trainer.model)
        result = trainer.train()
        seconds = time.perf_counter() - start
        if probe is not None:
            set_peft_model_state_dict(trainer.model, probe.best_state)
            log.info(
                "healing: merging the adapter of step %d (selected on validation prompts)", probe.best_step
            )
        adapter_norm = float(
            sum(t.float().pow(2).sum() for t in get_peft_model_state_dict(trainer.model).values()) ** 0.5
        )
        merged = trainer.model.merge_and_unload()
    # TRL switches the KV cache off for training; a saved model without it generates slowly.
    merged.config.use_cache = True
    merged.eval()
    summary = {
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "train_loss": result.training_loss,
        "train_seconds": seconds,
        "trainable_parameters": trainable,
        "adapter_norm": adapter_norm,
    }
    if probe is not None:
        summary["selected_step"] = probe.best_step
        summary["checkpoint_refusal_limit"] = probe.refusal_limit()
        summary["checkpoints"] = probe.history
    return merged, training_log_rows(trainer.state.log_history), summary
