"""MiniLM's forward as TorchScript, traced and frozen once: the embedder's engine with
bfloat16 weights before core/embed_fused.py (now `TRIFECTA_EMBED_ENGINE=torchscript`), and
the compiled engines' common part (`CompiledForward`).

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

With bfloat16 weights each Linear's weight is also handed to oneDNN once in its own blocked
(AMX) layout (`mkldnn._reorder_linear_weight`), and the traced graph calls oneDNN's linear on
it: a plain bfloat16 `linear` re-lays the weight out at every call, which at a query's few
rows cost about as much as the multiply (one 384x1536 Linear, 24 rows: 102 against 45 us).
The same kernels run on the same bfloat16 numbers, so the vectors are the unpacked path's
(cosine 1.0, recall@10 0.990 either way); over the loop's query mix 0.79x [0.73, 0.83] the
plain trace's CPU a text (benchmarks/embeddings.py, load 7-14; per shape in a probe, 0.5x
at one text to 0.8x at eight). The packed weights are a second copy beside the eager
model's, which the fallback keeps: 31 MB more after the trace, 16 MB before packing. Where
oneDNN or the packing is missing, the graph is traced with plain Linears, as before
(`prepacked` and `prepack_off` say which).

Not taken (same benchmark): torch's dynamic int8 of the Linears (fbgemm, x86 or oneDNN,
VNNI), traced and frozen: on this AMX CPU each int8 Linear was slower than the packed
bfloat16 one (384x384 at 24 rows: 35 against 24 us), and activations quantised per tensor
lose recall: every feed-forward Linear alone cost 0.01-0.07 of recall@10, all of them int8
0.87 (per channel) where the goal is 0.98. oneDNN's graph fusion
(`torch.jit.enable_onednn_fusion`; the benchmark's row until this change), no faster with
the weights out of cache as a query between other work finds them, about 20 MB per shape of
compiled partitions, and one shared module slowed past a few shapes, so it would need a
module per shape; a module per shape without fusion, whose first uses (0.2-0.9 s each, a
dozen shapes) cost a 300-request loop run more CPU than they saved.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Literal, cast, get_args

from trifecta.core.errors import InvalidInput

if TYPE_CHECKING:
    import torch

# fused: MiniLM written out as one scripted module (core/embed_fused.py); int8: that module
# with SmoothQuant int8 Linears (core/embed_int8.py; only when asked for); torchscript: the
# HF forward traced (this module); eager: the modules run one by one.
Engine = Literal["eager", "torchscript", "fused", "int8"]
ENGINE_ENV = "TRIFECTA_EMBED_ENGINE"  # auto (the default), eager, torchscript, fused or int8
# The weights' precision (core/embeddings.py), declared here with its check, which settings
# run at start-up as the engine's: this module imports no torch or numpy.
Precision = Literal["float32", "bfloat16"]
PRECISION_ENV = "TRIFECTA_EMBED_PRECISION"  # auto (the default), float32 or bfloat16
WARM_CALLS = 2  # the profiling executor runs profiled first, then optimises
# Rows (texts x padded tokens) the packed weights' layout is chosen for: the loop's commonest
# forward, one query of up to 24 tokens. Any row count runs on it (hints 16-256 measured
# within noise of one another).
PACK_ROWS = 24
# oneDNN's linear on a packed weight, as TorchScript source: the tracer cannot record the
# op's empty `Scalar?[]` argument itself, a scripted call it can.
_PACKED_LINEAR = """
def packed_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    scalars: List[Optional[Union[int, float, complex]]] = []
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", scalars, "")
"""
log = logging.getLogger(__name__)


def load_engine(requested: str | None, precision: str) -> Engine:
    """The forward's engine: `requested`, else the environment's ENGINE_ENV; "auto" means
    the fused module with bfloat16 weights (where it was measured fastest) and eager with
    float32 ones (whose exact claims, tests/core/test_embeddings_shapes.py, hold to 1e-5)."""
    choice = engine_choice(requested)
    if choice == "auto":
        return "fused" if precision == "bfloat16" else "eager"
    return cast(Engine, choice)


def engine_choice(requested: str | None = None) -> str:
    """`requested`, else the environment's ENGINE_ENV, else "auto", checked (no torch import:
    settings call it at start-up, core/settings.py); a bad value is an InvalidInput naming
    ENGINE_ENV."""
    choice = (requested or os.environ.get(ENGINE_ENV) or "auto").strip().lower()
    allowed = ("auto", *get_args(Engine))
    if choice not in allowed:
        raise InvalidInput(
            f"unknown embedding engine {choice!r}", field=ENGINE_ENV, allowed=allowed
        )
    return choice


def precision_choice(requested: str | None = None) -> str:
    """`requested`, else the environment's PRECISION_ENV, else "auto", checked (no torch
    import, as `engine_choice`); a bad value is an InvalidInput naming PRECISION_ENV."""
    choice = (requested or os.environ.get(PRECISION_ENV) or "auto").strip().lower()
    allowed = ("auto", *get_args(Precision))
    if choice not in allowed:
        raise InvalidInput(f"unknown precision {choice!r}", field=PRECISION_ENV, allowed=allowed)
    return choice


class CompiledForward(ABC):
    """A compiled forward of MiniLM (this module's trace, core/embed_fused.py's module), made
    on first use by `_compile`; `forward` returns None after any failure to make or run it
    (a missing kernel path), and the embedder runs eager from then on."""

    label = "compiled"  # in the log line that says the path is off

    def __init__(self) -> None:
        self._module: torch.jit.ScriptModule | None = None
        self.shapes: set[tuple[int, int]] = set()  # (rows, length) run so far
        self.broken: str | None = None  # why the compiled path was given up, if it was
        self.compile_seconds = 0.0  # wall time to make it and warm it

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
            log.warning("embedder: %s path off, eager from now on (%s)", self.label, self.broken)
            return None

    def compile_now(self) -> float:
        """Make the module now rather than at the first call; returns the seconds."""
        import torch

        with torch.inference_mode():
            ids = torch.full((1, 16), 100, dtype=torch.long)  # 100: [UNK]
            self.forward(ids, torch.ones_like(ids))
        return self.compile_seconds

    @abstractmethod
    def _compile(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.jit.ScriptModule:
        """Make, freeze and warm this engine's module on a call's inputs (sets
        `compile_seconds`); each engine builds its own."""


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


class CompiledEncoder(CompiledForward):
    """The traced, frozen HF forward of one model, made on first use."""

    label = "TorchScript"

    def __init__(self, bert: torch.nn.Module, prepack: bool = True) -> None:
        super().__init__()
        self._encoder = pooled_encoder(bert)
        self._prepack = prepack  # False: plain Linears (the benchmark's shipped-earlier row)
        self.prepacked = 0  # Linears traced on oneDNN-packed weights
        self.prepack_off: str | None = None  # why packing was not used, if it was asked for

    def _compile(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.jit.ScriptModule:
        import warnings

        import torch

        started = time.perf_counter()
        with warnings.catch_warnings(), _without_loss_type_warning():
            warnings.simplefilter("ignore")  # the tracer warns about HF's Python-side checks
            with self._packed_linears():  # the live model's Linears are back after it
                traced = torch.jit.trace(self._encoder, (ids, mask), check_trace=False)
            module = torch.jit.freeze(traced)  # deprecated for torch.compile, still shipped
        for _ in range(WARM_CALLS):
            module(ids, mask)
        self._module = module
        self.compile_seconds = time.perf_counter() - started
        log.info("embedder: traced and froze MiniLM in %.2f s", self.compile_seconds)
        return module

    @contextlib.contextmanager
    def _packed_linears(self) -> Iterator[None]:
        """Each bfloat16 Linear of the model swapped for one on a oneDNN-packed weight while
        the tracer runs (the trace keeps the packed weights, the eager model its own);
        nothing swapped, and `prepack_off` says why, where packing is unavailable."""
        swaps = self._packed_swaps() if self._prepack else []
        for parent, name, _, packed in swaps:
            setattr(parent, name, packed)
        self.prepacked = len(swaps)
        try:
            yield
        finally:
            for parent, name, linear, _ in swaps:
                setattr(parent, name, linear)

    def _packed_swaps(
        self,
    ) -> list[tuple[torch.nn.Module, str, torch.nn.Module, torch.nn.Module]]:
        import torch

        linears = [
            (parent, name, child)
            for parent in self._encoder.modules()
            for name, child in parent.named_children()
            if isinstance(child, torch.nn.Linear) and child.weight.dtype == torch.bfloat16
        ]
        if not linears:
            self.prepack_off = "no bfloat16 Linear weights"
            return []
        if not torch.backends.mkldnn.is_available():
            self.prepack_off = "torch built without oneDNN"
            return []
        try:
            function = torch.jit.CompilationUnit(_PACKED_LINEAR).packed_linear
            packed = _packed_linear_class()
            return [
                (parent, name, child, packed(child, function)) for parent, name, child in linears
            ]
        # An op missing from this build, or a CPU oneDNN has no bfloat16 layout for.
        except (RuntimeError, AttributeError, NotImplementedError) as error:
            self.prepack_off = f"{type(error).__name__}: {str(error)[:200]}"
            log.warning("embedder: packed weights off, plain Linears (%s)", self.prepack_off)
            return []


@functools.cache
def _packed_linear_class() -> type[torch.nn.Module]:
    import torch

    class PackedLinear(torch.nn.Module):
        """A Linear's weight in oneDNN's blocked layout for PACK_ROWS rows, and its bias."""

        def __init__(self, linear: torch.nn.Linear, function: Callable[..., torch.Tensor]):
            super().__init__()
            weight = linear.weight.detach()
            self.register_buffer(
                "weight", torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS)
            )
            bias = None if linear.bias is None else linear.bias.detach()
            self.register_buffer("bias", bias)
            self._function = function

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self._function(x, self.weight, self.bias)

    return PackedLinear


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
