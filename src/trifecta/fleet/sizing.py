"""Model-to-hardware sizing: memory, tensor-parallel degree and a decode roofline.

The arithmetic, for a model of P parameters at b bits, L layers, H_kv key/value heads of
dimension d, KV elements of b_kv bits, batch B and context C:

    weight bytes  = P * b / 8                     (a 16-bit embedding counted at 16 bits)
    KV bytes      = 2 * L * H_kv * d * b_kv / 8 * C * B
    fits          on t devices (t = 1, 2, 4, 8; NPUs t = 1) when
                  (weights + KV) / t <= USABLE_MEMORY_FRACTION * device memory
    decode step   = max(bytes read / (t * bandwidth), 2 * active P * B / (t * dense ops/s))
    tokens/s      = B / step

Every decode step reads the weights once (for a mixture of experts: the shared weights plus the
experts the batch touches, 1 - (1 - k/E)^B of them under uniform routing) and the whole KV cache
once. This is a roofline: an upper bound that ignores kernel efficiency and tensor-parallel
communication, good for comparing tiers and for planning capacity, not a latency promise.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from trifecta.core.errors import Infeasible, InvalidInput
from trifecta.core.settings import Phase
from trifecta.fleet.accelerators import ACCELERATORS, Accelerator, get_accelerator
from trifecta.fleet.assets import read_asset
from trifecta.fleet.costs import PriceOverrides, gpu_hour_price

# Share of device memory for weights and KV cache; the rest is activations and runtime. The
# figure is vLLM's default `gpu_memory_utilization` (docs.vllm.ai, engine arguments).
USABLE_MEMORY_FRACTION = 0.9
GPU_TP_DEGREES = (1, 2, 4, 8)  # one node: up to 8 GPUs on NVLink / PCIe
NPU_TP_DEGREES = (1,)  # edge NPUs serve a model each, no tensor parallelism across boards


class ModelSpec(BaseModel):
    """The shape of a model, as far as memory and decode speed depend on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    params: float = Field(gt=0, description="all parameters")
    active_params: float | None = Field(default=None, gt=0, description="per token (MoE)")
    bits_per_weight: float = Field(default=16, gt=0, le=32)
    context_length: int = Field(default=4096, gt=0)
    layers: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    kv_bits: float = Field(default=16, gt=0, le=32)
    experts: int | None = Field(default=None, gt=0, description="experts per MoE layer")
    active_experts: int | None = Field(default=None, gt=0, description="experts per token")
    embedding_params: float = Field(default=0, ge=0, description="kept at embedding_bits")
    embedding_bits: float | None = Field(default=None, gt=0, le=32)
    source: str = ""

    @property
    def active(self) -> float:
        return self.active_params or self.params

    @property
    def weight_bytes(self) -> float:
        embedding_bits = self.embedding_bits or self.bits_per_weight
        return (
            (self.params - self.embedding_params) * self.bits_per_weight
            + self.embedding_params * embedding_bits
        ) / 8

    @property
    def kv_bytes_per_token(self) -> float:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.kv_bits / 8

    def weight_bytes_read(self, batch: int) -> float:
        """Weight bytes one decode step of `batch` sequences reads."""
        if not (self.experts and self.active_experts and self.active_params):
            return self.weight_bytes
        per_expert = (self.params - self.active_params) / (self.experts - self.active_experts)
        expert_bytes = self.experts * per_expert * self.bits_per_weight / 8
        touched = 1 - (1 - self.active_experts / self.experts) ** batch
        return self.weight_bytes - expert_bytes * (1 - touched)


class Sizing(BaseModel):
    """One model on one accelerator type: memory, parallelism, speed and cost."""

    model: str
    accelerator: str
    phase: Phase
    batch: int
    context: int
    weight_bytes: float
    kv_bytes: float
    tp_degree: int
    fits: bool
    reason: str | None = Field(default=None, description="why it does not fit")
    bound: Literal["memory", "compute", "none"]
    decode_tokens_per_s: float = Field(description="all sequences of the batch together")
    accelerator_seconds_per_token: float
    hour_price: float = Field(description="USD per device-hour")
    cost_per_hour: float = Field(description="USD per hour for the tp_degree devices")
    cost_per_million_tokens: float

    @property
    def memory_needed_bytes(self) -> float:
        return self.weight_bytes + self.kv_bytes

    @property
    def tokens_per_s_per_device(self) -> float:
        return self.decode_tokens_per_s / self.tp_degree if self.fits else 0.0


