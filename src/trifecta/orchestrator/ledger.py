"""The cost ledger: every request is charged to its capsule by the accelerator-seconds it used
in each layer, priced by the phase's cost tables, and rolled up per capsule, environment and
layer, then projected to a month beside the playbook's capsule-month table.

The shipped models stand in for real checkpoints, so a charge is computed for the checkpoint
a tier stands for on the accelerator its environment serves it with (the plan's pool, else
the cheapest accelerator there that fits): decode tokens at the serving shape's
memory-bandwidth roofline (`fleet.sizing`), prompt tokens at the compute roofline (prefill
is compute-bound), the edge's tokens at the edge target's throughput, and the context
layer's CPU time at the CPU-replica price.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from trifecta.core.db import transaction
from trifecta.core.settings import Phase
from trifecta.fleet.accelerators import get_accelerator
from trifecta.fleet.costs import HOURS_PER_MONTH, capsule_month_price, cpu_replica_hour_price
from trifecta.fleet.plan_model import Plan
from trifecta.fleet.sizing import PRESETS, Sizing, serving_shape
from trifecta.fleet.topology import Topology
from trifecta.orchestrator.tables import charges, requests

SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600


@dataclass(frozen=True)
class Charge:
    layer: str
    environment: str
    model: str
    accelerator: str | None
    accelerator_seconds: float
    usd_per_hour: float

    @property
    def usd(self) -> float:
        return self.accelerator_seconds * self.usd_per_hour / 3600


class Pricer:
    """Turns what a layer did (tokens, CPU seconds) into `Charge`s for one topology and phase."""

    def __init__(self, topology: Topology, phase: Phase, plan: Plan | None = None):
        self.topology, self.phase = topology, phase
        self._pools = {
            (p.environment, p.model): p.accelerator
            for p in (plan.pools if plan else [])
            if p.layer == "cognitive" and p.accelerator
        }

    @lru_cache(maxsize=256)  # noqa: B019 - one Pricer per run; the key space is tiny
    def _shape(self, environment: str, model: str) -> Sizing:
        env = self.topology.environment(environment)
        spec = PRESETS[model]
        planned = self._pools.get((environment, model))
        candidates = [planned] if planned else env.accelerators
        overrides = {**self.topology.prices, **env.prices}
        shapes = [
            s
            for acc in candidates
            if (
                s := serving_shape(
                    spec,
                    acc,
                    phase=self.phase,
                    context=self.topology.serving.cognitive_context,
                    batch_limit=self.topology.serving.batch_limit,
                    overrides=overrides,
                )
            )
            is not None
        ]
        if not shapes:  # no local accelerator holds it: price it where it fits best anywhere
            shapes = [
                s
                for acc in ("h100", "a100-80gb")
                if (
                    s := serving_shape(
                        spec,
                        acc,
                        phase=self.phase,
                        context=self.topology.serving.cognitive_context,
                        overrides=overrides,
                    )
                )
                is not None
            ]
        return min(shapes, key=lambda s: s.cost_per_million_tokens)

    def model_tokens(
        self,
        *,
        layer: str,
        environment: str,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> Charge:
        """A cloud layer's charge for `model` (a preset name) serving one request."""
        shape = self._shape(environment, model)
        accelerator = get_accelerator(shape.accelerator)
        spec = PRESETS[model]
        prefill = 2 * spec.active * prompt_tokens / accelerator.ops_per_s(spec.bits_per_weight)
        seconds = prefill + completion_tokens * shape.accelerator_seconds_per_token
        price = self.topology.price(
            self.topology.environment(environment), shape.accelerator, self.phase
        )
        return Charge(layer, environment, model, shape.accelerator, seconds, price)

    def device_seconds(
        self, *, layer: str, environment: str, model: str, accelerator: str, seconds: float
    ) -> Charge:
        """A charge for time on a named device (an edge node's NPU)."""
        price = self.topology.price(self.topology.environment(environment), accelerator, self.phase)
        return Charge(layer, environment, model, accelerator, seconds, price)

    def cpu_seconds(self, *, layer: str, environment: str, seconds: float) -> Charge:
        return Charge(layer, environment, layer, None, seconds, cpu_replica_hour_price())


@dataclass(frozen=True)
class Rollup:
    key: str
    requests: int
    accelerator_seconds: float
    usd: float


class CostLedger:
    """Charges persisted beside the requests they belong to (`orchestrator.tables`)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def record(
        self,
        session: Session,
        *,
        request_id: str,
        capsule_id: str,
        capsule_kind: str,
        items: Sequence[Charge],
        at: dt.datetime,
    ) -> None:
        """Insert a request's charges inside the caller's transaction."""
        rows = self.rows(
            request_id=request_id,
            capsule_id=capsule_id,
            capsule_kind=capsule_kind,
            items=items,
            at=at,
        )
        if rows:
            session.execute(charges.insert(), rows)

    @staticmethod
    def rows(
        *,
        request_id: str,
        capsule_id: str,
        capsule_kind: str,
        items: Sequence[Charge],
        at: dt.datetime,
    ) -> list[dict[str, object]]:
        """A request's charges as rows of the charges table."""
        return [
            {
                "request_id": request_id,
                "capsule_id": capsule_id,
                "capsule_kind": capsule_kind,
                "environment": c.environment,
                "layer": c.layer,
                "model": c.model,
                "accelerator": c.accelerator,
                "accelerator_seconds": c.accelerator_seconds,
                "usd_per_hour": c.usd_per_hour,
                "usd": c.usd,
                "created_at": at,
            }
            for c in items
        ]

    def rollup(
        self, by: str, *, capsule_ids: Iterable[str] | None = None, run_id: str | None = None
    ) -> list[Rollup]:
        """Totals grouped by `capsule_id`, `environment`, `layer` or `capsule_kind`, over all
        charges or those of some capsules or of one run."""
        column = charges.c[by]
        query = (
            select(
                column,
                func.count(func.distinct(charges.c.request_id)),
                func.sum(charges.c.accelerator_seconds),
                func.sum(charges.c.usd),
            )
            .group_by(column)
            .order_by(column)
        )
        if capsule_ids is not None:
            query = query.where(charges.c.capsule_id.in_(list(capsule_ids)))
        if run_id is not None:
            query = query.join(requests, requests.c.id == charges.c.request_id).where(
                requests.c.run_id == run_id
            )
        with transaction(self.engine) as session:
            return [
                Rollup(str(k), int(n), float(s or 0), float(u or 0))
                for k, n, s, u in session.execute(query)
            ]

    def total_usd(self) -> float:
        with transaction(self.engine) as session:
            return float(
                session.execute(select(func.coalesce(func.sum(charges.c.usd), 0.0))).scalar_one()
            )


def monthly_projection(usd_per_request: float, requests_per_s: float) -> float:
    """A capsule's month at its declared demand, at the unit cost the ledger measured."""
    return usd_per_request * requests_per_s * SECONDS_PER_MONTH


def playbook_month(kind: str, phase: Phase) -> float | None:
    return capsule_month_price(kind, phase)
