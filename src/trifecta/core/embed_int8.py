"""MiniLM with int8 matrix products: SmoothQuant-smoothed weights per channel, activations
quantised per token at each call (core/embed_fused.py's scripted module with int8 Linears).

Why: a query's forward is bound by streaming the Linears' weights (core/embed_fused.py),
and int8 weights are half bfloat16's bytes. ONNX Runtime's dynamic int8 takes that half but
quantises each activation tensor with one scale, and MiniLM's activations have a few outlier
channels, so its recall@10 against float32 is 0.80 (per channel 0.92) where the product
needs 0.98. Here, as SmoothQuant (Xiao et al. 2023) does:
  - per input channel j of each Linear a factor s_j = max|X_j|^a / max|W_j|^(1-a), from the
    activations' peaks over calibration texts, moves the outliers' range from the
    activations into the weights (X / s, W * s: the same product). Computed once at build
    from prompts of the task family generated with fixed seeds (`calibration_texts`; no
    download, the same factors in every process);
  - weights int8 per output channel, activations int8 per token (one scale a row, taken at
    each call), so one outlier token does not coarsen the others;
  - the attention output's factors are folded into the value projection's rows (attention
    mixes value rows with weights summing to one, so V / s gives context / s exactly); the
    query-key-value and first feed-forward inputs are the residual stream (BERT normalises
    after the add), which must stay unscaled, so there the division is one multiply before
    quantising; the second feed-forward's input is GELU's output, bounded below by -0.17:
    shifted by that bound it is non-negative and is quantised unsigned (0-255, twice the
    resolution of a signed scale over the same peak), the shift's product taken out of the
    bias once at build;
  - layer norms, attention (scores, softmax) and the residual stream stay float32; only
    the four Linears of each layer run int8 (oneDNN's `qlinear_pointwise` on weights it
    packed once: VNNI or AMX int8 where the CPU has them).
`int8_support()` says whether this CPU and build run it exactly; the embedder uses it only
with `TRIFECTA_EMBED_ENGINE=int8`.

Measured (benchmarks/embeddings.py, 8 rounds, 1,500 texts, 2-core Xeon with AMX, load 11-20),
and why it is not the default: recall@10 against float32 0.980 [0.974, 0.986] (the gate is
0.98; the shipped bfloat16 path 0.993), cosine 0.9990 mean; CPU a text over the loop's query
calls 0.99x [0.90, 1.15] the shipped bfloat16 module's, 1.62x ONNX Runtime's per-tensor int8.
The int8 products themselves take a third of the packed bfloat16 ones' time (oneDNN's
verbose log, AMX, 24 rows), but each Linear adds the quantisation's small operators (abs,
amax, clamp, divide, multiply, round, cast, and the row scale after), which at one text cost
about what the smaller weights save and at 16-32 texts more. Probed on float32 simulations
(1,600 texts): alpha 0.3, 0.4, 0.5, 0.7, 0.8 gave recall 0.965, 0.973, 0.978, 0.961, 0.957;
the weights int8 alone 0.985, the activations per token alone 0.978; any one of the four
Linear groups (query-key-value, attention output, either feed-forward) left float
0.978-0.983; per-tensor
activations (ONNX Runtime's kind) 0.93-0.95 even smoothed. Not done: an operator that
quantises a row in one pass (a C++ kernel), which is what the speed needs.
On a CPU with VNNI and no AMX, oneDNN runs signed int8 activations on its reference kernel
(its verbose log, limited to AVX512_CORE_VNNI): slow though exact; unsigned ones (with a
+128 offset folded into the bias) would keep the fast kernel there. Not done either.
"""

# No `from __future__ import annotations`: TorchScript reads the modules' annotations.
import logging
import time
from typing import Any

import torch
from torch.nn import functional

from trifecta.core.embed_compiled import CompiledForward
from trifecta.core.embed_fused import WARM_CALLS, FusedBert, attend
from trifecta.core.tasks import generate_tasks

