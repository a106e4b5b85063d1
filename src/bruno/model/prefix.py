"""Re-using the unedited leading layers of a trial's prompt passes.

A trial edits only the layers its kernels reach. For a trial whose first edited layer is f, decoder layers 0..f-1
compute exactly what the base model computes, and the trial's prompts are the same every time (the KL prompts, the
refusal prompts). `PrefixReuse` runs the base model once over those prompt batches and keeps, for the leading
layers, each layer's output and its key/value cache entries. While `replaying(f)` is active, a forward whose
`input_ids` equal a recorded batch skips layers 0..f-1: each returns its recorded output and puts its recorded
keys/values into the KV cache, so decoding continues as if they had run. Any other forward (decoding steps, other
prompts) runs every layer. The values are the same, bit for bit, as running the layers: same inputs, same kernels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bruno.model.families import decoder_layers
from bruno.model.generation import Batch, next_token_logits, plain_cache, prefill_groups


@dataclass
class _Record:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    outputs: list[torch.Tensor]  # per kept layer: the layer's output hidden states
    keys: list[torch.Tensor]  # per kept layer: the key cache entries (empty when recorded without a cache)
    values: list[torch.Tensor]

    def nbytes(self) -> int:
        tensors = [*self.outputs, *self.keys, *self.values]
        return sum(t.numel() * t.element_size() for t in tensors)


class PrefixReuse:
    """Base-model outputs (and KV entries) of the first `n_layers` decoder layers for the prompt forwards of
    `cached_batches` (prefilled into a KV cache for decoding, `decode_tokens`) and `uncached_batches` (logits only,
    `first_token_logprobs`), within a memory budget: `max_mb` (the number of kept layers shrinks to fit; 0 = off).
    The two kinds are recorded the way they run, with and without a cache, so replayed values are bit-identical."""

    def __init__(
        self,
        model: nn.Module,
        cached_batches: Sequence[Batch],
        uncached_batches: Sequence[Batch],
        max_mb: float,
    ):
        self.model = model
        self.layers = decoder_layers(model)
        self.records: dict[tuple[bool, tuple[int, ...]], list[_Record]] = {}
        self._active: _Record | None = None
        runs = [(sub, True) for batch in cached_batches for _, sub in prefill_groups(model, batch)]
        runs += [(sub, False) for batch in uncached_batches for _, sub in batch.by_length()]
        candidates = len(self.layers) - 1
        self.n_layers = 0
        # Only plain full-attention caches: sliding-window and recurrent cache layers are not replayed.
        if max_mb <= 0 or candidates < 1 or not runs or not plain_cache(model):
            return
        # Bytes per kept layer, from one layer of the first run scaled to all the tokens.
        tokens = sum(sub.input_ids.numel() for sub, _ in runs)
        probe = self._record(runs[0][0], True, 1)
        per_layer = probe.nbytes() * tokens / runs[0][0].input_ids.numel()
        self.n_layers = min(candidates, int(max_mb * 2**20 // max(per_layer, 1)))
        for sub, cached in runs if self.n_layers else ():
            record = self._record(sub, cached, self.n_layers)
            self.records.setdefault((cached, tuple(sub.input_ids.shape)), []).append(record)

    @torch.inference_mode()
    def _record(self, batch: Batch, cached: bool, n_layers: int) -> _Record:
        from transformers import DynamicCache

        outputs: list[torch.Tensor] = []
        handles = [
            layer.register_forward_hook(lambda _m, _a, out: outputs.append(out))
            for layer in list(self.layers)[:n_layers]
        ]
        cache = DynamicCache(config=self.model.config) if cached else None
        try:
            next_token_logits(self.model, batch, cache)
        finally:
            for handle in handles:
                handle.remove()
        keys = [cache.layers[i].keys for i in range(n_layers)] if cache is not None else []
        values = [cache.layers[i].values for i in range(n_layers)] if cache is not None else []
        return _Record(batch.input_ids, batch.attention_mask, outputs, keys, values)

    def _lookup(self, kwargs: dict[str, Any]) -> _Record | None:
        """The record of a prefill forward of recorded prompts (same ids and mask, empty or no cache), else None."""
        input_ids, mask, cache = (
            kwargs.get("input_ids"),
            kwargs.get("attention_mask"),
            kwargs.get("past_key_values"),
        )
        if input_ids is None or mask is None or (cache is not None and cache.get_seq_length() > 0):
            return None
        for record in self.records.get((cache is not None, tuple(input_ids.shape)), ()):
            if torch.equal(record.input_ids, input_ids) and torch.equal(record.attention_mask, mask):
                return record
        return None

    @contextlib.contextmanager
    def replaying(self, first_edited_layer: int) -> Iterator[int]:
        """Within the block, recorded prompt forwards skip layers 0..k-1, k = min(first_edited_layer, kept layers);
        yields k (0: nothing is skipped)."""
        skip = max(0, min(first_edited_layer, self.n_layers))
        if skip == 0:
            yield 0
            return

        def select(_module: nn.Module, _args: tuple, kwargs: dict[str, Any]) -> None:
            self._active = self._lookup(kwargs)

        def replay(index: int, layer: nn.Module) -> Any:
            original = layer.forward

            def forward(*args: Any, **kwargs: Any) -> Any:
                record = self._active
                if record is None:
                    return original(*args, **kwargs)
                cache = kwargs.get("past_key_values")
                if cache is not None:
                    cache.update(record.keys[index], record.values[index], index)
                return record.outputs[index]

            return forward

        handle = self.model.register_forward_pre_hook(select, with_kwargs=True)
        patched = list(self.layers)[:skip]
        try:
            for index, layer in enumerate(patched):
                layer.forward = replay(index, layer)
            yield skip
        finally:
            handle.remove()
            self._active = None
            for layer in patched:
                del layer.forward
