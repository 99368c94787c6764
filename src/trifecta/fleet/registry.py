"""The capsule registry, persisted in the control database."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import JSON, Column, DateTime, Engine, MetaData, String, Table, delete, func, select
from sqlalchemy.exc import IntegrityError

from trifecta.core.db import ensure_schema, get_engine, transaction
from trifecta.core.errors import Conflict, NotFound
from trifecta.core.settings import get_settings
from trifecta.fleet.capsules import Capsule

metadata = MetaData()
capsules_table = Table(
    "capsules",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(64), nullable=False, index=True),
    Column("domain", String(64), nullable=False, index=True),
    Column("spec", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)


class CapsuleRegistry:
    """CRUD over capsules. Every method is one transaction."""

    def __init__(self, engine: Engine | None = None):
        self.engine = engine or get_engine(get_settings().db_url)
        ensure_schema(self.engine, "trifecta.fleet")

    def add(self, capsule: Capsule, *, replace: bool = False) -> Capsule:
        row = {
            "id": capsule.id,
            "kind": capsule.kind,
            "domain": capsule.domain,
            "spec": capsule.model_dump(mode="json"),
        }
        try:
            with transaction(self.engine, write=True) as session:
                if replace:
                    session.execute(delete(capsules_table).where(capsules_table.c.id == capsule.id))
                session.execute(capsules_table.insert().values(**row))
        except IntegrityError:
            raise Conflict(f"capsule {capsule.id!r} already exists", field="id") from None
        return capsule

    def add_many(self, capsules: Iterable[Capsule], *, replace: bool = False) -> int:
        """Insert (or with `replace`, upsert) capsules in one transaction."""
        rows = [
            {"id": c.id, "kind": c.kind, "domain": c.domain, "spec": c.model_dump(mode="json")}
            for c in capsules
        ]
        if not rows:
            return 0
        try:
            with transaction(self.engine, write=True) as session:
                if replace:
                    ids = [r["id"] for r in rows]
                    for start in range(0, len(ids), 500):
                        session.execute(
                            delete(capsules_table).where(
                                capsules_table.c.id.in_(ids[start : start + 500])
                            )
                        )
                session.execute(capsules_table.insert(), rows)
        except IntegrityError:
            raise Conflict("one of the capsules already exists (use replace)", field="id") from None
        return len(rows)

    def get(self, capsule_id: str) -> Capsule:
        with transaction(self.engine) as session:
            spec = session.execute(
                select(capsules_table.c.spec).where(capsules_table.c.id == capsule_id)
            ).scalar_one_or_none()
        if spec is None:
            raise NotFound(f"no capsule {capsule_id!r}", field="capsule_id")
        return Capsule.model_validate(spec)

    def find(self, capsule_id: str) -> Capsule | None:
        try:
            return self.get(capsule_id)
        except NotFound:
            return None

    def list(self, *, kind: str | None = None, domain: str | None = None) -> list[Capsule]:
        query = select(capsules_table.c.spec).order_by(capsules_table.c.id)
        if kind:
            query = query.where(capsules_table.c.kind == kind)
        if domain:
            query = query.where(capsules_table.c.domain == domain)
        with transaction(self.engine) as session:
            return [Capsule.model_validate(spec) for spec in session.execute(query).scalars()]

    def remove(self, capsule_id: str) -> None:
        with transaction(self.engine, write=True) as session:
            deleted = session.execute(
                delete(capsules_table).where(capsules_table.c.id == capsule_id)
            )
        if deleted.rowcount == 0:  # type: ignore[attr-defined]
            raise NotFound(f"no capsule {capsule_id!r}", field="capsule_id")

    def count(self) -> int:
        with transaction(self.engine) as session:
            return int(
                session.execute(select(func.count()).select_from(capsules_table)).scalar_one()
            )
