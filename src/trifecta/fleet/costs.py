"""The playbook's cost tables as data: accelerator-hour prices and capsule-month prices.

`assets/fleet/costs.yaml` holds the playbook's rows as given and, for the accelerators the
playbook does not price (A10, A100 80 GB, H100, RISC-V NPU), a documented rule that scales a
playbook row by a public price ratio. A topology can override any accelerator's price, either
one price for every phase or one per phase.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from trifecta.core.errors import InvalidInput
from trifecta.core.settings import PHASES, Phase
from trifecta.fleet.accelerators import ACCELERATORS
from trifecta.fleet.assets import read_asset

#: An override: one price for all phases, or a price per phase (missing phases keep the table's).
PriceOverride = float | Mapping[Any, float]
PriceOverrides = Mapping[str, PriceOverride]


class PhasePrices(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dev: float = Field(ge=0)
    pilot: float = Field(ge=0)
    full: float = Field(ge=0)

    def __getitem__(self, phase: Phase) -> float:
        return float(getattr(self, phase))


class PriceRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    prices: PhasePrices
    source: str


@lru_cache(maxsize=1)
def _tables() -> tuple[dict[str, PriceRow], dict[str, PriceRow], float, str, float]:
    raw = read_asset("fleet/costs.yaml")
    gpu: dict[str, PriceRow] = {}
    for name, row in raw["gpu_hour"].items():
        if "prices" in row:
            gpu[name] = PriceRow(prices=PhasePrices(**row["prices"]), source=row["source"])
    for name, row in raw["gpu_hour"].items():
        if "scale" in row:
            rule = row["scale"]
            base = gpu[rule["of"]].prices
            ratio = rule["numerator"] / rule["denominator"]
            scaled = {p: round(base[p] * ratio, 2) for p in PHASES}
            gpu[name] = PriceRow(prices=PhasePrices(**scaled), source=row["source"])
    capsule = {
        kind: PriceRow(prices=PhasePrices(**row["prices"]), source=row["source"])
        for kind, row in raw["capsule_month"].items()
    }
    cpu = raw["cpu_replica_hour"]
    return gpu, capsule, float(cpu["price"]), str(cpu["source"]), float(raw["hours_per_month"])


HOURS_PER_MONTH: float = _tables()[4]


def gpu_hour_table() -> dict[str, PriceRow]:
    """Every accelerator's price row (playbook rows and derived ones), with its source."""
    return dict(_tables()[0])


def _check_phase(phase: str) -> Phase:
    if phase not in PHASES:
        raise InvalidInput(f"unknown phase {phase!r}", field="phase", allowed=PHASES)
    return phase


def gpu_hour_price(
    accelerator: str, phase: Phase, overrides: PriceOverrides | None = None
) -> float:
    """USD per accelerator-hour in `phase`; `overrides` (from a topology) win over the table."""
    phase = _check_phase(phase)
    if accelerator not in ACCELERATORS:
        raise InvalidInput(
            f"unknown accelerator {accelerator!r}", field="accelerator", allowed=ACCELERATORS
        )
    override = (overrides or {}).get(accelerator)
    if isinstance(override, int | float):
        return float(override)
    if override is not None and phase in override:
        return float(override[phase])
    table = _tables()[0]
    if accelerator not in table:
        raise InvalidInput(
            f"no price for accelerator {accelerator!r}: give one in the topology", field="prices"
        )
    return table[accelerator].prices[phase]


def capsule_month_price(kind: str, phase: Phase) -> float | None:
    """The playbook's monthly price of a capsule of `kind` (None for kinds it does not list)."""
    row = _tables()[1].get(kind)
    return row.prices[_check_phase(phase)] if row else None


def capsule_month_table() -> dict[str, PriceRow]:
    return dict(_tables()[1])


def cpu_replica_hour_price() -> float:
    """USD per hour of one context-layer CPU replica (documented assumption)."""
    return _tables()[2]


def cpu_replica_price_source() -> str:
    return _tables()[3]


def phase_budget(phase: Phase) -> float | None:
    """The playbook's cost target for `phase` in USD/hour (dev: under $5/hour), if any."""
    raw = read_asset("fleet/costs.yaml").get("phase_budget_per_hour", {})
    value = raw.get(_check_phase(phase))
    return float(value) if value is not None else None
