"""Model access after loading: chat formatting and tokenisation, residuals, first-token log-probs, batched greedy
generation (prefill groups, KV-cache decoding).

All forward passes run under `torch.inference_mode()`; results move to the CPU at once (float32).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ----------------------------------------------------------------------------------------------------------------------
# Prompts -> token batches


# Fixed cost of one forward call in token equivalents, for splitting prefills by prompt length (measured on the
# organism on 2 CPU cores: ~3 ms per call against ~31 us per prompt token).
PREFILL_FORWARD_COST_TOKENS = 96


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def position_ids(self) -> torch.Tensor:
        return (self.attention_mask.long().cumsum(-1) - 1).clamp_(min=0)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def by_length(self, forward_cost_tokens: int | None = None) -> list[tuple[torch.Tensor, Batch]]:
        """Length-sorted sub-batches with their left padding trimmed, as (row indices, sub-batch).

        One padded batch computes every row at the longest prompt's length (a quarter of the tokens were padding
        in the organism's validation prompts). The split minimises padded tokens plus `forward_cost_tokens` per
        forward pass (the fixed cost of a call, in token equivalents; default PREFILL_FORWARD_COST_TOKENS) by dynamic programming over the sorted
        lengths; every row's values are the same as in the padded batch up to float rounding."""
        if forward_cost_tokens is None:
            forward_cost_tokens = PREFILL_FORWARD_COST_TOKENS
        lengths = self.attention_mask.sum(1)
        order = torch.argsort(lengths, stable=True)
        sorted_lengths = lengths[order].tolist()
        n = len(sorted_lengths)
        # best[j]: cost of rows [0, j) ; a group [i, j) costs (j - i) * length of its longest row + a forward.
        best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)
        for j in range(1, n + 1):
            for i in range(j):
                cost = best[i] + (j - i) * sorted_lengths[j - 1] + forward_cost_tokens
                if cost < best[j]:
                    best[j], cut[j] = cost, i
        bounds, j = [], n
        while j > 0:
            bounds.append((cut[j], j))
            j = cut[j]
        groups = []
        for i, j in reversed(bounds):
            rows = order[i:j]
            width = int(sorted_lengths[j - 1])
            groups.append((rows, Batch(self.input_ids[rows, -width:], self.attention_mask[rows, -width:])))
        return groups


def chat_strings(
    tokenizer: Any, texts: Sequence[str], system_prompt: str | None, response_prefix: str = ""
) -> list[str]:
    """Render each prompt through the chat template, ending with the assistant generation prompt and then the
    response prefix (`bruno.model.thinking`: e.g. an empty thinking block, so the answer starts at once)."""
    rendered = []
    for text in texts:
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": text})
        chat = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        rendered.append(chat + response_prefix)
    return rendered


def encode(
    tokenizer: Any,
    texts: Sequence[str],
    system_prompt: str | None,
    batch_size: int,
    device: torch.device,
    response_prefix: str = "",
) -> list[Batch]:
    """Tokenise prompts once, left-padded, in batches (the chat template already holds special tokens)."""
    strings = chat_strings(tokenizer, texts, system_prompt, response_prefix)
    batches = []
    for start in range(0, len(strings), batch_size):
        enc = tokenizer(
            strings[start : start + batch_size], add_special_tokens=False, padding=True, return_tensors="pt"
        )
        batches.append(Batch(enc["input_ids"].to(device), enc["attention_mask"].to(device)))
    return batches


# ----------------------------------------------------------------------------------------------------------------------
# Forward passes


@torch.inference_mode()
def last_token_residuals(model: nn.Module, batches: Sequence[Batch]) -> torch.Tensor:
    """Hidden states at the last prompt position for the embedding output and every layer: [n, L+1, d] float32 (CPU).

    Note (transformers 5): the last entry is the output of the final norm."""
    parts = []
    for batch in batches:
        out = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            output_hidden_states=True,
            use_cache=False,
        )
        parts.append(torch.stack([h[:, -1, :] for h in out.hidden_states], dim=1).float().cpu())
    return torch.cat(parts)


