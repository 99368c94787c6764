"""Horizontal sharding: the shard map (domain -> database URL) in the control database, the
shares that let one domain read another, and the router that sends each domain to its shard.

The router remembers the map for a short while; that is safe because a domain that moved is
fenced on its old shard, and a writer or reader that lands there is told to re-route.

A shard lives only in a configured place: an environment of the topology that keeps context
(a serving site, not an edge mesh or a training pool) at the database the settings name for it
(`shard_urls`, else a file in the data directory). A move names the place (or that database's
URL) and the place is derived from it, never taken from the caller, so a shard cannot land in
a database nobody configured or under a made-up "sovereign" label.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from pydantic import BaseModel, Field
from sqlalchemy import bindparam, delete, or_, select
from sqlalchemy.engine import make_url

from trifecta.context import tables
from trifecta.context.sql import upsert
from trifecta.context.store import ShardStore
from trifecta.core.db import RowRead, ensure_schema, get_engine, normalize_url, transaction
from trifecta.core.errors import InvalidInput
from trifecta.core.settings import Settings
from trifecta.fleet.capsules import SLUG
from trifecta.fleet.topology import Environment, Topology

EVERYONE = "*"


class ShardPlace(BaseModel):
    """Where a shard's database runs, for the sovereignty rule (`Capsule.allows`)."""

    name: str = Field(min_length=1, max_length=64)
    kind: str = Field(min_length=1, max_length=64, description="e.g. sovereign, inference, edge")
    jurisdiction: str | None = Field(default=None, pattern=SLUG)


class ContextPlace(BaseModel):
    """A configured place for context shards: an environment and its shard database."""

    environment: Environment
    url: str = Field(description="the environment's shard database (password included)")

    @property
    def place(self) -> ShardPlace:
        env = self.environment
        return ShardPlace(name=env.name, kind=env.kind, jurisdiction=env.jurisdiction)


def keeps_context(environment: Environment) -> bool:
    """A serving site keeps context shards; an edge mesh or a training pool does not."""
    return environment.serving and environment.kind not in ("edge", "training")


def configured_places(topology: Topology, settings: Settings) -> dict[str, ContextPlace]:
    """Every environment that keeps context in this phase, with the database configured for
    it (an environment that does not serve in the phase would leave the domain unserved)."""
    keeping = [e.name for e in topology.environments if keeps_context(e)]
    names = [n for n in keeping if topology.environment(n).available_in(settings.phase)]
    for name in sorted(settings.shard_urls):
        if name not in keeping:
            raise InvalidInput(
                f"no environment keeping context is named {name!r}",
                field="shard_urls",
                allowed=keeping,
            )
    return {
        name: ContextPlace(
            environment=topology.environment(name), url=normalize_url(settings.shard_url(name))
        )
        for name in names
    }


def resolve_place(target: str, places: Mapping[str, ContextPlace]) -> ContextPlace:
    """The configured place `target` names: an environment's name, or the database URL
    configured for it. Anything else (a URL or path nobody configured) is refused."""
    if target in places:
        return places[target]
    try:
        url: str | None = normalize_url(target)
    except InvalidInput:
        url = None
    for place in places.values():
        if url is not None and place.url == url:
            return place
    shown = hide_password(url) if url is not None else target
    raise InvalidInput(
        f"{shown!r} is not a configured place: name an environment that keeps context shards, "
        "or the database configured for it (shard_urls)",
        field="to",
        allowed=places,
    )


class ShardEntry(BaseModel):
    domain: str
    url: str = Field(description="database URL, password hidden")
    place: ShardPlace | None = None
    updated_at: float


class Share(BaseModel):
    domain: str
    grantee: str = Field(description="a domain that may read it, or '*' for every domain")


