"""Model loading: the `model` settings, device and dtype resolution, the tokenizer and the model (safetensors only,
placement by `bruno.model.placement`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bruno.config import schema_defaults
from bruno.errors import BrunoError
from bruno.model.placement import TORCH_DTYPES
from bruno.model.source import hub_load_error

log = logging.getLogger(__name__)


_default = schema_defaults("model")


@dataclass(frozen=True)
class ModelSettings:
    """The `model` config section; meanings and defaults in config/schema.yaml."""

    name: str = _default("name")
    revision: str | None = _default("revision")
    dtype: str = _default("dtype")
    device: str = _default("device")
    trust_remote_code: bool = _default("trust_remote_code")
    chat_template: str | None = _default("chat_template")
    system_prompt: str | None = _default("system_prompt")
    batch_size: int = _default("batch_size")  # 0 = auto (bruno.model.placement.resolve_batch_size)
    # accelerate placement: None = the whole model on `device`; 'auto'/'balanced'/'sequential' or a module -> device map.
    device_map: str | dict[str, Any] | None = _default("device_map")
    max_memory: dict[str, str] | None = _default(
        "max_memory"
    )  # with device_map: {"0": "22GiB", "cpu": "64GiB"}
    load_in_4bit: bool = _default("load_in_4bit")  # bitsandbytes NF4 (CUDA only; optional package)
    # Appended to every chat prompt: 'auto' (detect a thinking block to skip), '' (none) or the text (bruno.model.thinking).
    response_prefix: str = _default("response_prefix")
    thinking_tags: list[list[str]] = _default("thinking_tags")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BrunoError(
            f"config key 'model.device' is '{device}' but CUDA is not available here; use 'auto' or 'cpu'."
        )
    return torch.device(device)


def load_tokenizer(path: str | Path, settings: ModelSettings) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(path), revision=settings.revision, trust_remote_code=settings.trust_remote_code
        )
    except (OSError, ValueError) as e:
        raise hub_load_error(str(path), "tokenizer", e) from e
    if settings.chat_template:
        template = settings.chat_template
        if Path(template).is_file():
            template = Path(template).read_text(encoding="utf-8")
        tokenizer.chat_template = template
    if not getattr(tokenizer, "chat_template", None):
        raise BrunoError(
            f"The tokenizer of '{path}' has no chat template. Set config key 'model.chat_template' to a Jinja chat "
            "template (inline or a file path), or use the instruct/chat version of the model."
        )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    path: str | Path, settings: ModelSettings, device: torch.device | None = None
) -> tuple[nn.Module, Any]:
    """Load a causal LM (safetensors only) and its tokenizer, in eval mode, on the configured device.

    On a GPU the weights load straight onto the card(s) (`device_map`, `max_memory`, optional 4-bit), and the dtype
    falls back along auto -> bfloat16 -> float16 -> float32 until a one-token generation gives finite logits."""
    from transformers import AutoModelForCausalLM

    from bruno.model import placement as gpu

    device = device or resolve_device(settings.device)
    if settings.trust_remote_code:
        log.warning("!!! trust_remote_code is ON for '%s': code shipped with the model will run. !!!", path)
    tokenizer = load_tokenizer(path, settings)
    placement = gpu.placement_kwargs(device, settings.device_map, settings.max_memory)

    def load(dtype_name: str) -> nn.Module:
        dtype: torch.dtype | str = "auto" if dtype_name == "auto" else TORCH_DTYPES[dtype_name]
        kwargs = dict(placement)
        if settings.load_in_4bit:
            compute = dtype if isinstance(dtype, torch.dtype) else torch.bfloat16
            kwargs["quantization_config"] = gpu.four_bit_config(compute, device)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(path),
                revision=settings.revision,
                dtype=dtype,
                trust_remote_code=settings.trust_remote_code,
                use_safetensors=True,
                **kwargs,
            )
        except (OSError, ValueError) as e:
            raise hub_load_error(str(path), "weights", e, "Only safetensors weights are loaded.") from e
        if "device_map" not in kwargs and not settings.load_in_4bit:
            model.to(device)
        model.eval()
        model.requires_grad_(False)
        if model.generation_config is not None and model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
        return model

    candidates = gpu.dtype_candidates(settings.dtype, device)
    if device.type == "cpu" and len(candidates) == 1:
        model = load(candidates[0])  # float32 on the CPU: nothing to fall back to
    else:
        model, _ = gpu.load_with_dtype_fallback(
            load, lambda m: gpu.next_token_is_finite(m, tokenizer, settings.system_prompt), candidates
        )
    if settings.load_in_4bit:
        log.warning(
            "model.load_in_4bit: the weights are NF4-quantised. Directions and evaluation work on them; the "
            "abliteration edit (search, baking) needs full-precision matrices, so run those with load_in_4bit: false."
        )
    log.info(
        "loaded %s: %s on %s%s",
        path,
        next(model.parameters()).dtype,
        gpu.describe_placement(model),
        "".join(f", {d} {mb:.0f} MB" for d, mb in gpu.peak_gpu_memory_mb().items()),
    )
    return model, tokenizer
