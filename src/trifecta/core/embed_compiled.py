"""MiniLM's forward as TorchScript, traced and frozen once per fixed input shape: the query
path's engine (core/embeddings.py).

A query call embeds one to a few short texts, and there much of the forward's cost is not
arithmetic but torch dispatching some 150 operators one by one from Python (BERT's six
layers, then pooling and normalisation). Traced, the whole forward is one graph run by
TorchScript's executor; frozen (`torch.jit.freeze`), the weights are constants it may fold.
Measured in benchmarks/embeddings.py (bfloat16, one torch thread, candidates interleaved so
that each call finds its weights out of cache, as a query between other work does): one text
8.2 ms of CPU against 13.2 eager, the loop's query mix 0.65x of eager. oneDNN's graph fusion
(`torch.jit.enable_onednn_fusion`) was no faster there (4.94 against 4.91 ms a text over the
mix; faster only when the same shape runs back to back with its weights in cache) and held
twice the memory, so it is off (`fusion=True` keeps it as the benchmark's row).

One module per (rows, padded length): TorchScript's profiling executor specialises a graph
to the shapes it has seen and, past a few, falls back to slower generic plans (a shared
module over 16 shapes ran the fifth and later ones no faster than eager), so each shape gets
its own trace, compiled on first use. Each costs 0.2-0.9 s to trace and warm and about 10 MB
of the executor's state, so only the query shapes are compiled (COMPILED_ROWS x
COMPILED_LENGTHS, at most 12 modules); the learner's large batches, whose cost is arithmetic,
stay eager.

Vectors: the same operators as the eager path in the same precision, so within the cosine the
eager path already keeps to float32 (tests/core/test_embed_compiled.py).
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Literal, get_args

from trifecta.core.errors import InvalidInput

if TYPE_CHECKING:
    import torch

Engine = Literal["eager", "torchscript"]
ENGINE_ENV = "TRIFECTA_EMBED_ENGINE"  # auto (the default), eager or torchscript
COMPILED_ROWS = (1, 2, 4, 8)  # the loop's query calls (core/embeddings.py's chunk sizes)
COMPILED_LENGTHS = (16, 24, 32)  # the loop's queries are 6-28 tokens
WARM_CALLS = 3  # the profiling executor optimises after its first runs; count them at compile
log = logging.getLogger(__name__)


def load_engine(requested: str | None, precision: str) -> Engine:
    """The forward's engine: `requested`, else the environment's ENGINE_ENV; "auto" means
    TorchScript with bfloat16 weights (where it was measured faster) and eager with float32
    ones (whose exact claims, tests/core/test_embeddings_shapes.py, hold to 1e-5)."""
    choice = (requested or os.environ.get(ENGINE_ENV) or "auto").strip().lower()
    allowed = ("auto", *get_args(Engine))
    if choice not in allowed:
        raise InvalidInput(
            f"unknown embedding engine {choice!r}", field=ENGINE_ENV, allowed=allowed
        )
    if choice == "auto":
        return "torchscript" if precision == "bfloat16" else "eager"
    return "torchscript" if choice == "torchscript" else "eager"


def pooled_encoder(bert: torch.nn.Module) -> torch.nn.Module:
    """BERT, mean pooling over the attention mask and L2 normalisation as one module (what
    sentence-transformers' Transformer, Pooling and Normalize modules do in turn)."""
    import torch

    class PooledEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            states = self.bert(
                input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)
            ).last_hidden_state.float()  # (B, T, 384), float32 from here as the eager path
            weights = mask.unsqueeze(-1).to(states.dtype)  # (B, T, 1)
            pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)  # (B, 384)
            return torch.nn.functional.normalize(pooled, dim=-1)  # (B, 384), unit norm

    return PooledEncoder().eval()


class CompiledShapes:
    """Traced, frozen, fused forwards of one model, one per compiled shape, made on first use;
    `forward` returns None for a shape it does not compile (the caller runs eager), and after
    any failure to trace or run (a missing kernel path) for every shape from then on."""

    def __init__(self, bert: torch.nn.Module, fusion: bool = False) -> None:
        self._encoder = pooled_encoder(bert)
        self._fusion = fusion
        self._modules: dict[tuple[int, int], torch.jit.ScriptModule] = {}
        self.broken: str | None = None  # why the compiled path was given up, if it was
        self.compile_seconds = 0.0  # wall time spent tracing and warming, all shapes

    @staticmethod
    def covers(rows: int, length: int) -> bool:
        return rows in COMPILED_ROWS and length in COMPILED_LENGTHS

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """The (rows, length) shapes compiled so far."""
        return sorted(self._modules)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """(B, T) token ids and mask -> (B, 384) float32 unit vectors, or None (run eager).
        The caller holds the embedder's lock and torch's inference mode."""
        rows, length = ids.shape
        if self.broken is not None or not self.covers(rows, length):
            return None
        try:
            module = self._modules.get((rows, length)) or self._compile(ids, mask)
            return module(ids, mask)
        # A kernel path missing on this CPU, or a torch build without TorchScript's parts.
        except (RuntimeError, AttributeError, NotImplementedError) as error:
            self.broken = f"{type(error).__name__}: {str(error)[:200]}"
            self._modules.clear()
            log.warning("embedder: TorchScript path off, eager from now on (%s)", self.broken)
            return None

    def compile_all(self) -> float:
        """Compile every shape now (a server's warm-up, the benchmark); returns the seconds."""
        import torch

        started = time.perf_counter()
        with torch.inference_mode():
            for rows in COMPILED_ROWS:
                for length in COMPILED_LENGTHS:
                    ids = torch.full((rows, length), 100, dtype=torch.long)  # 100: [UNK]
                    self.forward(ids, torch.ones_like(ids))
        return time.perf_counter() - started

    def _compile(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.jit.ScriptModule:
        import warnings

        import torch

        started = time.perf_counter()
        if self._fusion:  # process-wide, read when the executor optimises (the warm calls)
            torch.jit.enable_onednn_fusion(True)
        with warnings.catch_warnings():  # the tracer warns about HF's Python-side checks
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(self._encoder, (ids, mask), check_trace=False)
            module = torch.jit.freeze(traced)  # deprecated for torch.compile, still shipped
        for _ in range(WARM_CALLS):
            module(ids, mask)
        self._modules[(int(ids.shape[0]), int(ids.shape[1]))] = module
        seconds = time.perf_counter() - started
        self.compile_seconds += seconds
        log.info("embedder: compiled shape %s in %.2f s", tuple(ids.shape), seconds)
        return module
