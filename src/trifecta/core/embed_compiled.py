"""MiniLM's forward as TorchScript, traced and frozen once: the embedder's engine with
bfloat16 weights (core/embeddings.py).

A query call embeds one to a few short texts, and there much of the forward's cost is not
arithmetic but torch dispatching some 150 operators one by one from Python (BERT's six
layers, then pooling and normalisation). Traced, the whole forward is one graph run by
TorchScript's executor; frozen (`torch.jit.freeze`), the weights are constants it may fold.
One module serves every shape of the embedder's fixed set: BERT's traced graph does not
depend on the batch or the length (the two Python-side checks the tracer fixes are about
a missing mask and a mask longer than the input, neither of which happens here). Measured,
bfloat16, one torch thread, load 7 (probe over 25 shapes, 1-32 texts x 16-128 tokens): the
trace and freeze cost 0.24 s of CPU and about 13 MB, once; every shape ran 3-5 ms of CPU
faster than eager (one text of 24 tokens 7.2 against 11.6 ms); vectors at cosine 0.99999 or
more to eager's. benchmarks/embeddings.py has the rows.

Not taken (same benchmark): oneDNN's graph fusion (`torch.jit.enable_onednn_fusion`), no
faster with the weights out of cache as a query between other work finds them, about 20 MB
per shape of compiled partitions, and one shared module slowed past a few shapes, so it
would need a module per shape; a module per shape without fusion, whose first uses (0.2-0.9
s each, a dozen shapes) cost a 300-request loop run more CPU than they saved.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal, get_args

from trifecta.core.errors import InvalidInput

if TYPE_CHECKING:
    import torch

Engine = Literal["eager", "torchscript"]
ENGINE_ENV = "TRIFECTA_EMBED_ENGINE"  # auto (the default), eager or torchscript
WARM_CALLS = 2  # the profiling executor runs profiled first, then optimises
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


class CompiledEncoder:
    """The traced, frozen forward of one model, made on first use; `forward` returns None
    after any failure to trace or run it (a missing kernel path), and the caller runs eager
    from then on."""

    def __init__(self, bert: torch.nn.Module, fusion: bool = False) -> None:
        self._encoder = pooled_encoder(bert)
        self._fusion = fusion  # oneDNN's graph fusion: the benchmark's row only
        self._module: torch.jit.ScriptModule | None = None
        self.shapes: set[tuple[int, int]] = set()  # (rows, length) run so far
        self.broken: str | None = None  # why the compiled path was given up, if it was
        self.compile_seconds = 0.0  # wall time to trace, freeze and warm

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """(B, T) token ids and mask -> (B, 384) float32 unit vectors, or None (run eager).
        The caller holds the embedder's lock and torch's inference mode."""
        if self.broken is not None:
            return None
        try:
            module = self._module or self._compile(ids, mask)
            self.shapes.add((int(ids.shape[0]), int(ids.shape[1])))
            return module(ids, mask)
        # A kernel path missing on this CPU, or a torch build without TorchScript's parts.
        except (RuntimeError, AttributeError, NotImplementedError) as error:
            self.broken = f"{type(error).__name__}: {str(error)[:200]}"
            self._module = None
            log.warning("embedder: TorchScript path off, eager from now on (%s)", self.broken)
            return None

    def compile_now(self) -> float:
        """Trace and freeze now rather than at the first call; returns the seconds."""
        import torch

        with torch.inference_mode():
            ids = torch.full((1, 16), 100, dtype=torch.long)  # 100: [UNK]
            self.forward(ids, torch.ones_like(ids))
        return self.compile_seconds

    def _compile(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.jit.ScriptModule:
        import warnings

        import torch

        started = time.perf_counter()
        if self._fusion:  # process-wide, read when the executor optimises (the warm calls)
            torch.jit.enable_onednn_fusion(True)
        with warnings.catch_warnings(), _without_loss_type_warning():
            warnings.simplefilter("ignore")  # the tracer warns about HF's Python-side checks
            traced = torch.jit.trace(self._encoder, (ids, mask), check_trace=False)
            module = torch.jit.freeze(traced)  # deprecated for torch.compile, still shipped
        for _ in range(WARM_CALLS):
            module(ids, mask)
        self._module = module
        self.compile_seconds = time.perf_counter() - started
        log.info("embedder: traced and froze MiniLM in %.2f s", self.compile_seconds)
        return module


class _LossTypeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("`loss_type=")


@contextlib.contextmanager
def _without_loss_type_warning() -> Iterator[None]:
    """The tracer reads every attribute of the model (`module_has_exports`), and reading
    transformers' `loss_function` property warns, in plain text on stderr, that no loss is
    configured: about a loss this encoder never computes, and a non-JSON line in a server's
    JSON log. Dropped for the trace only."""
    source = logging.getLogger("transformers.modeling_utils")
    quiet = _LossTypeFilter()
    source.addFilter(quiet)
    try:
        yield
    finally:
        source.removeFilter(quiet)
