"""The accelerator catalog and the cost tables, checked against the playbook's figures."""

from __future__ import annotations

import pytest

from trifecta.core.errors import InvalidInput
from trifecta.core.settings import Phase
from trifecta.fleet.accelerators import ACCELERATORS, get_accelerator
from trifecta.fleet.costs import (
    HOURS_PER_MONTH,
    capsule_month_price,
    gpu_hour_price,
    gpu_hour_table,
    phase_budget,
)

# PLAYBOOK.md section 3, copied by hand: (dev, pilot, full).
PHASES: tuple[Phase, ...] = ("dev", "pilot", "full")
PLAYBOOK_GPU_HOUR = {
    "rtx-5090": (0.80, 1.00, 1.20),
    "a100-40gb": (2.20, 2.50, 3.00),
    "coral-npu": (0.02, 0.03, 0.05),
}
PLAYBOOK_CAPSULE_MONTH = {"digital_twin": (350, 1200, 4000), "sovereign": (2000, 8000, 20000)}


def test_catalog_has_every_named_accelerator_with_a_source() -> None:
    for name in ("a10", "a100-40gb", "a100-80gb", "h100", "rtx-5090", "coral-npu", "riscv-npu"):
        acc = get_accelerator(name)
        assert acc.name == name
        assert acc.source and acc.memory_gb > 0 and acc.memory_bandwidth_gbs > 0
    assert get_accelerator("h100").kind == "gpu" and get_accelerator("coral-npu").kind == "npu"
    # vendor figures spot-checked: H100 SXM 3.35 TB/s, A100 80 GB 2,039 GB/s, A10 24 GB
    assert get_accelerator("h100").memory_bandwidth_gbs == 3350
    assert get_accelerator("a100-80gb").memory_bandwidth_gbs == 2039
    assert get_accelerator("a10").memory_gb == 24


def test_unknown_accelerator_names_the_field_and_the_choices() -> None:
    with pytest.raises(InvalidInput) as caught:
        get_accelerator("tpu-v9")
    assert caught.value.field == "accelerator"
    assert caught.value.allowed == sorted(ACCELERATORS)
    with pytest.raises(InvalidInput):
        gpu_hour_price("tpu-v9", "dev")


@pytest.mark.parametrize("name", sorted(PLAYBOOK_GPU_HOUR))
def test_gpu_hour_prices_are_the_playbooks(name: str) -> None:
    for phase, price in zip(PHASES, PLAYBOOK_GPU_HOUR[name], strict=True):
        assert gpu_hour_price(name, phase) == pytest.approx(price)


def test_capsule_month_prices_are_the_playbooks() -> None:
    for kind, prices in PLAYBOOK_CAPSULE_MONTH.items():
        for phase, price in zip(PHASES, prices, strict=True):
            assert capsule_month_price(kind, phase) == price
    assert capsule_month_price("research", "dev") is None


def test_derived_prices_follow_their_documented_rules() -> None:
    # a10 / a100-80gb / h100: the playbook's A100 row times a public price ratio (Modal's list)
    for name, ratio in (("a10", 1.10 / 2.10), ("a100-80gb", 2.50 / 2.10), ("h100", 3.95 / 2.10)):
        for phase, base in zip(PHASES, PLAYBOOK_GPU_HOUR["a100-40gb"], strict=True):
            assert gpu_hour_price(name, phase) == pytest.approx(round(base * ratio, 2))
    for phase in PHASES:
        assert gpu_hour_price("riscv-npu", phase) == gpu_hour_price("coral-npu", phase)
    table = gpu_hour_table()
    assert set(table) == set(ACCELERATORS)
    assert all("assumption" in table[n].source for n in ("a10", "a100-80gb", "h100", "riscv-npu"))
    # ordering sanity: the bigger part costs more per hour in every phase
    for phase in PHASES:
        assert gpu_hour_price("a100-80gb", phase) > gpu_hour_price("a100-40gb", phase)
        assert gpu_hour_price("h100", phase) > gpu_hour_price("a100-80gb", phase)


def test_overrides_win_flat_or_per_phase() -> None:
    assert gpu_hour_price("h100", "pilot", {"h100": 3.0}) == 3.0
    per_phase = {"h100": {"full": 2.5}}
    assert gpu_hour_price("h100", "full", per_phase) == 2.5
    assert gpu_hour_price("h100", "dev", per_phase) == gpu_hour_price("h100", "dev")


def test_phase_budget_and_month() -> None:
    assert phase_budget("dev") == 5.0
    assert phase_budget("pilot") is None and phase_budget("full") is None
    assert HOURS_PER_MONTH == 730
    with pytest.raises(InvalidInput) as caught:
        phase_budget("prod")  # type: ignore[arg-type]
    assert caught.value.field == "phase"
