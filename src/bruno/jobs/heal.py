"""Stage `heal`: build DPO preference pairs from the base and ablated models, train a LoRA adapter with DPO on the
ablated model, merge it and save a normal HF model directory (atomically), the pairs and the training curve.

The response prefix is resolved on the base model from the train prompts (`bruno.thinking.base_response_prefix`, as
the directions job does) and used for both models; refusals are judged on the answer only."""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bruno.config import stage_seed
from bruno.errors import BrunoError
from bruno.heal import (
    TRAINING_LOG_COLUMNS,
    CheckpointProbe,
    FirstTokenDistillation,
    HealingSettings,
    harmful_pairs,
    harmless_pairs,
    sample_prompts,
    train_dpo,
)
from bruno.io import atomic_directory, atomic_path, atomic_write_json, directory_hashes, write_jsonl
from bruno.model import ModelSettings, encode, first_token_logprobs, generate_greedy, load_model, model_device
from bruno.prompts import read_prompts
from bruno.refusal import MarkerDetector
from bruno.runtime import peak_memory, seed_everything
from bruno.thinking import ResponseFormat, base_response_prefix

log = logging.getLogger(__name__)

# Harmful candidates generated per wanted pair: some prompts are dropped (base complied or ablated model refused).
CANDIDATES_PER_PAIR = 2


