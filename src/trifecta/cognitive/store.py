"""Calibrated thresholds per capsule, persisted in the control database."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict
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

from trifecta.cognitive.calibration import Calibration, Target
from trifecta.cognitive.cascade import Thresholds
from trifecta.core.db import ensure_schema, get_engine, transaction
from trifecta.core.errors import NotFound
from trifecta.core.settings import get_settings

Source = Literal["offline", "online"]

metadata = MetaData()
thresholds_table = Table(
    "cognitive_thresholds",
    metadata,
    Column("capsule_id", String(64), primary_key=True),
    Column("aggregate", String(16), nullable=False),
    Column("window", Integer, nullable=False),
    Column("thresholds", JSON, nullable=False),
    Column("router", JSON, nullable=True),  # tier -> start cut-off (start_router.py); None: none
    Column("rates", JSON, nullable=False),
    Column("target_kind", String(16), nullable=False),
    Column("target_value", Float, nullable=False),
    Column("sample_size", Integer, nullable=False),
    Column("source", String(16), nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)


class StoredCalibration(BaseModel):
    """One capsule's thresholds as persisted (`version` grows with each recalibration)."""

    model_config = ConfigDict(frozen=True)

    capsule_id: str
    thresholds: Thresholds
    rates: dict[str, float]
    target: Target
    sample_size: int
    source: Source
    version: int
    updated_at: datetime | None = None


class ThresholdStore:
    """Read and write capsules' calibrations; every method is one transaction."""

    def __init__(self, engine: Engine | None = None):
        self.engine = engine or get_engine(get_settings().db_url)
        ensure_schema(self.engine, "trifecta.cognitive")

    def put(
        self, capsule_id: str, calibration: Calibration, *, source: Source = "offline"
    ) -> StoredCalibration:
        """Replace the capsule's calibration (its version goes up by one)."""
        thresholds = calibration.thresholds
        with transaction(self.engine, write=True) as session:
            previous = session.execute(
                select(thresholds_table.c.version).where(
                    thresholds_table.c.capsule_id == capsule_id
                )
            ).scalar_one_or_none()
            version = (previous or 0) + 1
            session.execute(
                delete(thresholds_table).where(thresholds_table.c.capsule_id == capsule_id)
            )
            session.execute(
                thresholds_table.insert().values(
                    capsule_id=capsule_id,
                    aggregate=thresholds.aggregate,
                    window=thresholds.window,
                    thresholds=thresholds.values,
                    router=thresholds.router or None,
                    rates=calibration.rates,
                    target_kind=calibration.target.kind,
                    target_value=calibration.target.value,
                    sample_size=calibration.sample_size,
                    source=source,
                    version=version,
                )
            )
        return self.get(capsule_id)

    def find(self, capsule_id: str) -> StoredCalibration | None:
        with transaction(self.engine) as session:
            row = (
                session.execute(
                    select(thresholds_table).where(thresholds_table.c.capsule_id == capsule_id)
                )
                .mappings()
                .one_or_none()
            )
        return _from_row(row) if row is not None else None

    def get(self, capsule_id: str) -> StoredCalibration:
        found = self.find(capsule_id)
        if found is None:
            raise NotFound(
                f"capsule {capsule_id!r} has no calibrated thresholds", field="capsule_id"
            )
        return found

    def list(self) -> list[StoredCalibration]:
        with transaction(self.engine) as session:
            rows = (
                session.execute(select(thresholds_table).order_by(thresholds_table.c.capsule_id))
                .mappings()
                .all()
            )
        return [_from_row(row) for row in rows]

    def remove(self, capsule_id: str) -> bool:
        with transaction(self.engine, write=True) as session:
            result = session.execute(
                delete(thresholds_table).where(thresholds_table.c.capsule_id == capsule_id)
            )
        return bool(getattr(result, "rowcount", 0))


def _from_row(row: object) -> StoredCalibration:
    data = dict(row)  # type: ignore[call-overload]
    return StoredCalibration(
        capsule_id=data["capsule_id"],
        thresholds=Thresholds(
            aggregate=data["aggregate"],
            window=data["window"],
            values=data["thresholds"],
            router=data.get("router") or {},
        ),
        rates=data["rates"],
        target=Target(kind=data["target_kind"], value=data["target_value"]),
        sample_size=data["sample_size"],
        source=data["source"],
        version=data["version"],
        updated_at=data["updated_at"],
    )
