"""Small SQL helpers both back ends share: upserts, vectors as bytes, rows as models, and the
domain write lock."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Row, Table, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from trifecta.context import tables
from trifecta.context.models import Bullet, BulletStatus, MemoryItem, MemorySource

Vector = NDArray[np.float32]


class DomainMoved(Exception):
    """The domain was fenced off this shard by an online move; re-route and retry."""

    def __init__(self, domain: str, moved_to: str | None):
        super().__init__(f"domain {domain!r} moved to {moved_to or 'another shard'}")
        self.domain = domain
        self.moved_to = moved_to


def to_bytes(vector: Vector) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


def to_vector(blob: bytes) -> Vector:
    return np.frombuffer(blob, dtype=np.float32)


def insert_for(session: Session, table: Table) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def upsert(
    session: Session, table: Table, rows: Sequence[dict[str, Any]], keys: Sequence[str]
) -> None:
    """Insert rows, overwriting rows with the same primary key (both back ends)."""
    if not rows:
        return
    stmt = insert_for(session, table)
    columns = [c.name for c in table.columns if c.name not in keys]
    stmt = stmt.on_conflict_do_update(
        index_elements=list(keys), set_={c: stmt.excluded[c] for c in columns}
    )
    session.execute(stmt, list(rows))


# Statements run on every read and write of a domain, built once: building and keying one
# costs SQLAlchemy about 85 us a call, more than SQLite's own work on these one-row reads.
_D = tables.domains.c
_READ_DOMAIN = select(_D.version, _D.state, _D.moved_to).where(_D.domain == bindparam("d"))
_LOCK_DOMAIN = _READ_DOMAIN.with_for_update()
_BUMP_VERSION = (
    update(tables.domains)
    .where(_D.domain == bindparam("d"))
    .values(version=bindparam("v"), updated_at=bindparam("at"))
)


def read_domain(
    session: Session, domain: str, *, lock: bool = False
) -> tuple[int, str, str | None]:
    """(version, state, moved_to) of a domain; (0, 'active', None) when it has no row yet."""
    row = session.execute(_LOCK_DOMAIN if lock else _READ_DOMAIN, {"d": domain}).first()
    return (0, "active", None) if row is None else (int(row[0]), str(row[1]), row[2])


def check_readable(session: Session, domain: str) -> int:
    """The domain's version; raises DomainMoved when a move fenced it off this shard."""
    version, state, moved_to = read_domain(session, domain)
    if state == "moved":
        raise DomainMoved(domain, moved_to)
    return version


def lock_domain(session: Session, domain: str) -> int:
    """Take the domain's write lock (creating its row) and return its version. Every write
    goes through here, so writes to one domain are serialised and a fence is atomic."""
    row = session.execute(_LOCK_DOMAIN, {"d": domain}).first()
    if row is None:  # the domain's first write: create its row (racing creators are fine)
        stmt = insert_for(session, tables.domains).values(
            domain=domain, version=0, state="active", moved_to=None, updated_at=time.time()
        )
        session.execute(stmt.on_conflict_do_nothing(index_elements=["domain"]))
        row = session.execute(_LOCK_DOMAIN, {"d": domain}).one()
    if row.state == "moved":
        raise DomainMoved(domain, row.moved_to)
    return int(row.version)


def bump_version(session: Session, domain: str, version: int) -> int:
    """Advance a locked domain's version by one; rows written now carry the new value."""
    session.execute(_BUMP_VERSION, {"d": domain, "v": version + 1, "at": time.time()})
    return version + 1


def bullet_of(row: Row[Any] | Mapping[str, Any]) -> Bullet:
    r = row._mapping if isinstance(row, Row) else row
    return Bullet(
        id=r["id"],
        section=r["section"],
        content=r["content"],
        helpful=r["helpful"],
        harmful=r["harmful"],
        status=BulletStatus(r["status"]),
        merged_into=r["merged_into"],
        tokens=r["tokens"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
    )


def memory_of(row: Row[Any] | Mapping[str, Any]) -> MemoryItem:
    r = row._mapping if isinstance(row, Row) else row
    return MemoryItem(
        id=r["id"],
        domain=r["domain"],
        title=r["title"],
        description=r["description"],
        content=r["content"],
        outcome=r["outcome"],
        source=MemorySource(
            capsule_id=r["source_capsule"],
            task_id=r["source_task"],
            trajectory_id=r["source_trajectory"],
        ),
        reinforced=r["reinforced"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
    )


def vector_or_none(blob: bytes | None) -> Vector | None:
    return None if blob is None else to_vector(blob)
