"""Stage `heal`: build DPO preference pairs from the base and ablated models, train a LoRA adapter with DPO on the
ablated model, merge it and save a normal HF model directory (atomically), the pairs and the training curve.

The response prefix is resolved on the base model from the train prompts (`bruno.model.thinking.base_response_prefix`, as
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
from bruno.evaluation.refusal import MarkerDetector
from bruno.heal.dpo import (
    TRAINING_LOG_COLUMNS,
    CheckpointProbe,
    FirstTokenDistillation,
    HealingSettings,
    train_dpo,
)
from bruno.heal.pairs import harmful_pairs, harmless_pairs, sample_prompts
from bruno.io import atomic_directory, atomic_path, atomic_write_json, directory_hashes, write_jsonl
from bruno.model.generation import encode, first_token_logprobs, generate_greedy, model_device
from bruno.model.loading import ModelSettings, load_model
from bruno.model.thinking import ResponseFormat, base_response_prefix
from bruno.prompts import read_prompts
from bruno.runtime import peak_memory, seed_everything

log = logging.getLogger(__name__)

# Harmful candidates generated per wanted pair: some prompts are dropped (base complied or ablated model refused).
CANDIDATES_PER_PAIR = 2


@dataclasses.dataclass
class _Rendering:
    """How healing renders and judges its prompts: the base model's response prefix, the system prompt, the refusal
    detector on the answer only, and the generation settings."""

    tokenizer: Any
    system_prompt: str | None
    prefix: str
    detector: Any
    batch_size: int
    max_new_tokens: int

    def batches(self, texts: list[str], size: int, device: torch.device) -> list:
        """Every prompt of healing ends with the base model's response prefix."""
        return encode(self.tokenizer, texts, self.system_prompt, size, device, self.prefix)

    def generate(self, model: Any, prompts: list) -> list[str]:
        encoded = self.batches([p.text for p in prompts], self.batch_size, model_device(model))
        return generate_greedy(model, self.tokenizer, encoded, self.max_new_tokens)


@dataclasses.dataclass
class _FromBase:
    """What healing takes from the base model before it is unloaded."""

    harmful_replies: list[str]
    harmless_replies: list[str]
    probe: CheckpointProbe | None
    distillation: FirstTokenDistillation | None


def _check_settings(settings: HealingSettings, harmful_val_path: Any, harmless_val_path: Any) -> None:
    if not settings.enable_post_abliteration_finetuning:
        raise BrunoError(
            "The healed model was requested but config key 'healing.enable_post_abliteration_finetuning' is false "
            "for this variant; enable it or do not ask for results/{variant}/healed."
        )
    if settings.checkpoint_every is not None and (harmful_val_path is None or harmless_val_path is None):
        raise BrunoError(
            "config key 'healing.checkpoint_every' needs the harmful and harmless val prompts (the heal rule passes "
            "them); set it to null to keep the last training step."
        )


def _candidates(
    settings: HealingSettings, harmful_train_path: str | Path, harmless_train_path: str | Path, seed: int
) -> tuple[list[Any], list[Any]]:
    """The sampled harmful pair candidates (CANDIDATES_PER_PAIR per wanted pair) and harmless prompts (for harmless
    pairs or distillation)."""
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
    return harmful, harmless


