"""MiniLM's forward written out as one small TorchScript module: the embedder's engine with
bfloat16 weights (core/embeddings.py, core/embed_compiled.py).

The traced HF forward (core/embed_compiled.py) runs every operator BERT's Python code issues:
the query, key and value projections one by one, GELU after its Linear, and, before the
first layer, transformers' mask builder (arange, where, and-ing of index tensors: about a
dozen operators whose results are the same boolean mask). At a query's one to two short
texts the forward is a few hundred microsecond-scale operators, and each pays its dispatch;
the matrix products themselves are about a third of the time. Here the same arithmetic is
issued as fewer, larger operators:
  - one Linear for query, key and value (their weights stacked: 384 -> 1152);
  - GELU fused into the feed-forward's first Linear (oneDNN's post-op, the exact erf form);
  - the padding mask made once, as an additive bias, for every layer's attention
    (`scaled_dot_product_attention`, oneDNN/flash on CPU);
  - the position and segment-0 embeddings summed once at load into one table;
  - mean pooling and L2 normalisation in float32 inside the same module.
The module is scripted (not traced, so no shape is baked in) and frozen once; one module
serves every shape.

Each Linear's weight is laid out once in oneDNN's blocked format where oneDNN takes it
(`mkldnn._reorder_linear_weight`, as core/embed_compiled.py), else the module runs plain
`linear` with GELU after it: the path of a CPU or torch build without oneDNN's bfloat16
packing (AVX2 only) and of float32 weights. `FusedEncoder.packed` says which; the vectors
are the traced path's (cosine 0.99999 or more; tests/core/test_embed_fused.py).

Where a one-text query's CPU goes (2-core Xeon, AMX, one thread, load 9-18 from others'
jobs): the forward is bound by streaming the Linears' 21 MB of bfloat16 weights, which do
not fit the 2 MB L2, not by arithmetic or dispatch. The 24 packed Linears of a forward at 24
rows, run in turn, cost 3.2-4.2 ms of CPU; each alone with its weight hot in L2, about 1.0 ms
for the 24. Fusing takes the dispatch and the mask builder off, not the streaming:
benchmarks/embeddings.py (20 rounds, load 11) 0.89x [0.84, 0.96] the packed trace's CPU a
text over the loop's query calls (one text 6.02 against 6.70 ms), 25 MB and 0.39 s to
build; the per-tensor int8 ONNX Runtime baseline, which streams half the bytes, stays ahead
(1.23x [1.14, 1.33]; one text 3.90 ms) at its recall@10 of 0.80 against our 0.99.
Measured and not taken (same microbenchmark, weights streamed as in a forward):
  - oneDNN's int8 Linear (`onednn.qlinear_pointwise`, AMX, weights per channel): 0.63x the
    packed bfloat16 on activation scales fixed in advance, 1.2x with the activations'
    scale computed at each call. Recall@10 against float32 with the Linears' arithmetic
    simulated in int8 (weights per channel; 1,200 texts, 150 queries, so about +-0.01):
    activations per tensor (ONNX Runtime's kind) 0.88 all Linears, 0.90 the second
    feed-forward alone; per token 0.96 all; per token with SmoothQuant (alpha 0.5, scales
    from 128 texts) 0.977 all, 0.983 all but the second feed-forward (two thirds of the
    bytes), 0.984-0.993 each group alone. So int8 at our recall needs per-token scales,
    which `qlinear_pointwise` does not take (a scalar): five to six more operators a Linear
    around it, about what the bytes it saves are worth at one text; not taken;
  - torch's dynamic int8 (fbgemm, per channel) 0.95x; weight-only int8
    (`_weight_int8pack_mm`) 1.8x and int4 (`_weight_int4pack_mm_for_cpu`) 2x;
  - transparent huge pages for torch's allocations (`THP_MEM_ALLOC_ENABLE`): no difference
    in alternated runs;
  - attention as matmul, softmax, matmul: 1.8-3x SDPA at these shapes; the residual add as
    oneDNN's binary post-op of the Linear: no faster than a separate add.
"""

# No `from __future__ import annotations`: TorchScript reads the layer's annotations as
# objects. Imported lazily by core/embeddings.py, so settings' start-up imports no torch.
import logging
import time
from typing import Any

import torch
from torch.nn import functional

from trifecta.core.embed_compiled import CompiledForward

