"""GGUF models: dequantised once into a normal safetensors model directory that every later stage loads.

transformers reads GGUF files (model and tokenizer, chat template included) but will not save a model it loaded from
one ("quantized with gguf and is not serializable"). Loaded with `GgufConfig(dequantize=True)` the weights are plain
dense tensors whatever kernels are installed; dropping the quantizer and its config entry then lets `save_pretrained`
write safetensors. What a GGUF does not carry (sampling defaults, the original tokenizer class, a usable
`model_max_length`) is set from the file's own metadata where possible and listed in `gguf_source.json`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from bruno.errors import BrunoError
from bruno.io import atomic_directory, atomic_write_json, sha256_file
from bruno.model.placement import TORCH_DTYPES

log = logging.getLogger(__name__)

SOURCE_RECORD = "gguf_source.json"


def _header_fields(path: Path) -> dict[str, Any]:
    """The scalar metadata of the file (name, architecture, file type, context length, ...); arrays left out."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 (gguf raises ValueError, struct and numpy errors alike)
        raise BrunoError(
            f"model file {path} is not a readable GGUF file ({type(e).__name__}: {e})."
        ) from None
    fields = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and len(field.data) > 1:
            continue
        try:
            value = field.contents()
        except Exception:  # noqa: BLE001 (a field whose type this gguf version cannot decode is only not recorded)
            continue
        if isinstance(value, str | int | float | bool) or value is None:
            fields[key] = value
    fields["tensor_types"] = sorted({t.tensor_type.name for t in reader.tensors})
    return fields


def dequantize_gguf(gguf_path: str | Path, out_dir: str | Path, dtype: str = "float32") -> dict[str, Any]:
    """Load `gguf_path` with transformers, dense, and save model + tokenizer as a safetensors directory (atomic).

    Returns the provenance record written to `out_dir/gguf_source.json` (file, SHA-256, metadata, what was lost)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf_path = Path(gguf_path).resolve()
    if dtype not in TORCH_DTYPES:
        raise BrunoError(f"dequantize: dtype '{dtype}' is not one of {', '.join(TORCH_DTYPES)}.")
    start = time.time()
    header = _header_fields(gguf_path)
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            gguf_file=name,
            dtype=TORCH_DTYPES[dtype],
            quantization_config=GgufConfig(gguf_file=name, dequantize=True),
        )
    except (ValueError, OSError, KeyError, NotImplementedError, RuntimeError) as e:
        raise BrunoError(
            f"model file {gguf_path} could not be dequantised by transformers "
            f"(architecture {header.get('general.architecture')!r}, tensor types {header['tensor_types']}): "
            f"{type(e).__name__}: {e}. Use the model's safetensors release instead."
        ) from None
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    lost = _restore_what_gguf_drops(model, tokenizer, header)
    record = {
        "gguf_file": str(gguf_path),
        "sha256": sha256_file(gguf_path),
        "bytes": gguf_path.stat().st_size,
        "dtype": dtype,
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "header": header,
        "not_carried_over": lost,
    }
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(Path(tmp) / SOURCE_RECORD, record)
    for item in lost:
        log.warning("not carried over from %s: %s", gguf_path.name, item)
    log.info(
        "dequantised %s (%s, %s, %.1f M parameters) to %s in %.1f s",
        gguf_path.name,
        record["architecture"],
        dtype,
        record["parameters"] / 1e6,
        out_dir,
        time.time() - start,
    )
    return record


def save_gguf_architecture(gguf_path: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """The config and tokenizer (chat template included) of `gguf_path` saved as a model directory without weights
    (atomic): enough to build a model of the same shape where the file itself cannot be taken (`bruno_tools.bench
    --random-weights`). Returns the record written to `out_dir/gguf_source.json`."""
    from transformers import AutoConfig, AutoTokenizer

    gguf_path = Path(gguf_path).resolve()
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (ValueError, OSError, KeyError, NotImplementedError, RuntimeError) as e:
        raise BrunoError(
            f"model file {gguf_path}: transformers could not read its config and tokenizer ({type(e).__name__}: {e})."
        ) from None
    if getattr(config, "max_position_embeddings", None):
        tokenizer.model_max_length = int(config.max_position_embeddings)
    record = {
        "gguf_file": str(gguf_path),
        "sha256": sha256_file(gguf_path),
        "bytes": gguf_path.stat().st_size,
        "weights": "none: the architecture (config.json) and tokenizer of the file only",
    }
    with atomic_directory(out_dir) as tmp:
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(Path(tmp) / SOURCE_RECORD, record)
    return record


def _restore_what_gguf_drops(model: Any, tokenizer: Any, header: dict[str, Any]) -> list[str]:
    """Set what can be recovered (the context length as model_max_length); list what cannot."""
    lost = []
    context = getattr(model.config, "max_position_embeddings", None)
    if context:
        tokenizer.model_max_length = int(context)
    else:
        lost.append("model_max_length: the file states no context length; the tokenizer keeps its default")
    lost.append(
        "sampling defaults (generation_config.json of the original release): the pipeline decodes greedily or "
        "with its own configured temperature, so none are needed"
    )
    lost.append(
        f"the original tokenizer class: saved as {type(tokenizer).__name__} (same vocabulary, merges, special "
        "tokens and chat template)"
    )
    if not getattr(tokenizer, "chat_template", None):
        lost.append("chat template: the file has none; set model.chat_template")
    return lost