def _from_base(
    base: Any, render: _Rendering, settings: HealingSettings, harmful: list[Any], harmless: list[Any],
    val_paths: tuple[Any, Any], seed: int,
) -> _FromBase:  # fmt: skip
    """The base model's replies to the candidates, the checkpoint probe's reference on the val prompts and the
    first-token distillation targets on the harmless prompts it answers."""
    harmful_replies = render.generate(base, harmful)
    harmless_replies = render.generate(base, harmless) if harmless else []
    device = model_device(base)
    probe = None
    if settings.checkpoint_every is not None:
        n_val = settings.checkpoint_val_prompts
        harmful_val_path, harmless_val_path = val_paths
        kl_batches, refusal_batches = (
            render.batches([p.text for p in read_prompts(path)][:n_val], render.batch_size, device)
            for path in (harmless_val_path, harmful_val_path)
        )
        probe = CheckpointProbe(
            tokenizer=render.tokenizer,
            kl_batches=kl_batches,
            base_logprobs=first_token_logprobs(base, kl_batches),
            refusal_batches=refusal_batches,
            detector=render.detector,
            max_new_tokens=settings.max_new_tokens,
            every=settings.checkpoint_every,
            max_refusal_increase=settings.checkpoint_max_refusal_increase,
        )
    distillation = None
    if settings.distill_weight > 0:
        verdicts = render.detector.classify(harmless_replies)
        answered = [p.text for p, v in zip(harmless, verdicts, strict=True) if not v.is_refusal]
        if not answered:
            raise BrunoError(
                "config key 'healing.distill_weight' is set but the base model refused every sampled harmless train "
                "prompt, so there is nothing to distil; set it to 0 or check evaluation.refusal_markers."
            )
        distillation = FirstTokenDistillation(
            batch=render.batches(answered, len(answered), torch.device("cpu"))[0],
            base_logprobs=first_token_logprobs(base, render.batches(answered, render.batch_size, device)),
            weight=settings.distill_weight,
            batch_size=settings.distill_batch_size,
            seed=seed,
        )
    return _FromBase(harmful_replies, harmless_replies, probe, distillation)


def _pairs(
    model: Any, render: _Rendering, settings: HealingSettings, harmful: list[Any], harmless: list[Any],
    from_base: _FromBase, seed: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """The DPO preference pairs and their counts: harmful prompts the base refuses and the ablated model answers,
    plus harmless pairs when configured."""
    system_prompt, prefix = render.system_prompt, render.prefix
    pairs, counts = harmful_pairs(
        harmful,
        from_base.harmful_replies,
        render.generate(model, harmful),
        render.detector,
        system_prompt,
        prefix,
    )
    if settings.n_harmful_pairs is not None:
        pairs = pairs[: settings.n_harmful_pairs]
    counts["harmful_pairs"] = len(pairs)
    if harmless and settings.include_harmless_pairs:
        extra, harmless_counts = harmless_pairs(
            harmless, from_base.harmless_replies, render.detector, system_prompt, settings.harmless_degradation,
            seed, prefix,
        )  # fmt: skip
        pairs += extra
        counts.update(harmless_counts)
    if from_base.distillation is not None:
        counts["distill_prompts"] = len(from_base.distillation.batch)
    log.info("preference pairs: %s", counts)
    if not pairs:
        raise BrunoError(
            f"No DPO preference pairs: {counts}. A harmful pair needs a train prompt that the base model refuses and "
            "the ablated model answers (check evaluation.refusal_markers and healing.max_new_tokens), or turn on "
            "healing.include_harmless_pairs, or disable healing.enable_post_abliteration_finetuning."
        )
    return pairs, counts


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
    _check_settings(settings, harmful_val_path, harmless_val_path)
    start = time.perf_counter()
    seed = stage_seed(settings.seed, master_seed)
    seed_everything(seed)
    harmful, harmless = _candidates(settings, harmful_train_path, harmless_train_path, seed)

    base, tokenizer = load_model(model_path, model_settings)
    prefix = base_response_prefix(base, tokenizer, model_settings, harmful_train_path, harmless_train_path)
    response_format = ResponseFormat.of(
        tokenizer, model_settings.system_prompt, prefix, model_settings.thinking_tags
    )
    render = _Rendering(
        tokenizer, model_settings.system_prompt, prefix, response_format.judge(MarkerDetector(refusal_markers)),
        model_settings.batch_size, settings.max_new_tokens,
    )  # fmt: skip
    from_base = _from_base(
        base, render, settings, harmful, harmless, (harmful_val_path, harmless_val_path), seed
    )
    del base
    gc.collect()

    model, tokenizer = load_model(ablated_path, model_settings)
    render.tokenizer = tokenizer
    pairs, counts = _pairs(model, render, settings, harmful, harmless, from_base, seed)
    write_jsonl(pairs_path, pairs)
    generation_seconds = time.perf_counter() - start

    healed, rows, summary = train_dpo(
        model, tokenizer, pairs, settings, seed, from_base.probe, from_base.distillation
    )
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
