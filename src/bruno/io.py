"""File helpers: atomic writes (file and directory), JSON Lines with line-numbered errors, hashing.

Every output the pipeline writes goes through an atomic helper so that a killed job never leaves a half-written file or
model directory behind: content is written to a temporary sibling and renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from bruno.errors import BrunoError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; outputs get the usual permissions
    os.close(fd)
    return Path(name)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed to `path`, on error removed.

    Use it for files written by other libraries (torch.save, pandas, sqlite backups)."""
    path = Path(path)
    tmp = _tmp_sibling(path, suffix=path.suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory next to `path`; on success it replaces `path`, on error it is deleted.

    A stale temporary directory left by a killed job is never picked up: it is removed here and each call creates a
    fresh one (Snakemake runs at most one job per output, so any sibling of that name is stale)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON Lines file; a malformed line raises BrunoError naming the file and line number."""
    path = Path(path)
    if not path.is_file():
        raise BrunoError(
            f"File not found: {path}. Check the path in your config (paths are relative to the workdir)."
        )
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise BrunoError(
                    f"{path}, line {number}: malformed JSON ({e.msg}). Fix or remove that line."
                ) from None
            if not isinstance(record, dict):
                raise BrunoError(
                    f"{path}, line {number}: expected a JSON object, got {type(record).__name__}."
                )
            records.append(record)
    return records


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    lines = [json.dumps(r, ensure_ascii=False, default=_json_default) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_texts(texts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=_json_default).encode("utf-8"))


def directory_hashes(path: str | Path, pattern: str = "*.safetensors") -> dict[str, str]:
    """SHA-256 of the files matching `pattern` in a directory (e.g. model weights), keyed by file name."""
    return {p.name: sha256_file(p) for p in sorted(Path(path).glob(pattern))}
