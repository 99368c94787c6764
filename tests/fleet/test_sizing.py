"""Sizing arithmetic against values computed by hand (in the comments)."""

from __future__ import annotations

import math

import pytest

from trifecta.core.errors import Infeasible, InvalidInput
from trifecta.fleet.accelerators import ACCELERATORS, get_accelerator
from trifecta.fleet.sizing import (
    PRESETS,
    ModelSpec,
    custom_spec,
    serving_shape,
    size_across_tiers,
    size_model,
    smallest_fit,
)


def test_presets_are_the_public_shapes() -> None:
    assert set(PRESETS) >= {"userlm-8b", "userlm-13b", "userlm-70b", "rnd1-30b-a3b", "bitnet-2b4t"}
    llama8 = PRESETS["userlm-8b"]
    assert (llama8.layers, llama8.kv_heads, llama8.head_dim) == (32, 8, 128)
    assert PRESETS["rnd1-30b-a3b"].active == pytest.approx(3.34e9)
    assert all(spec.source for spec in PRESETS.values())


def test_userlm_8b_on_a100_80gb_by_hand() -> None:
    # weights: 8,030,261,248 params x 2 bytes = 16,060,522,496 B
    # KV: 2 (K, V) x 32 layers x 8 heads x 128 dims x 2 bytes = 131,072 B per token;
    #     x 8,192 tokens = 1,073,741,824 B
    # fits one A100 80 GB (0.9 x 80e9 = 72e9 usable); decode reads 17,134,264,320 B per token
    # at 2,039e9 B/s -> 119.0 tokens/s; compute 2 x 8.03e9 / 312e12 = 51 us: memory bound
    s = size_model(PRESETS["userlm-8b"], "a100-80gb", phase="dev", context=8192)
    assert s.weight_bytes == 16_060_522_496
    assert s.kv_bytes == 1_073_741_824
    assert (s.tp_degree, s.fits, s.bound) == (1, True, "memory")
    assert s.decode_tokens_per_s == pytest.approx(2039e9 / 17_134_264_320)
    assert s.decode_tokens_per_s == pytest.approx(119.0, abs=0.1)
    # $2.62/h (A100 80 GB, dev) for 1/119.0 s per token: 1e6 / 119.0 / 3600 x 2.62 = $6.116
    assert s.accelerator_seconds_per_token == pytest.approx(1 / s.decode_tokens_per_s)
    assert s.cost_per_million_tokens == pytest.approx(1e6 / s.decode_tokens_per_s / 3600 * 2.62)


def test_70b_needs_tensor_parallelism_by_hand() -> None:
    # weights 70,553,706,496 x 2 = 141.1 GB; KV at 131,072 tokens:
    # 2 x 80 x 8 x 128 x 2 B x 131,072 = 42,949,672,960 B; total 184.1 GB
    # H100: 72 GB usable -> 2 devices hold 144 GB (no), 4 hold 288 GB (yes)
    s = size_model(PRESETS["userlm-70b"], "h100", phase="pilot")
    assert s.kv_bytes == 42_949_672_960
    assert s.tp_degree == 4 and s.fits
    step = (141_107_412_992 + 42_949_672_960) / (4 * 3350e9)
    assert s.decode_tokens_per_s == pytest.approx(1 / step)
    assert s.cost_per_hour == pytest.approx(4 * 4.70)
    # A10 (21.6 GB usable x 8 = 172.8 GB) cannot hold 184.1 GB
    a10 = size_model(PRESETS["userlm-70b"], "a10", phase="pilot")
    assert not a10.fits and "184.1 GB" in (a10.reason or "")
    assert math.isinf(a10.cost_per_million_tokens) and a10.decode_tokens_per_s == 0