log = logging.getLogger(__name__)
ALPHA = 0.5  # SmoothQuant's migration strength (benchmarks/embeddings.py's sweep)
CALIBRATION_TEXTS = 128
CALIBRATION_SEEDS = (7001, 7002, 7003, 7004)  # not the benchmark's seeds (11-16)
CALIBRATION_BATCH = 16
GELU_FLOOR = 0.17  # GELU(x) >= -0.16997 for every x
PACK_ROWS = 24  # oneDNN's layout hint: one query of up to 24 tokens
EPS = 1e-6  # a row's peak at least this, so an all-zero row quantises to zeros


def calibration_texts(count: int = CALIBRATION_TEXTS) -> list[str]:
    """Distinct prompts of the task family from fixed seeds, every grade and domain."""
    domains = ["energy", "plant", "grid", "water", "health", None]
    texts: list[str] = []
    for seed in CALIBRATION_SEEDS:
        for offset, domain in enumerate(domains):
            for task in generate_tasks(count // 8, seed=seed * 10 + offset, domain=domain):
                texts.append(task.prompt)
    return list(dict.fromkeys(texts))[:count]


class Int8Linear(torch.nn.Module):
    """y = x W^T + b with W int8 per output channel and x int8 per row, quantised at each
    call; optionally x multiplied by the smoothing factors' inverse first (`smooth`), or
    shifted non-negative and quantised unsigned (`unsigned`), and GELU after (`gelu`)."""

    __constants__ = ("smooth", "unsigned", "gelu", "levels", "width", "eps")
    smooth: bool
    eps: float
    unsigned: bool
    gelu: bool
    levels: float
    width: int
    weight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    bias: torch.Tensor
    inverse: torch.Tensor
    shift: torch.Tensor

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        factors: torch.Tensor | None,
        floor: float | None = None,
        gelu: bool = False,
    ) -> None:
        """weight (N, K) and bias (N,) float32 as the model has them; factors (K,) the
        SmoothQuant factors of the input (None: the input comes divided already); floor: a
        lower bound of every input (quantised unsigned after adding it)."""
        super().__init__()
        weight = weight.float()
        bias = bias.float()
        if factors is None:
            factors = torch.ones(weight.shape[1])
        weight = weight * factors  # W * s: the input is divided by s
        self.smooth = bool((factors != 1).any())
        self.unsigned = floor is not None
        self.gelu = gelu
        self.levels = 255.0 if self.unsigned else 127.0
        self.eps = EPS
        self.width = int(weight.shape[0])
        step = weight.abs().amax(1).clamp(min=1e-12) / 127  # per output channel
        quantised = (weight / step[:, None]).round().clamp(-127, 127)
        inverse = 1 / factors
        shift = torch.zeros_like(inverse)
        if floor is not None:
            shift = floor * inverse  # (x + floor) / s >= 0
            # The shift's product, with the weights as they are quantised, leaves the bias.
            bias = bias - (quantised * step[:, None]) @ shift
        self.register_buffer(
            "weight",
            torch.ops.onednn.qlinear_prepack(
                quantised.to(torch.int8), [PACK_ROWS, weight.shape[1]]
            ),
        )
        self.register_buffer("scales", step / self.levels)  # dequantising per-row scales
        self.register_buffer("zeros", torch.zeros(self.width, dtype=torch.long))
        self.register_buffer("bias", bias)
        self.register_buffer("inverse", inverse)
        self.register_buffer("shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., K) float32 -> (..., N) float32."""
        rows = x.reshape(-1, x.shape[-1])
        if self.unsigned:
            rows = torch.addcmul(self.shift, rows, self.inverse)
        elif self.smooth:
            rows = rows * self.inverse
        # The row's peak: abs and amax (linalg's infinity norm is several times slower).
        magnitude = rows if self.unsigned else rows.abs()  # unsigned rows are >= 0
        peak = magnitude.amax(-1, keepdim=True).clamp(min=self.eps)
        scaled = (rows * (self.levels / peak)).round()
        quantised = scaled.to(torch.uint8) if self.unsigned else scaled.to(torch.int8)
        scalars: list[int | float | complex | None] = []
        products = torch.ops.onednn.qlinear_pointwise(
            quantised,
            1.0,
            0,
            self.weight,
            self.scales,
            self.zeros,
            None,
            1.0,
            0,
            torch.float32,
            "none",
            scalars,
            "",
        )  # (M, N): sum of q_x q_w times the weight's step / levels
        out = torch.addcmul(self.bias, products, peak)  # times the row's peak
        if self.gelu:
            out = functional.gelu(out)
        shape = list(x.shape[:-1])
        shape.append(self.width)
        return out.view(shape)


class Int8Layer(torch.nn.Module):
    """One BERT layer with its four Linears int8 (Int8Linear), the rest float32."""

    __constants__ = ("heads", "eps")
    heads: int
    eps: float
    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor

    def __init__(self, layer: Any, peaks: dict[str, torch.Tensor], alpha: float) -> None:
        """layer: HF's BertLayer; peaks: max |x_j| of each Linear's input over the
        calibration texts ("qkv", "out", "ff1", "ff2")."""
        super().__init__()
        attention = layer.attention  # HF's BertLayer (untyped submodules)
        own = attention.self
        self.heads = int(own.num_attention_heads)
        self.eps = float(attention.output.LayerNorm.eps)
        qkv = [own.query, own.key, own.value]
        qkv_w = torch.cat([lin.weight.detach().float() for lin in qkv])
        qkv_b = torch.cat([lin.bias.detach().float() for lin in qkv])
        out_w = attention.output.dense.weight.detach().float()
        # The attention output's factors go into the value rows (the module docstring).
        out_s = smoothing(peaks["out"], out_w, alpha)
        width = out_w.shape[0]
        qkv_w[2 * width :] /= out_s[:, None]
        qkv_b[2 * width :] /= out_s
        self.qkv = Int8Linear(qkv_w, qkv_b, smoothing(peaks["qkv"], qkv_w, alpha))
        self.out = Int8Linear(out_w * out_s, attention.output.dense.bias.detach(), None)
        ff1, ff2 = layer.intermediate.dense, layer.output.dense
        ff1_w, ff2_w = ff1.weight.detach().float(), ff2.weight.detach().float()
        self.ff1 = Int8Linear(
            ff1_w, ff1.bias.detach(), smoothing(peaks["ff1"], ff1_w, alpha), gelu=True
        )
        self.ff2 = Int8Linear(
            ff2_w,
            ff2.bias.detach(),
            smoothing(peaks["ff2"] + GELU_FLOOR, ff2_w, alpha),
            floor=GELU_FLOOR,
        )
        norms = (attention.output.LayerNorm, layer.output.LayerNorm)
        self.register_buffer("ln1_w", norms[0].weight.detach().float())
        self.register_buffer("ln1_b", norms[0].bias.detach().float())
        self.register_buffer("ln2_w", norms[1].weight.detach().float())
        self.register_buffer("ln2_b", norms[1].bias.detach().float())

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x: (B, T, 384) float32 states; bias: (B, 1, 1, T) additive mask."""
        width = x.shape[2]
        context = attend(self.qkv(x), bias, self.heads)
        x = functional.layer_norm(self.out(context) + x, [width], self.ln1_w, self.ln1_b, self.eps)
        out = self.ff2(self.ff1(x))
        return functional.layer_norm(out + x, [width], self.ln2_w, self.ln2_b, self.eps)


def smoothing(peaks: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's factors s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) for a Linear's
    input channels j (weight (N, K): its columns' peaks)."""
    columns = weight.abs().amax(0).clamp(min=1e-5)
    return (peaks.float().clamp(min=1e-5) ** alpha / columns ** (1 - alpha)).clamp(min=1e-5)


def input_peaks(
    bert: torch.nn.Module, tokenizer: Any, texts: list[str]
) -> list[dict[str, torch.Tensor]]:
    """Per layer, max |x_j| of each Linear's input over `texts` (eager forwards of `bert` in
    its own precision; padding rows count, as the embedder's padded batches feed them too)."""
    source: Any = bert  # HF's BertModel
    peaks: list[dict[str, torch.Tensor]] = [{} for _ in source.encoder.layer]
    hooks = []

    def record(index: int, name: str) -> Any:
        def hook(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach().float()
            seen = x.abs().reshape(-1, x.shape[-1]).amax(0)
            old = peaks[index].get(name)
            peaks[index][name] = seen if old is None else torch.maximum(old, seen)

        return hook

    for index, layer in enumerate(source.encoder.layer):
        linears = {
            "qkv": layer.attention.self.query,
            "out": layer.attention.output.dense,
            "ff1": layer.intermediate.dense,
            "ff2": layer.output.dense,
        }
        for name, linear in linears.items():
            hooks.append(linear.register_forward_pre_hook(record(index, name)))
    try:
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            for start in range(0, len(texts), CALIBRATION_BATCH):
                batch = tokenizer(
                    texts[start : start + CALIBRATION_BATCH],
                    padding=True,
                    truncation=True,
                    max_length=256,
                    return_tensors="pt",
                )
                ids = batch["input_ids"]
                bert(
                    input_ids=ids,
                    attention_mask=batch["attention_mask"],
                    token_type_ids=torch.zeros_like(ids),
                )
    finally:
        for handle in hooks:
            handle.remove()
    return peaks


def int8_support() -> str | None:
    """None where oneDNN's int8 Linear gives exact integer products on this CPU and build,
    else why not. Tried at full range, signed and unsigned activations as the layers use
    them: without VNNI (AVX2 only) oneDNN's kernel multiplies pairs into 16 bits, which
    saturate there (measured: errors of a tenth of the product), so such a CPU runs eager
    rather than wrong."""
    if not torch.backends.mkldnn.is_available():
        return "torch built without oneDNN"
    generator = torch.Generator().manual_seed(0)
    weight = torch.randint(-127, 128, (16, 64), generator=generator, dtype=torch.int16)
    try:
        packed = torch.ops.onednn.qlinear_prepack(weight.to(torch.int8), [PACK_ROWS, 64])
        for kind, low, high in ((torch.int8, -127, 128), (torch.uint8, 0, 256)):
            x = torch.randint(low, high, (PACK_ROWS, 64), generator=generator, dtype=torch.int16)
            scalars: list[int | float | complex | None] = []
            products = torch.ops.onednn.qlinear_pointwise(
                x.to(kind), 1.0, 0, packed, torch.ones(16), torch.zeros(16, dtype=torch.long),
                None, 1.0, 0, torch.float32, "none", scalars, "",
            )  # fmt: skip
            exact = x.double() @ weight.double().t()
            if not torch.equal(products.double(), exact):
                worst = float((products.double() - exact).abs().max())
                return f"int8 products off by up to {worst:.0f} ({kind}; no VNNI?)"
    except (RuntimeError, AttributeError, NotImplementedError) as error:
        return f"{type(error).__name__}: {str(error)[:200]}"
    return None


class Int8Encoder(CompiledForward):
    """The scripted, frozen int8 MiniLM of one BERT, calibrated and built on first use."""

    label = "int8"

    def __init__(self, bert: torch.nn.Module, tokenizer: Any, alpha: float = ALPHA) -> None:
        super().__init__()
        self._bert = bert
        self._tokenizer = tokenizer
        self._alpha = alpha
        self.calibration_seconds = 0.0

    def _compile(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.jit.ScriptModule:
        started = time.perf_counter()
        missing = int8_support()
        if missing is not None:
            raise RuntimeError(f"no int8 Linears here: {missing}")
        peaks = input_peaks(self._bert, self._tokenizer, calibration_texts())
        self.calibration_seconds = time.perf_counter() - started
        source: Any = self._bert
        with torch.inference_mode(False), torch.no_grad():
            layers: list[torch.nn.Module] = [
                Int8Layer(layer, layer_peaks, self._alpha)
                for layer, layer_peaks in zip(source.encoder.layer, peaks, strict=True)
            ]
            model = FusedBert(self._bert, False, torch.float32, layers=layers).eval()
            module = torch.jit.freeze(torch.jit.script(model))
        for _ in range(WARM_CALLS):
            module(ids, mask)
        self._module = module
        self.compile_seconds = time.perf_counter() - started
        log.info(
            "embedder: calibrated (%.2f s) and scripted the int8 MiniLM in %.2f s",
            self.calibration_seconds,
            self.compile_seconds,
        )
        return module