def hide_password(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


class ShardMap:
    def __init__(self, control_url: str):
        self.engine = get_engine(control_url)
        ensure_schema(self.engine, "trifecta.context")
        # The request path's routers and placement re-read a domain's entry every few
        # seconds: one statement on a driver connection, not an ORM session (`RowRead`).
        shards = tables.shards
        self._read = RowRead(
            self.engine,
            select(shards.c.url, shards.c.place).where(shards.c.domain == bindparam("domain")),
        )
        dialect = self.engine.dialect
        # the JSON column's text decoded as SQLAlchemy would (psycopg hands it decoded)
        self._place_of = shards.c.place.type.dialect_impl(dialect).result_processor(dialect, None)

    def get(self, domain: str) -> tuple[str, ShardPlace | None] | None:
        row = self._read.read(domain=domain)
        if row is None:
            return None
        url, place = row
        if place is not None and self._place_of is not None:
            place = self._place_of(place)
        return str(url), ShardPlace.model_validate(place) if place else None

    def entries(self) -> list[ShardEntry]:
        with transaction(self.engine) as session:
            rows = session.execute(select(tables.shards).order_by(tables.shards.c.domain)).all()
        return [
            ShardEntry(
                domain=r.domain,
                url=hide_password(r.url),
                place=ShardPlace.model_validate(r.place) if r.place else None,
                updated_at=r.updated_at,
            )
            for r in rows
        ]

    def urls(self) -> list[str]:
        """Every shard database the map names, passwords included (for connecting)."""
        with transaction(self.engine) as session:
            rows = session.execute(select(tables.shards.c.url).distinct()).all()
        return sorted(str(r[0]) for r in rows)

    def assign(self, domain: str, url: str, place: ShardPlace | None = None) -> None:
        """Point a domain at a shard. Only the mover calls this, after copying and fencing."""
        row = {
            "domain": domain,
            "url": normalize_url(url),
            "place": place.model_dump() if place else None,
            "updated_at": time.time(),
        }
        with transaction(self.engine, write=True) as session:
            upsert(session, tables.shards, [row], ["domain"])

    def has(self, domain: str) -> bool:
        return self.get(domain) is not None

    # -- shares ------------------------------------------------------------------------
    def share(self, domain: str, grantee: str) -> Share:
        with transaction(self.engine, write=True) as session:
            upsert(
                session,
                tables.shares,
                [{"domain": domain, "grantee": grantee, "created_at": time.time()}],
                ["domain", "grantee"],
            )
        return Share(domain=domain, grantee=grantee)

    def unshare(self, domain: str, grantee: str) -> bool:
        with transaction(self.engine, write=True) as session:
            result = session.execute(
                delete(tables.shares).where(
                    tables.shares.c.domain == domain, tables.shares.c.grantee == grantee
                )
            )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def shares(self) -> list[Share]:
        with transaction(self.engine) as session:
            rows = session.execute(
                select(tables.shares.c.domain, tables.shares.c.grantee).order_by(
                    tables.shares.c.domain, tables.shares.c.grantee
                )
            )
            return [Share(domain=r[0], grantee=r[1]) for r in rows]

    def readable_by(self, reader_domain: str) -> set[str]:
        """Domains shared with `reader_domain` (by name or with everyone)."""
        with transaction(self.engine) as session:
            rows = session.execute(
                select(tables.shares.c.domain).where(
                    or_(
                        tables.shares.c.grantee == reader_domain,
                        tables.shares.c.grantee == EVERYONE,
                    )
                )
            )
            return {str(r[0]) for r in rows}


class ShardRouter:
    """Domain -> ShardStore, by the shard map, else the default shard."""

    def __init__(self, shard_map: ShardMap, default_url: str, *, ttl_s: float = 5.0):
        self.shard_map = shard_map
        self.default_url = normalize_url(default_url)
        self.ttl_s = ttl_s
        self._routes: dict[str, tuple[float, str]] = {}
        self._reading: dict[str, threading.Lock] = {}  # domain -> held while its entry is read
        self._stores: dict[str, ShardStore] = {}
        self._lock = threading.Lock()

    def url_for(self, domain: str) -> str:
        now = time.monotonic()
        cached = self._routes.get(domain)  # a dict read is atomic: no lock to look
        if cached is not None and now - cached[0] < self.ttl_s:
            return cached[1]
        # One reader a domain: the requests in flight when an entry expires wait for its read
        # (a few tens of us) instead of each reading the map again.
        with self._lock:
            reading = self._reading.setdefault(domain, threading.Lock())
        with reading:
            cached = self._routes.get(domain)
            if cached is not None and now - cached[0] < self.ttl_s:
                return cached[1]  # read by another request while this one waited
            started = time.monotonic()  # its age counts from before the read
            entry = self.shard_map.get(domain)
            url = entry[0] if entry else self.default_url
            self._routes[domain] = (started, url)
        return url

    def store_for(self, domain: str) -> ShardStore:
        return self.store(self.url_for(domain))

    def store(self, url: str) -> ShardStore:
        # Found by the URL as given before it is parsed: every shard call of a request comes
        # here, and parsing the URL each time cost more than the look-up.
        with self._lock:
            store = self._stores.get(url)
        if store is not None:
            return store
        key = normalize_url(url)
        with self._lock:
            store = self._stores.get(key)
        if store is None:
            store = ShardStore(key)  # migrates the schema on first use, outside the lock
            with self._lock:
                store = self._stores.setdefault(key, store)
        with self._lock:
            self._stores.setdefault(url, store)
        return store

    def invalidate(self, domain: str) -> None:
        with self._lock:
            self._routes.pop(domain, None)
