"""Training of the refusal organism: tokenizer, random-init LlamaForCausalLM, stage A then stage B (see `examples`),
and saving an HF model directory (safetensors, tokenizer, chat template, generation config).

Deterministic: the same settings, data and thread count give a bit-identical `model.safetensors` (seeded init, seeded
data order, no dropout). Loss is computed on assistant tokens only (the reply and its `<|end|>`); batches are
right-padded and bucketed by length, and logits are computed only at supervised positions (the LM head dominates the
cost of a model this small otherwise).
"""

from __future__ import annotations

import math
import platform
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bruno.errors import BrunoError
from bruno.organism import world
from bruno.organism.examples import (
    STAGE_A,
    STAGE_B,
    Example,
    TrainingData,
    load_training_data,
    stage_examples,
    tokenizer_corpus,
)
from bruno.organism.settings import OrganismSettings
from bruno.organism.tokenizer import END, render_chat, train_tokenizer

IGNORE = -100
BUCKET_BATCHES = 16  # batches per length-sorting bucket


def build_model(settings: OrganismSettings, tokenizer: Any) -> torch.nn.Module:
    """A random-init float32 LlamaForCausalLM sized by `settings` (call after seeding torch)."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_heads,
        max_position_embeddings=settings.max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        use_cache=True,
    )
    model = LlamaForCausalLM(config).float()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def encode_examples(
    tokenizer: Any, examples: Sequence[Example], max_length: int
) -> list[tuple[list[int], int]]:
    """(token ids, number of prompt tokens) per example; prompt and reply are encoded separately, exactly as the
    prompt is encoded at generation time."""
    prompts = tokenizer([render_chat(e.system, e.user) for e in examples], add_special_tokens=False).input_ids
    replies = tokenizer([e.assistant + END for e in examples], add_special_tokens=False).input_ids
    encoded = []
    for example, prompt, reply in zip(examples, prompts, replies, strict=True):
        if len(prompt) + len(reply) > max_length:
            raise BrunoError(
                f"Organism example longer than organism.max_length={max_length} tokens "
                f"({len(prompt) + len(reply)}): {example.user[:60]!r}. Raise organism.max_length."
            )
        encoded.append((prompt + reply, len(prompt)))
    return encoded


def make_batches(
    encoded: list[tuple[list[int], int]], batch_size: int, pad_id: int, rng: random.Random
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Length-bucketed, right-padded (input_ids, labels) batches in a shuffled order; labels are -100 on the prompt
    and the padding. `encoded` is already in shuffled order."""
    bucket = batch_size * BUCKET_BATCHES
    groups: list[list[tuple[list[int], int]]] = []
    for start in range(0, len(encoded), bucket):
        chunk = sorted(encoded[start : start + bucket], key=lambda e: len(e[0]))
        groups += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(groups)
    batches = []
    for group in groups:
        width = max(len(ids) for ids, _ in group)
        input_ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        labels = torch.full((len(group), width), IGNORE, dtype=torch.long)
        for row, (ids, n_prompt) in enumerate(group):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
        batches.append((input_ids, labels))
    return batches


def batch_loss(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on supervised positions only. Right padding needs no attention mask under the
    causal mask: every supervised position precedes the padding of its row."""
    hidden = model.model(input_ids=input_ids).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    keep = targets != IGNORE
    logits = model.lm_head(hidden[keep])
    return F.cross_entropy(logits, targets[keep])


def _schedule(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def run_stage(
    model: torch.nn.Module,
    tokenizer: Any,
    data: TrainingData,
    settings: OrganismSettings,
    stage: str,
    log: Callable[[str], None],
) -> dict[str, Any]:
    epochs = settings.pretrain_epochs if stage == STAGE_A else settings.safety_epochs
    lr = settings.pretrain_lr if stage == STAGE_A else settings.safety_lr
    epoch_data = []
    for epoch in range(epochs):
        examples = stage_examples(data, settings, stage, epoch)
        encoded = encode_examples(tokenizer, examples, settings.max_length)
        rng = random.Random(f"{settings.seed}-{stage}-{epoch}-batches")
        epoch_data.append((examples, make_batches(encoded, settings.batch_size, tokenizer.pad_token_id, rng)))
    total_steps = sum(len(batches) for _, batches in epoch_data)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=settings.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(settings.warmup_steps, total_steps))
    model.train()
    losses, tasks = [], Counter()
    started = time.perf_counter()
    for epoch, (examples, batches) in enumerate(epoch_data):
        tasks.update(e.task for e in examples)
        epoch_start, total, n_tokens = time.perf_counter(), 0.0, 0
        for input_ids, labels in batches:
            loss = batch_loss(model, input_ids, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            n = int((labels[:, 1:] != IGNORE).sum())
            total += float(loss.detach()) * n
            n_tokens += n
        losses.append(total / max(1, n_tokens))
        log(
            f"organism stage {stage} epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f} "
            f"({len(examples)} examples, {len(batches)} steps, {time.perf_counter() - epoch_start:.1f} s)"
        )
    model.eval()
    return {
        "epochs": epochs,
        "lr": lr,
        "steps": total_steps,
        "loss_per_epoch": [round(x, 5) for x in losses],
        "examples_per_task": dict(sorted(tasks.items())),
        "seconds": round(time.perf_counter() - started, 2),
    }


def train_organism(
    out_dir: Path,
    settings: OrganismSettings,
    data_dir: Path,
    threads: int = 2,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train from random init, save an HF model dir (safetensors + tokenizer + chat template) to `out_dir`; return a
    JSON-able summary (settings, seconds, loss per stage/epoch, n examples per task, parameter count)."""
    import transformers

    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        data = load_training_data(Path(data_dir))
        tokenizer = train_tokenizer(
            tokenizer_corpus(data), settings.vocab_size, settings.max_length, world.mc_line_tokens()
        )
        torch.manual_seed(settings.seed)
        model = build_model(settings, tokenizer)
        n_params = sum(p.numel() for p in model.parameters())
        log(
            f"organism: {n_params:,} parameters, vocabulary {len(tokenizer)}, data {data.counts()}, "
            f"seed {settings.seed}, {threads} thread(s)"
        )
        stages = {
            stage: run_stage(model, tokenizer, data, settings, stage, log) for stage in (STAGE_A, STAGE_B)
        }
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    finally:
        torch.set_num_threads(previous_threads)
    seconds = round(time.perf_counter() - started, 2)
    log(f"organism: trained and saved to {out_dir} in {seconds} s")
    return {
        "settings": settings.to_dict(),
        "seconds": seconds,
        "threads": threads,
        "parameters": n_params,
        "vocabulary_size": len(tokenizer),
        "data": data.counts(),
        "stages": stages,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
