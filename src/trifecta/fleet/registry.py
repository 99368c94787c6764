"""The capsule registry, persisted in the control database.

A domain's tenancy (sovereign or not, and which jurisdiction) is fixed by its first capsule
and kept in `domain_tenancies` for good: removing a domain's last capsule leaves its context
(playbook, memories) in its shard, so freeing the domain would hand that context to whoever
joins next. An emptied domain takes only capsules of its own tenancy; there is no release
(an operator who wants the name for another tenancy has no safe way to prove the shard's
every copy purged, so a new domain name is the way).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Engine,
    MetaData,
    String,
    Table,
    delete,
    func,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

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
domain_tenancies = Table(
    "domain_tenancies",
    metadata,
    Column("domain", String(64), primary_key=True),
    Column("sovereign", Boolean, nullable=False),
    Column("jurisdiction", String(64), nullable=True),
    Column("fixed_by", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)
Tenancy = tuple[bool, str | None]
# The capsule of the request this thread (or task, or a context copied from it) is serving, as
# read at the request's start: the loop's hops and the context layer's tenancy checks read it
# instead of the row again (one policy, and one look-up, a request).
# Set by the loop (`orchestrator.parts.CapsuleDirectory.pinned`).
request_capsule: ContextVar[Capsule | None] = ContextVar("trifecta_request_capsule", default=None)


def pinned_capsule(capsule_id: str) -> Capsule | None:
    """The capsule the current request pinned, if it is `capsule_id`."""
    capsule = request_capsule.get()
    return capsule if capsule is not None and capsule.id == capsule_id else None


class CapsuleRegistry:
    """CRUD over capsules. Every method is one transaction."""

    def __init__(self, engine: Engine | None = None):
        self.engine = engine or get_engine(get_settings().db_url)
        ensure_schema(self.engine, "trifecta.fleet")

    def add(self, capsule: Capsule, *, replace: bool = False) -> Capsule:
        try:
            self.add_many([capsule], replace=replace)
        except Conflict as exc:
            if exc.field == "id":
                raise Conflict(f"capsule {capsule.id!r} already exists", field="id") from None
            raise
        return capsule

    def add_many(self, capsules: Iterable[Capsule], *, replace: bool = False) -> int:
        """Insert (or with `replace`, upsert) capsules in one transaction. A capsule whose
        domain holds capsules of another tenancy (sovereign or not, jurisdiction) is refused:
        a domain's playbook and memories are shared by all its capsules."""
        batch = list(capsules)
        rows = [
            {"id": c.id, "kind": c.kind, "domain": c.domain, "spec": c.model_dump(mode="json")}
            for c in batch
        ]
        if not rows:
            return 0
        try:
            with transaction(self.engine, write=True) as session:
                ids = [r["id"] for r in rows]
                if replace:
                    for start in range(0, len(ids), 500):
                        session.execute(
                            delete(capsules_table).where(
                                capsules_table.c.id.in_(ids[start : start + 500])
                            )
                        )
                self._check_domains(session, batch)
                session.execute(capsules_table.insert(), rows)
        except IntegrityError:
            raise Conflict("one of the capsules already exists (use replace)", field="id") from None
        return len(rows)

    def add_missing(self, capsules: Iterable[Capsule]) -> int:
        """Register the capsules whose id is not registered yet (a fleet file beside the
        capsules added by hand); returns how many were added."""
        known = {c.id for c in self.list()}
        return self.add_many(c for c in capsules if c.id not in known)

    @staticmethod
    def _check_domains(session: Session, batch: list[Capsule]) -> None:
        """Every capsule of the batch must have its domain's tenancy: the recorded one (which
        outlives the domain's capsules), else that of the domain's first capsule, which then
        fixes it (recorded in the same transaction)."""
        members: dict[str, list[Capsule]] = {}
        for capsule in batch:
            members.setdefault(capsule.domain, []).append(capsule)
        domains = sorted(members)
        fixed: dict[str, tuple[Tenancy, str]] = {}
        for start in range(0, len(domains), 500):
            chunk = domains[start : start + 500]
            query = select(domain_tenancies).where(domain_tenancies.c.domain.in_(chunk))
            for row in session.execute(query):
                fixed[row.domain] = ((row.sovereign, row.jurisdiction), row.fixed_by)
            query = select(capsules_table.c.spec).where(capsules_table.c.domain.in_(chunk))
            for spec in session.execute(query).scalars():
                existing = Capsule.model_validate(spec)
                members[existing.domain].insert(0, existing)
        new_rows = []
        for domain, group in members.items():
            first = group[0]
            if domain in fixed:
                tenancy, fixed_by = fixed[domain]
                for capsule in group:
                    if capsule.tenancy != tenancy:
                        raise Conflict(
                            f"capsule {capsule.id!r} ({_tenancy(capsule)}) cannot join domain "
                            f"{domain!r}: it belongs to the {_describe(tenancy)} tenancy fixed "
                            f"by its first capsule {fixed_by!r}, for good (its context outlives "
                            "its capsules)",
                            field="domain",
                        )
                continue
            for other in group[1:]:
                if other.tenancy != first.tenancy:
                    raise Conflict(
                        f"capsule {other.id!r} ({_tenancy(other)}) cannot share domain "
                        f"{domain!r} with {first.id!r} ({_tenancy(first)}): a domain's context "
                        "is shared by its capsules",
                        field="domain",
                    )
            sovereign, jurisdiction = first.tenancy
            new_rows.append(
                {
                    "domain": domain,
                    "sovereign": sovereign,
                    "jurisdiction": jurisdiction,
                    "fixed_by": first.id,
                }
            )
        if new_rows:
            session.execute(domain_tenancies.insert(), new_rows)

    def domain_tenancy(self, domain: str) -> Tenancy | None:
        """(sovereign, jurisdiction) of a domain, fixed by its first capsule and kept after
        its last is removed; None for a domain no capsule ever joined."""
        with transaction(self.engine) as session:
            row = session.execute(
                select(domain_tenancies.c.sovereign, domain_tenancies.c.jurisdiction).where(
                    domain_tenancies.c.domain == domain
                )
            ).first()
        return (bool(row[0]), row[1]) if row is not None else None

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


def _tenancy(capsule: Capsule) -> str:
    return _describe(capsule.tenancy)


def _describe(tenancy: Tenancy) -> str:
    sovereign, jurisdiction = tenancy
    return f"sovereign, {jurisdiction}" if sovereign else "not sovereign"