@lru_cache(maxsize=1)
def _presets() -> dict[str, ModelSpec]:
    raw = read_asset("fleet/models.yaml")["models"]
    return {name: ModelSpec(name=name, **fields) for name, fields in raw.items()}


PRESETS: dict[str, ModelSpec] = _presets()


def get_preset(name: str) -> ModelSpec:
    try:
        return PRESETS[name]
    except KeyError:
        raise InvalidInput(
            f"unknown model preset {name!r}", field="preset", allowed=PRESETS
        ) from None


def tp_degrees(accelerator: Accelerator) -> tuple[int, ...]:
    return GPU_TP_DEGREES if accelerator.kind == "gpu" else NPU_TP_DEGREES


def _as_accelerator(accelerator: Accelerator | str) -> Accelerator:
    return accelerator if isinstance(accelerator, Accelerator) else get_accelerator(accelerator)


def size_model(
    spec: ModelSpec,
    accelerator: Accelerator | str,
    *,
    phase: Phase = "dev",
    batch: int = 1,
    context: int | None = None,
    tp: int | None = None,
    overrides: PriceOverrides | None = None,
) -> Sizing:
    """Size `spec` on `accelerator`: the smallest tensor-parallel degree that holds the weights
    and the KV cache of `batch` sequences of `context` tokens (or exactly `tp` devices)."""
    acc = _as_accelerator(accelerator)
    if batch < 1:
        raise InvalidInput("must be at least 1", field="batch")
    context = spec.context_length if context is None else context
    if context < 1:
        raise InvalidInput("must be at least 1", field="context")
    price = gpu_hour_price(acc.name, phase, overrides)
    kv = spec.kv_bytes_per_token * context * batch
    needed = spec.weight_bytes + kv
    usable = USABLE_MEMORY_FRACTION * acc.memory_bytes
    degrees = (tp,) if tp is not None else tp_degrees(acc)
    chosen = next((t for t in degrees if needed / t <= usable), None)
    ops = acc.ops_per_s(spec.bits_per_weight)
    reason = None
    if ops == 0:
        reason = f"no {spec.bits_per_weight:g}-bit matrix path"
    elif chosen is None:
        reason = f"needs {needed / 1e9:.1f} GB > {max(degrees)} x {usable / 1e9:.1f} GB"
    if reason is not None:
        return Sizing(
            model=spec.name,
            accelerator=acc.name,
            phase=phase,
            batch=batch,
            context=context,
            weight_bytes=spec.weight_bytes,
            kv_bytes=kv,
            tp_degree=max(degrees),
            fits=False,
            reason=reason,
            bound="none",
            decode_tokens_per_s=0.0,
            accelerator_seconds_per_token=math.inf,
            hour_price=price,
            cost_per_hour=price * max(degrees),
            cost_per_million_tokens=math.inf,
        )
    assert chosen is not None
    memory_time = (spec.weight_bytes_read(batch) + kv) / (chosen * acc.bandwidth_bytes_per_s)
    compute_time = 2 * spec.active * batch / (chosen * ops)
    step = max(memory_time, compute_time)
    tokens_per_s = batch / step
    device_seconds = chosen / tokens_per_s
    return Sizing(
        model=spec.name,
        accelerator=acc.name,
        phase=phase,
        batch=batch,
        context=context,
        weight_bytes=spec.weight_bytes,
        kv_bytes=kv,
        tp_degree=chosen,
        fits=True,
        bound="memory" if memory_time >= compute_time else "compute",
        decode_tokens_per_s=tokens_per_s,
        accelerator_seconds_per_token=device_seconds,
        hour_price=price,
        cost_per_hour=price * chosen,
        cost_per_million_tokens=device_seconds * 1e6 / 3600 * price,
    )


