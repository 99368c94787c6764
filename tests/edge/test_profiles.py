from __future__ import annotations

import pytest

from trifecta.core.errors import InvalidInput
from trifecta.edge.config import EdgeModelConfig
from trifecta.edge.profiles import EDGE_TARGETS, edge_profile, edge_profiles
from trifecta.fleet.accelerators import ACCELERATORS
from trifecta.fleet.costs import gpu_hour_price


def test_profiles_cover_the_edge_accelerators() -> None:
    assert {"coral-npu", "riscv-npu"} <= set(EDGE_TARGETS)
    assert [p.accelerator for p in edge_profiles(EdgeModelConfig())] == list(EDGE_TARGETS)


@pytest.mark.parametrize("phase", ["dev", "pilot", "full"])
def test_profile_is_the_roofline_of_the_catalog_figures(phase: str) -> None:
    config = EdgeModelConfig()
    profile = edge_profile("coral-npu", config, phase=phase)  # type: ignore[arg-type]
    device = ACCELERATORS["coral-npu"]
    memory_rate = device.memory_bandwidth_gbs * 1e9 / profile.weight_bytes_per_token
    compute_rate = device.int8_tops * 1e12 / profile.ops_per_token
    assert profile.tokens_per_s == pytest.approx(
        min(memory_rate, compute_rate) * profile.utilisation
    )
    assert profile.price_per_hour == gpu_hour_price("coral-npu", phase)  # type: ignore[arg-type]
    assert profile.joules_per_token == pytest.approx(device.power_w / profile.tokens_per_s)
    assert profile.usd_per_million_tokens == pytest.approx(
        profile.price_per_hour / profile.tokens_per_s / 3600 * 1e6
    )


def test_base3_layout_streams_fewer_bytes() -> None:
    config = EdgeModelConfig()
    i2, b3 = (
        edge_profile("riscv-npu", config, layout="i2"),
        edge_profile("riscv-npu", config, layout="b3"),
    )
    assert b3.weight_bytes_per_token < i2.weight_bytes_per_token


def test_unknown_accelerator_names_the_allowed_ones() -> None:
    with pytest.raises(InvalidInput) as info:
        edge_profile("tpu-v9", EdgeModelConfig())
    assert info.value.field == "accelerator"
