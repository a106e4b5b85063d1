"""The GPU path of model loading: dtype fallback, placement (device_map, max_memory, 4-bit), batch size, peak memory.

`model.load_model` asks this module for the `from_pretrained` placement arguments and loads through
`load_with_dtype_fallback`: the configured dtype is tried first, then the rest of auto -> bfloat16 -> float16 -> float32,
each accepted only if a one-token generation gives finite logits (some checkpoints overflow in float16, some kernels
return NaN in bfloat16 on older cards). `resolve_batch_size` turns `model.batch_size: 0` into a measured batch size:
doubling from 1 until throughput stops improving or the GPU runs out of memory. On the CPU nothing here changes the
behaviour: float32, everything on one device, a fixed batch size.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from bruno.errors import BrunoError

log = logging.getLogger(__name__)

DTYPE_CHAIN = ("auto", "bfloat16", "float16", "float32")
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
# Batch size that `batch_size: 0` (auto) means on the CPU: measuring is noisy there and would make runs depend on
# timing. On the organism, 100 prompts x 24 tokens took 0.21 s in one batch of 128 and 0.33-0.38 s in batches of 32.
CPU_AUTO_BATCH_SIZE = 128


# ----------------------------------------------------------------------------------------------------------------------
# dtype


def dtype_candidates(requested: str, device: torch.device) -> list[str]:
    """dtypes to try, in order: the requested one, then the rest of auto -> bfloat16 -> float16 -> float32.

    On the CPU `auto` is float32 (half precision is slow and imprecise there); bfloat16 is left out on CUDA cards
    without it."""
    if requested not in DTYPE_CHAIN:
        raise BrunoError(
            f"config key 'model.dtype': unknown dtype '{requested}'; use one of {', '.join(DTYPE_CHAIN)}."
        )
    if device.type == "cpu" and requested == "auto":
        return ["float32"]
    chain = list(DTYPE_CHAIN[DTYPE_CHAIN.index(requested) :])
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        chain = [name for name in chain if name != "bfloat16"]
    return chain


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def load_with_dtype_fallback(
    load: Callable[[str], nn.Module],
    is_healthy: Callable[[nn.Module], bool],
    candidates: Sequence[str],
) -> tuple[nn.Module, str]:
    """Load with each candidate dtype in turn until `is_healthy(model)` holds; return the model and the dtype used.

    `load(name)` loads the model with dtype `name` ('auto' = the checkpoint's own dtype). A named dtype equal to one
    already rejected (e.g. bfloat16 after 'auto' loaded a bfloat16 checkpoint) is skipped without loading."""
    rejected: list[torch.dtype] = []
    for name in candidates:
        if name != "auto" and TORCH_DTYPES[name] in rejected:
            continue
        model = load(name)
        dtype = next(model.parameters()).dtype
        if is_healthy(model):
            if rejected:
                log.warning("loaded in %s after inf/nan logits in %s", dtype, ", ".join(map(str, rejected)))
            return model, name
        log.warning("dtype %s (%s): inf/nan in a one-token generation; trying the next dtype", name, dtype)
        rejected.append(dtype)
        del model
        free_memory()
    raise BrunoError(
        f"The model gives inf/nan logits in every dtype tried ({', '.join(candidates)}): the weights look broken. "
        "Check the model files, or set config key 'model.dtype' explicitly."
    )


@torch.inference_mode()
def next_token_is_finite(model: nn.Module, tokenizer: Any, system_prompt: str | None = None) -> bool:
    """One greedy token for a short chat prompt: True if its logits are all finite (no inf/nan)."""
    from bruno.model.generation import encode, model_device, next_token_logits

    batch = encode(tokenizer, ["Hello! Please introduce yourself."], system_prompt, 1, model_device(model))[0]
    return bool(torch.isfinite(next_token_logits(model, batch)).all())


# ----------------------------------------------------------------------------------------------------------------------
# Placement


def max_memory_map(max_memory: Mapping[str | int, str] | None) -> dict[int | str, str] | None:
    """Config `{"0": "22GiB", "cpu": "64GiB"}` -> accelerate's `{0: "22GiB", "cpu": "64GiB"}` (GPU indices as int)."""
    if not max_memory:
        return None
    mapped: dict[int | str, str] = {}
    for key, value in max_memory.items():
        key = str(key)
        if key.isdigit():
            mapped[int(key)] = str(value)
        elif key in ("cpu", "disk", "mps"):
            mapped[key] = str(value)
        else:
            raise BrunoError(
                f"config key 'model.max_memory.{key}': keys are GPU indices ('0', '1', ...), 'cpu' or 'disk'."
            )
    return mapped


def placement_kwargs(
    device: torch.device,
    device_map: str | Mapping[str, Any] | None,
    max_memory: Mapping[str | int, str] | None,
) -> dict[str, Any]:
    """`from_pretrained` arguments that put the weights where they belong while loading.

    With `device_map` (accelerate: 'auto', 'balanced', 'sequential' or an explicit module -> device map) the model is
    spread over the GPUs (and CPU, within `max_memory`). Without it a CUDA model still loads straight onto its card,
    so host memory never holds a full copy; on the CPU nothing is added."""
    if device_map is None:
        if max_memory:
            raise BrunoError(
                "config key 'model.max_memory' only applies with 'model.device_map' (e.g. device_map: auto)."
            )
        if device.type != "cuda":
            return {}
        return {"device_map": {"": device.index if device.index is not None else torch.cuda.current_device()}}
    if isinstance(device_map, str) and device_map not in DEVICE_MAP_STRATEGIES:
        raise BrunoError(
            f"config key 'model.device_map': '{device_map}' is not one of {', '.join(DEVICE_MAP_STRATEGIES)} "
            "or a mapping of module names to devices."
        )
    kwargs: dict[str, Any] = {
        "device_map": dict(device_map) if isinstance(device_map, Mapping) else device_map
    }
    memory = max_memory_map(max_memory)
    if memory:
        kwargs["max_memory"] = memory
    return kwargs


def four_bit_config(compute_dtype: torch.dtype, device: torch.device) -> Any:
    """bitsandbytes NF4 quantisation config (`model.load_in_4bit`); needs CUDA and the bitsandbytes package."""
    if device.type != "cuda":
        raise BrunoError("config key 'model.load_in_4bit' needs a CUDA GPU; set it to false on this machine.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise BrunoError(
            "config key 'model.load_in_4bit' is true but bitsandbytes is not installed: `pip install bitsandbytes` "
            "in the environment of the jobs, or set it to false."
        ) from e
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The weight of a Linear layer as a dense matrix, dequantising a bitsandbytes 4-bit weight (for the edit math)."""
    weight = module.weight
    quant_state = getattr(weight, "quant_state", None)
    if quant_state is None:
        return weight
    import bitsandbytes.functional as bnb_functional

    return bnb_functional.dequantize_4bit(weight.data, quant_state)


# ----------------------------------------------------------------------------------------------------------------------
# Batch size


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )


def auto_batch_size(
    measure: Callable[[int], float],
    n_items: int,
    start: int = 1,
    limit: int = 1024,
    min_gain: float = 1.05,
) -> int:
    """Largest useful batch size: double from `start` while throughput (items/s) rises by at least `min_gain`.

    `measure(size)` runs one representative batch of `size` items and returns its seconds; it raises an out-of-memory
    error when the batch does not fit. Stops at the first OOM, when throughput stops improving, at `limit`, or once
    a batch holds all `n_items`; returns the last size that fitted and still improved throughput (a power of two
    times `start`)."""
    best: int | None = None
    best_rate = 0.0
    size = start
    while size <= limit:
        try:
            seconds = measure(size)
        except (RuntimeError, torch.OutOfMemoryError) as error:
            if not is_out_of_memory(error):
                raise
            free_memory()
            log.info("batch size %d: out of memory", size)
            break
        rate = size / max(seconds, 1e-9)
        log.info("batch size %d: %.1f items/s", size, rate)
        if best is not None and rate < best_rate * min_gain:
            break
        best, best_rate = size, rate
        if size >= n_items:
            break
        size *= 2
    if best is None:
        raise BrunoError(
            f"Not even a batch of {start} prompt(s) fits in GPU memory: use a smaller model, 'model.load_in_4bit', "
            "or spread the model over more memory with 'model.device_map: auto' and 'model.max_memory'."
        )
    return best


def forward_timer(
    model: nn.Module, tokenizer: Any, texts: Sequence[str], system_prompt: str | None, max_new_tokens: int = 0
) -> Callable[[int], float]:
    """`measure` for `auto_batch_size`: seconds for one batch of the longest prompts, a forward pass of every
    position (max_new_tokens=0) or a greedy generation of `max_new_tokens` tokens."""
    from bruno.model.generation import encode, first_token_logprobs, generate_greedy, model_device

    longest = sorted(texts, key=len, reverse=True) or ["Hello"]
    device = model_device(model)

    def measure(size: int) -> float:
        sample = [longest[i % len(longest)] for i in range(size)]
        batches = encode(tokenizer, sample, system_prompt, size, device)
        synchronize(device)
        start = time.perf_counter()
        if max_new_tokens:
            generate_greedy(model, tokenizer, batches, max_new_tokens)
        else:
            first_token_logprobs(model, batches)
        synchronize(device)
        return time.perf_counter() - start

    return measure


def resolve_batch_size(
    configured: int,
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    system_prompt: str | None = None,
    max_new_tokens: int = 0,
    limit: int = 1024,
) -> int:
    """`configured` if > 0; for 0 (auto) a measured batch size on a GPU, `CPU_AUTO_BATCH_SIZE` on the CPU."""
    if configured > 0:
        return configured
    from bruno.model.generation import model_device

    device = model_device(model)
    if device.type == "cpu":
        return min(CPU_AUTO_BATCH_SIZE, max(1, len(texts)))
    measure = forward_timer(model, tokenizer, texts, system_prompt, max_new_tokens)
    measure(1)  # warm-up: kernel selection and allocator growth are not throughput
    size = auto_batch_size(measure, n_items=len(texts), limit=limit)
    log.info("auto batch size: %d (%s)", size, "generation" if max_new_tokens else "forward")
    return size


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------------------------------
# Memory reporting


def peak_gpu_memory_mb() -> dict[str, float]:
    """Peak allocated memory per CUDA device since the process started (MB); empty without CUDA in use."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return {}
    return {
        f"cuda:{index}": torch.cuda.max_memory_allocated(index) / 2**20
        for index in range(torch.cuda.device_count())
    }


def describe_placement(model: nn.Module) -> str:
    """Where the weights are: 'cuda:0' or, for a device_map model, the devices with their share of parameters."""
    counts: dict[str, int] = {}
    for parameter in model.parameters():
        counts[str(parameter.device)] = counts.get(str(parameter.device), 0) + parameter.numel()
    total = sum(counts.values()) or 1
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{device} {100 * n / total:.0f} %" for device, n in sorted(counts.items()))