def max_batch(spec: ModelSpec, accelerator: Accelerator, tp: int, context: int) -> int:
    """The most sequences of `context` tokens whose KV cache fits beside the weights on `tp`
    devices (0 if the weights alone do not fit)."""
    room = USABLE_MEMORY_FRACTION * accelerator.memory_bytes * tp - spec.weight_bytes
    return max(0, math.floor(room / (spec.kv_bytes_per_token * context)))


def serving_shape(
    spec: ModelSpec,
    accelerator: Accelerator | str,
    *,
    phase: Phase,
    context: int,
    batch_limit: int = 64,
    overrides: PriceOverrides | None = None,
) -> Sizing | None:
    """How a replica of `spec` is best served on `accelerator`: over the tensor-parallel degrees
    that fit, the largest batch (up to `batch_limit`) and the most tokens/s per device. None if
    the model does not fit at all."""
    acc = _as_accelerator(accelerator)
    if acc.ops_per_s(spec.bits_per_weight) == 0:
        return None
    best: Sizing | None = None
    for tp in tp_degrees(acc):
        batch = min(batch_limit, max_batch(spec, acc, tp, context))
        if batch < 1:
            continue
        sizing = size_model(
            spec, acc, phase=phase, batch=batch, context=context, tp=tp, overrides=overrides
        )
        if best is None or sizing.tokens_per_s_per_device > best.tokens_per_s_per_device * 1.0001:
            best = sizing
    return best


def size_across_tiers(
    spec: ModelSpec, phase: Phase, *, batch: int = 1, context: int | None = None
) -> list[Sizing]:
    """`spec` sized on every accelerator of the catalog (the `trifecta size` table)."""
    return [
        size_model(spec, acc, phase=phase, batch=batch, context=context)
        for acc in ACCELERATORS.values()
    ]


def smallest_fit(
    spec: ModelSpec, phase: Phase, *, batch: int = 1, context: int | None = None
) -> Sizing:
    """The cheapest deployment per hour that holds `spec` (ties: the least total memory)."""
    fitting = [s for s in size_across_tiers(spec, phase, batch=batch, context=context) if s.fits]
    if not fitting:
        raise Infeasible(
            f"{spec.name} fits on no accelerator of the catalog at batch {batch}", field="model"
        )
    return min(
        fitting,
        key=lambda s: (s.cost_per_hour, s.tp_degree * ACCELERATORS[s.accelerator].memory_gb),
    )


def custom_spec(
    *,
    preset: str | None = None,
    params: float | None = None,
    bits: float | None = None,
    active_params: float | None = None,
    layers: int | None = None,
    kv_heads: int | None = None,
    head_dim: int | None = None,
    kv_bits: float | None = None,
) -> tuple[ModelSpec, str | None]:
    """A spec from a preset and/or explicit figures (the `trifecta size` options). Without a
    preset, the KV-cache shape not given is borrowed from the preset nearest in size, and the
    returned note says so."""
    note = None
    if preset is not None:
        base = get_preset(preset)
    elif params is None:
        raise InvalidInput("give --preset or --params", field="params")
    else:
        if params <= 0:
            raise InvalidInput("must be positive", field="params")
        base = min(PRESETS.values(), key=lambda p: abs(math.log(p.params / params)))
        if None in (layers, kv_heads, head_dim):
            note = (
                f"KV-cache shape not given: layers, KV heads and head dim taken from "
                f"{base.name} ({base.layers} x {base.kv_heads} x {base.head_dim}), context "
                f"{base.context_length}"
            )
    fields = {
        "params": params,
        "bits_per_weight": bits,
        "active_params": active_params,
        "layers": layers,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "kv_bits": kv_bits,
    }
    changes: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
    if preset is None:
        changes.update(
            name=f"custom-{params:.3g}",
            bits_per_weight=16 if bits is None else bits,  # 0 is bad input, not 'unset'
            source="",
            experts=None,
            active_experts=None,
            embedding_params=0,
            embedding_bits=None,
            active_params=active_params,
        )
    for key in ("params", "bits_per_weight", "layers", "kv_heads", "head_dim", "kv_bits"):
        if key in changes and changes[key] <= 0:
            raise InvalidInput("must be positive", field=key.replace("bits_per_weight", "bits"))
    spec = ModelSpec.model_validate({**base.model_dump(), **changes})
    return spec, note