def next_token_logits(model: nn.Module, batch: Batch, cache: Any = None) -> torch.Tensor:
    """Raw logits at the last position of a left-padded batch, [n, vocab]; fills `cache` (a KV cache) when given."""
    with_cache = {} if cache is None else {"past_key_values": cache}
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=cache is not None,
        logits_to_keep=1,
        **with_cache,
    )
    return out.logits[:, -1, :]


@torch.inference_mode()
def first_token_logprobs(model: nn.Module, batches: Sequence[Batch]) -> torch.Tensor:
    """Log-softmax of the raw next-token logits at the first response position: [n, vocab] float32 (CPU)."""
    parts = []
    for batch in batches:
        part = None
        for rows, sub in batch.by_length():
            logprobs = torch.log_softmax(next_token_logits(model, sub).float(), dim=-1).cpu()
            if part is None:
                part = logprobs.new_empty(len(batch), logprobs.shape[-1])
            part[rows.cpu()] = logprobs
        parts.append(part)
    return torch.cat(parts)


def kl_divergence(base_logprobs: torch.Tensor, edited_logprobs: torch.Tensor) -> float:
    """KL(base || edited), summed over the vocabulary and averaged over prompts (heretic's `batchmean`)."""
    kl = torch.nn.functional.kl_div(edited_logprobs, base_logprobs, reduction="batchmean", log_target=True)
    return float(kl)