def run(
    model_path: str,
    model_settings: ModelSettings,
    ablated_path: str | Path,
    harmful_train_path: str | Path,
    harmless_train_path: str | Path,
    settings: HealingSettings,
    refusal_markers: list[str],
    master_seed: int,
    out_dir: str | Path,
    pairs_path: str | Path,
    training_log_path: str | Path,
    harmful_val_path: str | Path | None = None,
    harmless_val_path: str | Path | None = None,
) -> dict[str, Any]:
    if not settings.enable_post_abliteration_finetuning:
        raise BrunoError(
            "The healed model was requested but config key 'healing.enable_post_abliteration_finetuning' is false "
            "for this variant; enable it or do not ask for results/{variant}/healed."
        )
    start = time.perf_counter()
    seed = stage_seed(settings.seed, master_seed)
    seed_everything(seed)
    system_prompt = model_settings.system_prompt
    n_harmful = settings.n_harmful_pairs
    harmful = sample_prompts(
        read_prompts(harmful_train_path), None if n_harmful is None else CANDIDATES_PER_PAIR * n_harmful, seed
    )
    n_harmless = settings.n_harmless_pairs if settings.n_harmless_pairs is not None else n_harmful
    harmless = (
        sample_prompts(read_prompts(harmless_train_path), n_harmless, seed + 1)
        if settings.include_harmless_pairs or settings.distill_weight > 0
        else []
    )

    if settings.checkpoint_every is not None and (harmful_val_path is None or harmless_val_path is None):
        raise BrunoError(
            "config key 'healing.checkpoint_every' needs the harmful and harmless val prompts (the heal rule passes "
            "them); set it to null to keep the last training step."
        )
    base, tokenizer = load_model(model_path, model_settings)
    prefix = base_response_prefix(base, tokenizer, model_settings, harmful_train_path, harmless_train_path)
    response_format = ResponseFormat.of(tokenizer, system_prompt, prefix, model_settings.thinking_tags)
    detector = response_format.judge(MarkerDetector(refusal_markers))

    def batches(tokenizer: Any, texts: list[str], size: int, device: torch.device) -> list:
        """Every prompt of healing ends with the base model's response prefix."""
        return encode(tokenizer, texts, system_prompt, size, device, prefix)

    def generate(model: Any, tokenizer: Any, prompts: list) -> list[str]:
        texts = [p.text for p in prompts]
        encoded = batches(tokenizer, texts, model_settings.batch_size, model_device(model))
        return generate_greedy(model, tokenizer, encoded, settings.max_new_tokens)

    base_harmful = generate(base, tokenizer, harmful)
    base_harmless = generate(base, tokenizer, harmless) if harmless else []
    device = model_device(base)
    probe = None
    if settings.checkpoint_every is not None:
        n_val = settings.checkpoint_val_prompts
        kl_batches, refusal_batches = (
            batches(
                tokenizer, [p.text for p in read_prompts(path)][:n_val], model_settings.batch_size, device
            )
            for path in (harmless_val_path, harmful_val_path)
        )
        probe = CheckpointProbe(
            tokenizer=tokenizer,
            kl_batches=kl_batches,
            base_logprobs=first_token_logprobs(base, kl_batches),
            refusal_batches=refusal_batches,
            detector=detector,
            max_new_tokens=settings.max_new_tokens,
            every=settings.checkpoint_every,
            max_refusal_increase=settings.checkpoint_max_refusal_increase,
        )
    distillation = None
    if settings.distill_weight > 0:
        answered = [
            p.text
            for p, v in zip(harmless, detector.classify(base_harmless), strict=True)
            if not v.is_refusal
        ]
        if not answered:
            raise BrunoError(
                "config key 'healing.distill_weight' is set but the base model refused every sampled harmless train "
                "prompt, so there is nothing to distil; set it to 0 or check evaluation.refusal_markers."
            )
        distillation = FirstTokenDistillation(
            batch=batches(tokenizer, answered, len(answered), torch.device("cpu"))[0],
            base_logprobs=first_token_logprobs(
                base, batches(tokenizer, answered, model_settings.batch_size, device)
            ),
            weight=settings.distill_weight,
            batch_size=settings.distill_batch_size,
            seed=seed,
        )
    del base
    gc.collect()

    model, tokenizer = load_model(ablated_path, model_settings)
    pairs, counts = harmful_pairs(
        harmful, base_harmful, generate(model, tokenizer, harmful), detector, system_prompt, prefix
    )
    pairs = pairs[:n_harmful] if n_harmful is not None else pairs
    counts["harmful_pairs"] = len(pairs)
    if harmless and settings.include_harmless_pairs:
        extra, harmless_counts = harmless_pairs(
            harmless, base_harmless, detector, system_prompt, settings.harmless_degradation, seed, prefix
        )
        pairs += extra
        counts.update(harmless_counts)
    if distillation is not None:
        counts["distill_prompts"] = len(distillation.batch)
    log.info("preference pairs: %s", counts)
    if not pairs:
        raise BrunoError(
            f"No DPO preference pairs: {counts}. A harmful pair needs a train prompt that the base model refuses and "
            "the ablated model answers (check evaluation.refusal_markers and healing.max_new_tokens), or turn on "
            "healing.include_harmless_pairs, or disable healing.enable_post_abliteration_finetuning."
        )
    write_jsonl(pairs_path, pairs)
    generation_seconds = time.perf_counter() - start

    healed, rows, summary = train_dpo(model, tokenizer, pairs, settings, seed, probe, distillation)
    with atomic_directory(out_dir) as tmp:
        healed.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        record = {
            "source_model": str(ablated_path),
            "base_model": model_path,
            "settings": dataclasses.asdict(settings),
            "seed": seed,
            "response_prefix": prefix,
            "pairs": counts,
            "training": summary,
            "generation_seconds": generation_seconds,
            "seconds": time.perf_counter() - start,
            "source_weights_sha256": directory_hashes(ablated_path),
            "weights_sha256": directory_hashes(tmp),
            **peak_memory(),
        }
        atomic_write_json(Path(tmp) / "healing.json", record)
    with atomic_path(training_log_path) as tmp:
        pd.DataFrame(rows, columns=list(TRAINING_LOG_COLUMNS)).to_csv(tmp, index=False)
    log.info(
        "healed %s: %d pairs, %d steps, loss %.4f, %.1f s (%.1f s generating pairs)",
        out_dir, len(pairs), summary["steps"], summary["train_loss"], record["seconds"], generation_seconds,
    )  # fmt: skip
    return record
