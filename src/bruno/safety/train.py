"""The safety-tuning run: load the base model, build the data from it (`bruno.safety.data`), train a LoRA adapter,
merge it, and save a plain model directory.

Loss per batch: cross-entropy on the reply tokens only (prompt and padding are masked with -100), plus
`distill_weight` x KL(untuned || tuned) of the next-token distribution at every reply position of the harmless
examples whose target is the untuned model's own greedy reply. The untuned distribution comes from the same model
with the adapter disabled, so no second copy is held. Logits are computed only at supervised positions (the LM head
over a 49k vocabulary dominates the cost otherwise).

Deterministic for a seed: seeded adapter initialisation, seeded data order and sampling, no dropout; the same thread
count gives the same weights.
"""

from __future__ import annotations

import platform
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bruno.errors import BrunoError
from bruno.io import write_jsonl
from bruno.prompts import Prompt
from bruno.safety.data import Example, build_examples
from bruno.safety.settings import SafetyTuningSettings

IGNORE = -100
TRAINING_EXAMPLES = "training_examples.jsonl"  # what the model was trained on, next to its weights
BUCKET_BATCHES = 8  # batches per length-sorting bucket


def make_batches(
    examples: Sequence[Example], batch_size: int, pad_id: int, rng: random.Random
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Shuffled, length-bucketed, right-padded batches of (input_ids, labels, distill rows). Labels are the input ids
    on reply tokens and -100 on the prompt and the padding."""
    order = list(examples)
    rng.shuffle(order)
    bucket = batch_size * BUCKET_BATCHES
    groups: list[list[Example]] = []
    for start in range(0, len(order), bucket):
        chunk = sorted(order[start : start + bucket], key=lambda e: len(e.prompt_ids) + len(e.reply_ids))
        groups += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(groups)
    batches = []
    for group in groups:
        width = max(len(e.prompt_ids) + len(e.reply_ids) for e in group)
        input_ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        labels = torch.full((len(group), width), IGNORE, dtype=torch.long)
        for row, e in enumerate(group):
            ids = e.prompt_ids + e.reply_ids
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, len(e.prompt_ids) : len(ids)] = torch.tensor(e.reply_ids)
        batches.append((input_ids, labels, torch.tensor([e.distill for e in group])))
    return batches


def example_record(example: Example, tokenizer: Any) -> dict[str, Any]:
    return {
        "prompt_id": example.prompt_id,
        "kind": example.kind,
        "system_prompt": example.system_prompt,
        "reply": tokenizer.decode(example.reply_ids, skip_special_tokens=True),
        "reply_tokens": len(example.reply_ids),
    }


def _supervised_logits(lm: nn.Module, input_ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Logits at the positions that predict a supervised token. Right padding needs no attention mask under the
    causal mask: every supervised position precedes its row's padding."""
    hidden = lm.model(input_ids=input_ids).last_hidden_state[:, :-1]
    return lm.lm_head(hidden[keep]).float()


def position_weights(keep: torch.Tensor, first_token_weight: float) -> torch.Tensor:
    """Loss weight of every supervised position (row-major, as `keep` selects them): `first_token_weight` at each
    row's first reply position, 1 elsewhere."""
    first = keep & (keep.long().cumsum(dim=1) == 1)
    weights = torch.ones(keep.shape)
    weights[first] = first_token_weight
    return weights[keep]


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (values * weights).sum() / weights.sum()


def batch_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    distill_rows: torch.Tensor,
    distill_weight: float,
    first_token_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy on reply tokens + distill_weight x KL(untuned || tuned) over the distill rows' reply positions,
    each a mean over positions with `first_token_weight` on each row's first reply position. `model` is the
    PEFT-wrapped model (its `disable_adapter()` gives the untuned one)."""
    lm = model.get_base_model()
    targets = labels[:, 1:]
    keep = targets != IGNORE
    weights = position_weights(keep, first_token_weight)
    logits = _supervised_logits(lm, input_ids, keep)
    ce = _weighted_mean(F.cross_entropy(logits, targets[keep], reduction="none"), weights)
    parts = {"ce": float(ce.detach())}
    distill_keep = keep & distill_rows[:, None]
    if distill_weight <= 0 or not bool(distill_keep.any()):
        return ce, parts
    # Only the distill rows; their supervised positions come in the same row-major order as in `logits`.
    with torch.no_grad(), model.disable_adapter():
        reference = _supervised_logits(lm, input_ids[distill_rows], distill_keep[distill_rows])
        reference = F.log_softmax(reference, dim=-1)
    in_distill = distill_keep[keep]
    tuned = F.log_softmax(logits[in_distill], dim=-1)
    kl_per_position = (reference.exp() * (reference - tuned)).sum(dim=-1)
    kl = _weighted_mean(kl_per_position, weights[in_distill])
    parts["kl"] = float(kl.detach())
    return ce + distill_weight * kl, parts


def _schedule(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def wrap_lora(model: nn.Module, settings: SafetyTuningSettings, seed: int) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    layers = model.config.num_hidden_layers
    if settings.first_tuned_layer >= layers:
        raise BrunoError(
            f"config key 'safety_tuning.first_tuned_layer' is {settings.first_tuned_layer} but the model has "
            f"{layers} decoder layers; use a value below {layers}."
        )
    torch.manual_seed(seed)
    config = LoraConfig(
        layers_to_transform=list(range(settings.first_tuned_layer, layers)),
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=0.0,
        target_modules=list(settings.lora_target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def train(
    model: nn.Module,
    examples: Sequence[Example],
    settings: SafetyTuningSettings,
    seed: int,
    pad_id: int,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train the PEFT-wrapped `model` in place; returns steps, seconds and the mean loss parts per epoch."""
    epochs = [
        make_batches(examples, settings.batch_size, pad_id, random.Random(f"{seed}-safety-epoch-{epoch}"))
        for epoch in range(settings.epochs)
    ]
    total = sum(len(batches) for batches in epochs)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(settings.warmup_steps, total))
    model.train()
    history = []
    started = time.perf_counter()
    for epoch, batches in enumerate(epochs):
        sums: dict[str, float] = {}
        epoch_start = time.perf_counter()
        for input_ids, labels, distill_rows in batches:
            loss, parts = batch_loss(
                model, input_ids, labels, distill_rows, settings.distill_weight, settings.first_token_weight
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value
        means = {key: round(value / len(batches), 5) for key, value in sums.items()}
        history.append(means)
        log(
            f"safety tuning epoch {epoch + 1}/{settings.epochs}: {means} ({len(batches)} steps, "
            f"{time.perf_counter() - epoch_start:.1f} s)"
        )
    model.eval()
    return {"steps": total, "seconds": round(time.perf_counter() - started, 2), "loss_per_epoch": history}


def safety_tune(
    model_dir: str | Path,
    out_dir: str | Path,
    harmful: Sequence[Prompt],
    harmless: Sequence[Prompt],
    settings: SafetyTuningSettings,
    seed: int,
    threads: int = 2,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fine-tune the model in `model_dir` on the train prompts and save the merged model to `out_dir`; returns the
    JSON-able training summary (recipe, seed, steps, seconds, train-set sizes, losses, versions)."""
    import peft
    import transformers

    from bruno.model.loading import ModelSettings, load_model

    started, cpu_started = time.perf_counter(), time.process_time()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        model, tokenizer = load_model(
            model_dir, ModelSettings(name=str(model_dir), device="cpu", dtype="float32")
        )
        torch.manual_seed(seed)
        data_start = time.perf_counter()
        examples, sizes = build_examples(model, tokenizer, harmful, harmless, settings, seed, log)
        data_seconds = round(time.perf_counter() - data_start, 2)
        log(
            f"safety tuning: {len(examples)} examples {sizes} in {data_seconds} s; seed {seed}, {threads} thread(s)"
        )
        wrapped = wrap_lora(model, settings, seed)
        training = train(wrapped, examples, settings, seed, tokenizer.pad_token_id, log)
        merged = wrapped.merge_and_unload()
        merged.config.use_cache = True
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        merged.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        write_jsonl(out_dir / TRAINING_EXAMPLES, [example_record(e, tokenizer) for e in examples])
    finally:
        torch.set_num_threads(previous_threads)
    seconds = round(time.perf_counter() - started, 2)
    # CPU seconds of all threads: on a shared machine, wall time grows with the other jobs, this does not.
    cpu_seconds = round(time.process_time() - cpu_started, 2)
    log(f"safety tuning: saved {out_dir} in {seconds} s ({cpu_seconds} CPU s)")
    return {
        "recipe": settings.to_dict(),
        "seed": seed,
        "threads": threads,
        "steps": training["steps"],
        "seconds": {
            "total": seconds,
            "data": data_seconds,
            "training": training["seconds"],
            "cpu": cpu_seconds,
        },
        "train_set": sizes,
        "loss_per_epoch": training["loss_per_epoch"],
        "reply_tokens_per_epoch": sum(len(e.reply_ids) for e in examples),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "lr_schedule": "linear warm-up, linear decay",
        "loss": "cross-entropy on reply tokens + distill_weight x KL(untuned || tuned) on greedy harmless replies",
    }