def test_bitnet_counts_its_16_bit_embedding() -> None:
    # ternary part (2,412,820,480 - 328,335,360) x 2 bits / 8 = 521,121,280 B
    # embedding 328,335,360 x 16 bits / 8 = 656,670,720 B; total 1,177,792,000 B (the GGUF: 1.19 GB)
    spec = PRESETS["bitnet-2b4t"]
    assert spec.weight_bytes == 1_177_792_000
    s = size_model(spec, "riscv-npu", phase="full", context=1024, batch=4)
    # 2-bit weights use the INT8 path; 4 sequences of 1,024 tokens x 76,800 B = 314,572,800 B
    assert s.kv_bytes == 314_572_800 and s.fits
    memory_time = (1_177_792_000 + 314_572_800) / 10.67e9
    compute_time = 2 * 2_412_820_480 * 4 / 2.0e12
    assert s.bound == "memory"
    assert s.decode_tokens_per_s == pytest.approx(4 / max(memory_time, compute_time))


def test_compute_bound_when_the_batch_is_large() -> None:
    # 1e9 8-bit weights on an A10: memory 1e9 B / 600e9 B/s = 1.67 ms per step; at batch 512
    # the INT8 units need 2 x 1e9 x 512 / 250e12 = 4.1 ms: compute bound
    spec = ModelSpec(
        name="toy",
        params=1e9,
        bits_per_weight=8,
        layers=1,
        kv_heads=1,
        head_dim=8,
        context_length=16,
    )
    s = size_model(spec, "a10", batch=512)
    assert s.bound == "compute"
    assert s.decode_tokens_per_s == pytest.approx(512 / (2 * 1e9 * 512 / 250e12))


def test_mixture_of_experts_reads_only_touched_experts() -> None:
    spec = PRESETS["rnd1-30b-a3b"]
    assert spec.weight_bytes_read(1) == pytest.approx(spec.active * 2)
    # 64 sequences touch 1 - (1 - 8/128)^64 = 98.4 % of the experts
    touched = 1 - (1 - 8 / 128) ** 64
    per_expert = (spec.params - spec.active) / 120
    expected = spec.weight_bytes - 128 * per_expert * 2 * (1 - touched)
    assert spec.weight_bytes_read(64) == pytest.approx(expected)
    assert spec.weight_bytes_read(1) < spec.weight_bytes_read(8) < spec.weight_bytes


def test_npus_have_no_bf16_path_and_no_tensor_parallelism() -> None:
    s = size_model(PRESETS["userlm-8b"], "coral-npu")
    assert not s.fits and "matrix path" in (s.reason or "")
    assert size_model(PRESETS["bitnet-2b4t"], "coral-npu", context=1024).tp_degree == 1


def test_across_tiers_and_smallest_fit() -> None:
    rows = size_across_tiers(PRESETS["userlm-8b"], "dev", context=4096)
    assert [r.accelerator for r in rows] == list(ACCELERATORS)
    best = smallest_fit(PRESETS["userlm-8b"], "dev", context=4096)
    fitting = [r for r in rows if r.fits]
    assert best.cost_per_hour == min(r.cost_per_hour for r in fitting)
    huge = ModelSpec(name="huge", params=2e12, layers=200, kv_heads=64, head_dim=128)
    with pytest.raises(Infeasible):
        smallest_fit(huge, "dev")


def test_serving_shape_maximises_tokens_per_device() -> None:
    shape = serving_shape(
        PRESETS["userlm-8b"], get_accelerator("h100"), phase="dev", context=2048, batch_limit=64
    )
    assert shape is not None and shape.batch == 64
    for tp in (1, 2, 4, 8):
        other = size_model(PRESETS["userlm-8b"], "h100", batch=64, context=2048, tp=tp)
        assert other.tokens_per_s_per_device <= shape.tokens_per_s_per_device * 1.0001
    assert serving_shape(PRESETS["userlm-70b"], "coral-npu", phase="dev", context=2048) is None


def test_custom_spec_borrows_the_nearest_shape_and_says_so() -> None:
    spec, note = custom_spec(params=70e9, bits=4)
    assert spec.params == 70e9 and spec.bits_per_weight == 4
    assert (spec.layers, spec.kv_heads) == (80, 8) and note and "userlm-70b" in note
    spec, note = custom_spec(preset="userlm-8b", bits=8)
    assert spec.weight_bytes == pytest.approx(8_030_261_248) and note is None
    with pytest.raises(InvalidInput) as caught:
        custom_spec()
    assert caught.value.field == "params"
    with pytest.raises(InvalidInput) as caught:
        custom_spec(preset="gpt-9")
    assert caught.value.field == "preset"
