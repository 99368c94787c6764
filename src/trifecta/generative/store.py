"""Per-capsule generative state in the control database: router-bias versions, expert masks
and the capsule's routed traffic (what a learned mask is learned from); and the service's
expert placement versions (every MoE layer's nodes), shared by every process that serves the
model on placed nodes and by `trifecta generative placement|expand --apply`.

Biases are never overwritten: every update appends a version with its reason, so the history
is the log, and reverting to version N appends a new version holding N's biases (a revert can
itself be reverted). Version 0 is the implicit all-zero start.

Traffic decays when a half-life is given: a capsule's row holds its routed tokens decayed to
the time it was last written (`decayed_at`), and each write or read decays it on to its own
time, so every token weighs 2^(-age / half-life) and the placement follows recent traffic.
"""

from __future__ import annotations

import time
from datetime import datetime

import torch
from pydantic import BaseModel
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    func,
    select,
)

from trifecta.core.db import ensure_schema, get_engine, transaction
from trifecta.core.errors import NotFound
from trifecta.core.logging import get_logger
from trifecta.core.settings import get_settings
from trifecta.generative.placement import Placement
from trifecta.generative.selection import ExpertMask

log = get_logger("trifecta.generative.store")

metadata = MetaData()
bias_table = Table(
    "generative_bias_versions",
    metadata,
    Column("capsule_id", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("bias", JSON, nullable=False),
    Column("reason", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)
mask_table = Table(
    "generative_masks",
    metadata,
    Column("capsule_id", String(64), primary_key=True),
    Column("layers", JSON, nullable=False),
    Column("source", String(16), nullable=False),
    Column("merge", JSON, nullable=True),  # `ExpertMask.merge`: dropped experts merged in
    Column("updated_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)
traffic_table = Table(
    "generative_traffic",
    metadata,
    Column("capsule_id", String(64), primary_key=True),
    Column("load", JSON, nullable=False),
    Column("requests", Integer, nullable=False),
    Column("decayed_at", Float, nullable=True),  # epoch seconds `load` is decayed to
)
placement_table = Table(
    "generative_placements",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("layers", JSON, nullable=False),  # one `Placement` per MoE layer
    Column("removed", JSON, nullable=False),  # the previous version's nodes this one removed
    Column("report", JSON, nullable=False),  # one `LayerMove` per layer
    Column("reason", String(200), nullable=False),
    Column("scaling", JSON, nullable=True),  # `NodeScaling`: the node count change it made
    Column("created_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)


class BiasVersion(BaseModel):
    capsule_id: str
    version: int
    bias: list[list[float]]
    reason: str
    created_at: datetime | None = None

    def tensor(self) -> torch.Tensor:
        return torch.tensor(self.bias, dtype=torch.float32)


class LayerMove(BaseModel):
    """One MoE layer's change of placement, measured on the loads it was computed from."""

    layer: int
    loads_from: str  # "traffic" (stored, summed over capsules), "measured" (served), "none"
    before: float  # max/mean node load of the placement it replaced (start: round-robin)
    after: float
    moves: int  # expert weights shipped to nodes that did not hold them
    scratch_moves: int | None = None  # an EPLB-style from-scratch repack's, for comparison
    scratch_after: float | None = None


class NodeScaling(BaseModel):
    """Why a placement version changed the node count, and the load per node (routed tokens
    per second, summed over the MoE layers) it was measured at and leaves."""

    why: str  # "expand" or "shrink"
    nodes_before: int
    nodes_after: int
    load_per_node_before: float  # measured over the window
    load_per_node_after: float  # the same load over the new nodes
    capacity: float  # node_capacity_tokens_s
    window_s: float
    moves: int = 0  # experts shipped, summed over the layers
    scratch_moves: int = 0  # a from-scratch repack's, summed over the layers


class PlacementVersion(BaseModel):
    """Every MoE layer's placement, as a version: a process serving on placed nodes follows
    the newest (shipping only the experts each node lacks)."""

    version: int
    layers: list[Placement]
    removed: list[int]  # nodes of the previous version this one removed (old indices)
    report: list[LayerMove]
    reason: str
    scaling: NodeScaling | None = None
    created_at: datetime | None = None
    stored: bool = True  # False: a rebalance that moved nothing, under the running version

    @property
    def nodes(self) -> int | None:
        """Its node count when every layer has the same (None otherwise)."""
        counts = {p.cluster.nodes for p in self.layers}
        return counts.pop() if len(counts) == 1 else None


def _decay(
    load: list[list[float]], at: float | None, now: float, half_life_s: float | None
) -> torch.Tensor:
    """`load` (decayed to `at`) decayed on to `now`; unchanged without a half-life or a time
    (a row written before decay existed counts as of its first decayed write)."""
    tensor = torch.tensor(load, dtype=torch.float32)
    if half_life_s is None or at is None or now <= at:
        return tensor
    return tensor * 0.5 ** ((now - at) / half_life_s)


class GenerativeStore:
    """Every method is one transaction."""

    def __init__(self, engine: Engine | None = None):
        self.engine = engine or get_engine(get_settings().db_url)
        ensure_schema(self.engine, "trifecta.generative")

    # -- biases -----------------------------------------------------------------------------
    def current_bias(self, capsule_id: str, shape: tuple[int, int]) -> BiasVersion:
        """The newest version, or version 0 (zeros of `shape`) when there is none."""
        with transaction(self.engine) as session:
            row = (
                session.execute(
                    select(bias_table)
                    .where(bias_table.c.capsule_id == capsule_id)
                    .order_by(bias_table.c.version.desc())
                    .limit(1)
                )
                .mappings()
                .one_or_none()
            )
        if row is None:
            zeros = [[0.0] * shape[1] for _ in range(shape[0])]
            return BiasVersion(capsule_id=capsule_id, version=0, bias=zeros, reason="initial")
        return BiasVersion(**dict(row))

    def put_bias(self, capsule_id: str, bias: torch.Tensor, reason: str) -> BiasVersion:
        """Append a version (numbered after the newest) and log it."""
        values = [[round(float(v), 6) for v in row] for row in bias.tolist()]
        with transaction(self.engine, write=True) as session:
            newest = session.execute(
                select(func.max(bias_table.c.version)).where(bias_table.c.capsule_id == capsule_id)
            ).scalar_one_or_none()
            version = (newest or 0) + 1
            session.execute(
                bias_table.insert().values(
                    capsule_id=capsule_id, version=version, bias=values, reason=reason[:200]
                )
            )
        log.info(
            "router biases updated",
            capsule=capsule_id,
            version=version,
            reason=reason,
            max_abs=max(abs(v) for row in values for v in row),
        )
        return BiasVersion(capsule_id=capsule_id, version=version, bias=values, reason=reason)

    def bias_history(self, capsule_id: str) -> list[BiasVersion]:
        with transaction(self.engine) as session:
            rows = (
                session.execute(
                    select(bias_table)
                    .where(bias_table.c.capsule_id == capsule_id)
                    .order_by(bias_table.c.version)
                )
                .mappings()
                .all()
            )
        return [BiasVersion(**dict(r)) for r in rows]

    def revert_bias(self, capsule_id: str, version: int, shape: tuple[int, int]) -> BiasVersion:
        """Append a version equal to `version` (0: the all-zero start)."""
        if version == 0:
            target = torch.zeros(shape)
        else:
            found = [v for v in self.bias_history(capsule_id) if v.version == version]
            if not found:
                raise NotFound(
                    f"capsule {capsule_id!r} has no bias version {version}", field="revert"
                )
            target = found[0].tensor()
        return self.put_bias(capsule_id, target, f"revert to version {version}")

    # -- masks ------------------------------------------------------------------------------
    def mask(self, capsule_id: str) -> ExpertMask | None:
        with transaction(self.engine) as session:
            row = (
                session.execute(select(mask_table).where(mask_table.c.capsule_id == capsule_id))
                .mappings()
                .one_or_none()
            )
        if row is None:
            return None
        return ExpertMask(layers=row["layers"], source=row["source"], merge=row["merge"])

    def put_mask(self, capsule_id: str, mask: ExpertMask) -> None:
        with transaction(self.engine, write=True) as session:
            session.execute(delete(mask_table).where(mask_table.c.capsule_id == capsule_id))
            session.execute(
                mask_table.insert().values(
                    capsule_id=capsule_id, layers=mask.layers, source=mask.source, merge=mask.merge
                )
            )
        log.info(
            "expert mask set",
            capsule=capsule_id,
            source=mask.source,
            layers=mask.layers,
            merged=mask.merge is not None,
        )

    def clear_mask(self, capsule_id: str) -> bool:
        with transaction(self.engine, write=True) as session:
            result = session.execute(
                delete(mask_table).where(mask_table.c.capsule_id == capsule_id)
            )
        return bool(getattr(result, "rowcount", 0))

    # -- traffic ----------------------------------------------------------------------------
    def add_traffic(
        self,
        capsule_id: str,
        load: torch.Tensor,
        requests: int,
        *,
        half_life_s: float | None = None,
        now: float | None = None,
    ) -> None:
        """Accumulate routed-token counts (n_layers, E) of `requests` served requests, the
        stored ones first decayed by `half_life_s` to `now` (default: the clock)."""
        now = time.time() if now is None else now
        with transaction(self.engine, write=True) as session:
            row = (
                session.execute(
                    select(traffic_table).where(traffic_table.c.capsule_id == capsule_id)
                )
                .mappings()
                .one_or_none()
            )
            total = load.clone().float()
            count = requests
            if row is not None:
                total += _decay(row["load"], row["decayed_at"], now, half_life_s)
                count += row["requests"]
                session.execute(
                    delete(traffic_table).where(traffic_table.c.capsule_id == capsule_id)
                )
            session.execute(
                traffic_table.insert().values(
                    capsule_id=capsule_id, load=total.tolist(), requests=count, decayed_at=now
                )
            )

    def traffic(self, capsule_id: str) -> tuple[torch.Tensor, int] | None:
        with transaction(self.engine) as session:
            row = (
                session.execute(
                    select(traffic_table).where(traffic_table.c.capsule_id == capsule_id)
                )
                .mappings()
                .one_or_none()
            )
        if row is None:
            return None
        return torch.tensor(row["load"], dtype=torch.float32), int(row["requests"])

    def traffic_total(
        self, *, half_life_s: float | None = None, now: float | None = None
    ) -> tuple[torch.Tensor, int] | None:
        """Routed tokens (n_layers, E) summed over every capsule, each decayed by
        `half_life_s` to `now` (default: the clock), and the requests they came from (None:
        no traffic recorded)."""
        now = time.time() if now is None else now
        with transaction(self.engine) as session:
            rows = session.execute(
                select(traffic_table.c.load, traffic_table.c.requests, traffic_table.c.decayed_at)
            ).all()
        if not rows:
            return None
        total = torch.stack([_decay(load, at, now, half_life_s) for load, _, at in rows])
        return total.sum(dim=0), sum(int(requests) for _, requests, _ in rows)

    # -- expert placements ------------------------------------------------------------------
    def placement_version(self) -> int:
        """The newest placement version (0: none stored): one indexed read, cheap to poll."""
        with transaction(self.engine) as session:
            newest = session.execute(select(func.max(placement_table.c.version))).scalar()
        return int(newest or 0)

    def placements_after(self, version: int) -> list[PlacementVersion]:
        """The placement versions newer than `version`, oldest first."""
        with transaction(self.engine) as session:
            rows = (
                session.execute(
                    select(placement_table)
                    .where(placement_table.c.version > version)
                    .order_by(placement_table.c.version)
                )
                .mappings()
                .all()
            )
        return [PlacementVersion(**dict(r)) for r in rows]

    def recent_placements(self, limit: int) -> list[PlacementVersion]:
        """The newest `limit` placement versions, newest first: the decisions log."""
        with transaction(self.engine) as session:
            rows = (
                session.execute(
                    select(placement_table).order_by(placement_table.c.version.desc()).limit(limit)
                )
                .mappings()
                .all()
            )
        return [PlacementVersion(**dict(r)) for r in rows]

    def latest_placement(self) -> PlacementVersion | None:
        newest = self.recent_placements(1)
        return newest[0] if newest else None

    def put_placement(
        self,
        layers: list[Placement],
        report: list[LayerMove],
        reason: str,
        removed: list[int] | None = None,
        scaling: NodeScaling | None = None,
    ) -> PlacementVersion:
        """Append a placement version (numbered after the newest) and log its report."""
        with transaction(self.engine, write=True) as session:
            newest = session.execute(select(func.max(placement_table.c.version))).scalar()
            version = int(newest or 0) + 1
            session.execute(
                placement_table.insert().values(
                    version=version,
                    layers=[p.model_dump(mode="json") for p in layers],
                    removed=list(removed or []),
                    report=[r.model_dump(mode="json") for r in report],
                    reason=reason[:200],
                    scaling=None if scaling is None else scaling.model_dump(mode="json"),
                )
            )
        log.info(
            "expert placement stored",
            version=version,
            reason=reason,
            scaling=None if scaling is None else scaling.model_dump(mode="json"),
            nodes=[p.cluster.nodes for p in layers],
            max_mean=[round(r.after, 4) for r in report],
            moved=[r.moves for r in report],
        )
        return PlacementVersion(
            version=version,
            layers=layers,
            removed=list(removed or []),
            report=report,
            reason=reason[:200],
            scaling=scaling,
        )