log = logging.getLogger(__name__)
PACK_ROWS = 24  # the layout hint, as core/embed_compiled.py's PACK_ROWS
WARM_CALLS = 2  # the profiling executor runs profiled first, then optimises


def attend(qkv: torch.Tensor, bias: torch.Tensor, heads: int) -> torch.Tensor:
    """Self-attention over stacked projections: qkv (B, T, 3 * W), bias (B, 1, 1, T) additive
    mask -> the heads' context (B, T, W), in qkv's dtype."""
    batch, length, stacked = qkv.shape
    width = stacked // 3
    split = qkv.view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    context = functional.scaled_dot_product_attention(
        split[0], split[1], split[2], attn_mask=bias
    )  # (B, H, T, D)
    return context.transpose(1, 2).reshape(batch, length, width)


class FusedLayer(torch.nn.Module):
    """One BERT layer: fused QKV, attention, output, add & norm, feed-forward."""

    __constants__ = ("packed", "heads", "eps")  # TorchScript folds these into the graph
    packed: bool
    heads: int
    eps: float
    qkv_w: torch.Tensor
    qkv_b: torch.Tensor
    out_w: torch.Tensor
    out_b: torch.Tensor
    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    ff1_w: torch.Tensor
    ff1_b: torch.Tensor
    ff2_w: torch.Tensor
    ff2_b: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor

    def __init__(self, layer: Any, packed: bool, dtype: torch.dtype) -> None:
        super().__init__()
        attention = layer.attention  # HF's BertLayer (untyped submodules)
        self.packed = packed
        self.heads = int(attention.self.num_attention_heads)
        self.eps = float(attention.output.LayerNorm.eps)

        def weight(linears: list[torch.nn.Linear]) -> torch.Tensor:
            stacked = torch.cat([lin.weight.detach() for lin in linears]).to(dtype)
            if packed:
                return torch.ops.mkldnn._reorder_linear_weight(stacked, PACK_ROWS)
            return stacked.contiguous()

        def bias(linears: list[torch.nn.Linear]) -> torch.Tensor:
            return torch.cat([lin.bias.detach() for lin in linears]).to(dtype)

        own = attention.self
        qkv = [own.query, own.key, own.value]
        self.register_buffer("qkv_w", weight(qkv))
        self.register_buffer("qkv_b", bias(qkv))
        self.register_buffer("out_w", weight([attention.output.dense]))
        self.register_buffer("out_b", bias([attention.output.dense]))
        self.register_buffer("ln1_w", attention.output.LayerNorm.weight.detach().to(dtype))
        self.register_buffer("ln1_b", attention.output.LayerNorm.bias.detach().to(dtype))
        self.register_buffer("ff1_w", weight([layer.intermediate.dense]))
        self.register_buffer("ff1_b", bias([layer.intermediate.dense]))
        self.register_buffer("ff2_w", weight([layer.output.dense]))
        self.register_buffer("ff2_b", bias([layer.output.dense]))
        self.register_buffer("ln2_w", layer.output.LayerNorm.weight.detach().to(dtype))
        self.register_buffer("ln2_b", layer.output.LayerNorm.bias.detach().to(dtype))

    def _linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.packed:
            scalars: list[int | float | complex | None] = []
            return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", scalars, "")
        return functional.linear(x, w, b)

    def _linear_gelu(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.packed:
            scalars: list[int | float | complex | None] = []
            # "none": GELU's exact (erf) form, BERT's "gelu"
            return torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", scalars, "none")
        return functional.gelu(functional.linear(x, w, b))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x: (B, T, 384) states; bias: (B, 1, 1, T) additive mask -> (B, T, 384)."""
        width = x.shape[2]
        context = attend(self._linear(x, self.qkv_w, self.qkv_b), bias, self.heads)
        attended = self._linear(context, self.out_w, self.out_b)
        x = functional.layer_norm(attended + x, [width], self.ln1_w, self.ln1_b, self.eps)
        inner = self._linear_gelu(x, self.ff1_w, self.ff1_b)  # (B, T, 1536)
        out = self._linear(inner, self.ff2_w, self.ff2_b)
        return functional.layer_norm(out + x, [width], self.ln2_w, self.ln2_b, self.eps)


class FusedBert(torch.nn.Module):
    """Embeddings, the layers, mean pooling and L2 normalisation: (B, T) ids and mask ->
    (B, 384) float32 unit vectors."""

    __constants__ = ("eps",)
    eps: float
    words: torch.Tensor
    positions: torch.Tensor
    ln_w: torch.Tensor
    ln_b: torch.Tensor

    def __init__(
        self,
        bert: torch.nn.Module,
        packed: bool,
        dtype: torch.dtype,
        layers: list[torch.nn.Module] | None = None,
    ) -> None:
        """`layers`: the transformer layers to run (each (x, bias) -> x), else FusedLayer's
        of `bert` (core/embed_int8.py hands in its int8 ones)."""
        super().__init__()
        source: Any = bert  # HF's BertModel: its submodules are untyped to torch's Module
        embeddings = source.embeddings
        self.eps = float(embeddings.LayerNorm.eps)
        self.register_buffer("words", embeddings.word_embeddings.weight.detach().to(dtype))
        # Segment 0 throughout (a single sentence): its row added to every position once.
        positions = embeddings.position_embeddings.weight.detach().float()
        segment = embeddings.token_type_embeddings.weight.detach()[0].float()
        self.register_buffer("positions", (positions + segment).to(dtype))
        self.register_buffer("ln_w", embeddings.LayerNorm.weight.detach().to(dtype))
        self.register_buffer("ln_b", embeddings.LayerNorm.bias.detach().to(dtype))
        if layers is None:
            layers = [FusedLayer(layer, packed, dtype) for layer in source.encoder.layer]
        self.layers = torch.nn.ModuleList(layers)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        x = functional.embedding(ids, self.words) + self.positions[:length]
        x = functional.layer_norm(x, [x.shape[2]], self.ln_w, self.ln_b, self.eps)
        keep = mask[:, None, None, :].to(torch.bool)  # (B, 1, 1, T)
        # Padding keys get -inf-like scores; every query row keeps at least one key.
        bias = torch.zeros(keep.shape, dtype=x.dtype).masked_fill(~keep, -1e4)
        for layer in self.layers:
            x = layer(x, bias)
        states = x.float()
        weights = mask.unsqueeze(-1).to(states.dtype)  # (B, T, 1)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return functional.normalize(pooled, dim=-1)


def onednn_packing() -> str | None:
    """None where oneDNN packs and runs bfloat16 Linears on this CPU and build, else why not
    (tried on a tiny Linear, so a missing kernel shows here rather than at a query)."""
    if not torch.backends.mkldnn.is_available():
        return "torch built without oneDNN"
    try:
        w = torch.ones(8, 8, dtype=torch.bfloat16)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, PACK_ROWS)
        scalars: list[int | float | complex | None] = []
        out = torch.ops.mkldnn._linear_pointwise(
            torch.ones(2, 8, dtype=torch.bfloat16), packed, None, "gelu", scalars, "none"
        )
        if out.shape != (2, 8):
            return f"packed linear gave shape {tuple(out.shape)}"
    except (RuntimeError, AttributeError, NotImplementedError) as error:
        return f"{type(error).__name__}: {str(error)[:200]}"
    return None


class FusedEncoder(CompiledForward):
    """The scripted, frozen fused forward of one BERT, built on first use."""

    label = "fused"

    def __init__(self, bert: torch.nn.Module, prepack: bool = True) -> None:
        super().__init__()
        self._bert = bert
        self._prepack = prepack
        self.packed = False  # the Linears run on oneDNN-packed weights
        self.prepack_off: str | None = None  # why packing was not used, if it was asked for

    def _compile(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.jit.ScriptModule:
        started = time.perf_counter()
        dtype = next(self._bert.parameters()).dtype
        packed = False
        if not self._prepack:
            self.prepack_off = "packing not asked for"
        elif dtype != torch.bfloat16:
            self.prepack_off = f"{dtype} weights (packing is for bfloat16)"
        else:
            self.prepack_off = onednn_packing()
            packed = self.prepack_off is None
        with torch.inference_mode(False), torch.no_grad():
            scripted = torch.jit.script(FusedBert(self._bert, packed, dtype).eval())
            module = torch.jit.freeze(scripted)
        for _ in range(WARM_CALLS):
            module(ids, mask)
        self.packed = packed
        self._module = module
        self.compile_seconds = time.perf_counter() - started
        log.info("embedder: scripted the fused MiniLM in %.2f s", self.compile_seconds)
        return module