def eos_token_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    ids = set()
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    for value in (gen_eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return sorted(ids)


def plain_cache(model: nn.Module) -> bool:
    """Whether every layer of the model's KV cache is a plain full-attention layer (so caches can be joined)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)


def prefill_groups(model: nn.Module, batch: Batch) -> list[tuple[torch.Tensor | None, Batch]]:
    """How `_prefill` runs `batch`, as (row indices, sub-batch): its length groups, whose caches are joined, or the
    whole batch in one piece (rows None) when it is one group or the cache layers are not plain full attention."""
    groups = batch.by_length()
    return groups if len(groups) > 1 and plain_cache(model) else [(None, batch)]


def _prefill(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, Any]:
    """Run the prompts of a left-padded batch into a fresh KV cache; returns (next-token logits [n, vocab], cache).

    Prompts are prefilled in length-sorted sub-batches (less padding) whose caches are then left-padded to the
    batch's width and joined, so decoding runs on one batch; models with other than plain full-attention cache
    layers (sliding windows, recurrent states) are prefilled in one piece."""
    from transformers import DynamicCache

    def run(sub: Batch) -> tuple[torch.Tensor, Any]:
        cache = DynamicCache(config=model.config)
        return next_token_logits(model, sub, cache), cache

    groups = prefill_groups(model, batch)
    if groups[0][0] is None:
        return run(batch)
    parts = [(rows, *run(sub)) for rows, sub in groups]
    width = batch.input_ids.shape[1]
    first_logits, first_cache = parts[0][1], parts[0][2]
    logits = first_logits.new_empty(len(batch), first_logits.shape[-1])
    merged = DynamicCache(config=model.config)
    for layer in range(len(first_cache.layers)):
        keys, values = [], []
        for _, _, cache in parts:
            k, v = cache.layers[layer].keys, cache.layers[layer].values
            pad = (0, 0, width - k.shape[-2], 0)  # zeros at masked (padding) positions
            keys.append(torch.nn.functional.pad(k, pad))
            values.append(torch.nn.functional.pad(v, pad))
        order = torch.cat([rows for rows, _, _ in parts]).to(keys[0].device)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        merged.update(torch.cat(keys)[inverse], torch.cat(values)[inverse], layer)
    for rows, part_logits, _ in parts:
        logits[rows.to(logits.device)] = part_logits
    return logits, merged


def left_padded(token_ids: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> Batch:
    """One left-padded batch of tokenised prompts."""
    width = max(len(t) for t in token_ids)
    ids = torch.full((len(token_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, tokens in enumerate(token_ids):
        ids[row, width - len(tokens) :] = torch.tensor(list(tokens), dtype=torch.long)
        mask[row, width - len(tokens) :] = 1
    return Batch(ids.to(device), mask.to(device))


@torch.inference_mode()
def decode_tokens(
    model: nn.Module,
    batch: Batch,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    stop: Callable[[torch.Tensor], list[bool]] | None = None,
    stop_check_every: int = 4,
) -> torch.Tensor:
    """Decoding with a KV cache, greedy (temperature 0) or sampled from the raw logits / temperature with
    `generator`: [n, max_new_tokens] token ids, each row's first EOS kept and padding after it.

    A sequence leaves the batch (its cache rows are dropped) at EOS, so later steps only compute the sequences still
    running; the batch ends when none is left. `stop`, if given, receives the tokens so far of the running
    sequences and returns which are already decided (e.g. a refusal marker appeared); it is called every
    `stop_check_every` steps and those sequences leave the batch too."""
    eos = torch.tensor(list(eos_ids), device=batch.input_ids.device)
    logits, cache = _prefill(model, batch)
    mask = batch.attention_mask
    positions = batch.position_ids[:, -1:]
    live = torch.arange(len(batch), device=mask.device)  # batch row of each running sequence
    tokens = torch.full((len(batch), max_new_tokens), pad_id, dtype=torch.long, device=mask.device)
    for step in range(max_new_tokens):
        if temperature > 0:
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        else:
            token = logits.argmax(dim=-1)
        tokens[live, step] = token
        running = ~torch.isin(token, eos)
        if stop is not None and (step + 1) % stop_check_every == 0:
            running &= ~torch.tensor(stop(tokens[live, : step + 1]), dtype=torch.bool, device=mask.device)
        if step + 1 == max_new_tokens or not bool(running.any()):
            break
        if not bool(running.all()):
            keep = running.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            live, mask, positions, token = live[keep], mask[keep], positions[keep], token[keep]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions + 1
        out = model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
        logits = out.logits[:, -1, :]
    return tokens


def decode_replies(
    model: nn.Module,
    token_ids: Sequence[Sequence[int]],
    pad_id: int,
    eos_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """`decode_tokens` on tokenised prompts: each reply's token ids up to and including its first EOS."""
    tokens = decode_tokens(
        model, left_padded(token_ids, pad_id, model_device(model)), max_new_tokens, eos_ids, pad_id,
        temperature, generator,
    ).cpu().tolist()  # fmt: skip
    eos = {int(e) for e in eos_ids}
    return [row[: next((i + 1 for i, t in enumerate(row) if t in eos), len(row))] for row in tokens]


def generate_greedy(
    model: nn.Module,
    tokenizer: Any,
    batches: Sequence[Batch],
    max_new_tokens: int,
    stop: Callable[[list[str]], list[bool]] | None = None,
    stop_check_every: int = 4,
) -> list[str]:
    """Greedy replies as text (`decode_tokens`); `stop`, if given, receives the decoded text so far of the running
    sequences."""
    eos = eos_token_ids(model, tokenizer)

    def decided(tokens: torch.Tensor) -> list[bool]:
        assert stop is not None
        return stop(tokenizer.batch_decode(tokens, skip_special_tokens=True))

    responses: list[str] = []
    for batch in batches:
        tokens = decode_tokens(
            model,
            batch,
            max_new_tokens,
            eos,
            tokenizer.pad_token_id,
            stop=decided if stop is not None else None,
            stop_check_every=stop_check_every,
        )
        responses.extend(tokenizer.batch_decode(tokens, skip_special_tokens=True))
    return [r.strip() for r in responses]


# ----------------------------------------------------------------------------------------------------------------------
# Architecture
