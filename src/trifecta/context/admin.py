"""Shard administration: list, move a domain online, share domains, migrate a database.

A move re-points the shard map only after the copy verified. Its target is a configured place
(`shards.resolve_place`: an environment that keeps context, or its configured database), and
the one placement rule applies to it: the environment must admit every capsule of the domain
(`Environment.admits`), and an emptied sovereign domain keeps its tenancy's jurisdiction.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

from pydantic import BaseModel, ConfigDict, Field

from trifecta.context.copier import (
    CopyReport,
    DomainCopier,
    ProgressCallback,
    domains_to_copy,
    require_reachable,
    require_source,
)
from trifecta.context.facade import ContextService
from trifecta.context.shards import (
    EVERYONE,
    ContextPlace,
    ShardEntry,
    Share,
    configured_places,
    hide_password,
    resolve_place,
)
from trifecta.context.store import ShardStore
from trifecta.core.errors import Conflict, NotFound, SovereigntyViolation
from trifecta.fleet.capsules import SLUG


class MoveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str = Field(
        min_length=1,
        max_length=2048,
        description="the target place: an environment that keeps context shards, or the "
        "database URL configured for it (its place is derived, never given)",
    )
    batch_size: int = Field(default=500, ge=1, le=100_000)
    keep_source: bool = Field(default=False, description="leave the (fenced) rows on the source")


class ShareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grantee: str = Field(description="a domain, or '*' for every domain")


class ShardListing(BaseModel):
    default_url: str = Field(description="where domains the map does not name live")
    shards: list[ShardEntry]
    shares: list[Share]


class MigrationReport(BaseModel):
    source: str
    target: str
    domains: list[CopyReport]

    @property
    def rows(self) -> int:
        return sum(d.copied_rows for d in self.domains)


class ShardAdmin:
    def __init__(
        self, service: ContextService, *, places: Mapping[str, ContextPlace] | None = None
    ):
        self.service = service
        self._places = places

    @property
    def places(self) -> Mapping[str, ContextPlace]:
        """The configured places (default: the topology and settings of this process)."""
        if self._places is None:
            from trifecta.core.settings import get_settings
            from trifecta.fleet.topology import load_topology

            settings = get_settings()
            self._places = configured_places(load_topology(settings.topology), settings)
        return self._places

    def listing(self) -> ShardListing:
        return ShardListing(
            default_url=hide_password(self.service.router.default_url),
            shards=self.service.shard_map.entries(),
            shares=self.service.shard_map.shares(),
        )

    def _known(self, domain: str, field: str = "domain") -> None:
        if not self.service.tenancy.known_domain(domain):
            raise NotFound(f"no domain {domain!r}", field=field)

    def move(
        self, domain: str, request: MoveRequest, *, progress: ProgressCallback | None = None
    ) -> CopyReport:
        """Copy, catch up, fence, verify, switch, and (unless kept) delete the source rows,
        while the domain keeps taking writes."""
        self._known(domain)
        target_place = resolve_place(request.to, self.places)
        self.check_admits(domain, target_place)
        url = require_reachable(target_place.url, field="to", configured=True)
        service = self.service
        source = service.router.store_for(domain)
        target = service.router.store(url)
        if source.url == target.url:
            raise Conflict(f"domain {domain!r} already lives on {target.label}", field="to")
        copier = DomainCopier(source, target, batch_size=request.batch_size, progress=progress)
        report = copier.run(
            domain,
            switch=lambda: service.shard_map.assign(domain, url, target_place.place),
            delete_source=not request.keep_source,
        )
        service.router.invalidate(domain)
        service.versions.publish(domain, report.final_version)
        return report

    def check_admits(self, domain: str, target: ContextPlace) -> None:
        """The one rule at the target: its environment admits every capsule of the domain, and
        a domain emptied of capsules keeps the jurisdiction its tenancy fixed."""
        env = target.environment
        for capsule in self.service.registry.list(domain=domain):
            if not env.admits(capsule):
                raise SovereigntyViolation(
                    f"capsule {capsule.id!r} may not keep context in {env.name!r} "
                    f"({env.kind}, {env.jurisdiction or 'no jurisdiction'})",
                    field="to",
                )
        sovereign, jurisdiction = self.service.registry.domain_tenancy(domain) or (False, None)
        if sovereign and (env.kind != "sovereign" or env.jurisdiction != jurisdiction):
            raise SovereigntyViolation(
                f"sovereign domain {domain!r} ({jurisdiction}) may keep context only on a "
                f"sovereign site of its jurisdiction, not {env.name!r}",
                field="to",
            )

    def share(self, domain: str, grantee: str) -> Share:
        """Let `grantee`'s capsules (or everyone's) read `domain`. Sovereign context is shared
        only with domains of the same jurisdiction, never with everyone."""
        self._known(domain)
        tenancy = self.service.tenancy
        ours = tenancy.domain_tenancy(domain)
        if grantee == EVERYONE:
            if ours is not None and ours[0]:
                raise SovereigntyViolation(
                    f"sovereign domain {domain!r} cannot be shared with everyone", field="grantee"
                )
        else:
            if not _is_slug(grantee):
                raise NotFound(f"no domain {grantee!r}", field="grantee")
            self._known(grantee, "grantee")
            theirs = tenancy.domain_tenancy(grantee)
            if None not in (ours, theirs) and ours != theirs:
                raise SovereigntyViolation(
                    f"{domain!r} and {grantee!r} belong to different tenancies "
                    "(sovereign or not, jurisdiction)",
                    field="grantee",
                )
        share = self.service.shard_map.share(domain, grantee)
        self.service.tenancy.forget()
        return share

    def unshare(self, domain: str, grantee: str) -> None:
        if not self.service.shard_map.unshare(domain, grantee):
            raise NotFound(f"domain {domain!r} is not shared with {grantee!r}", field="grantee")
        self.service.tenancy.forget()


def _is_slug(value: str) -> bool:
    import re

    return re.match(SLUG, value) is not None


def migrate(
    from_url: str,
    to_url: str,
    *,
    domains: list[str] | None = None,
    batch_size: int = 500,
    switch: ShardAdmin | None = None,
    progress: ProgressCallback | None = None,
) -> MigrationReport:
    """Copy every domain (or the named ones) of one database to another, e.g. SQLite to
    Postgres. Each domain is fenced on the source once copied; with `switch`, the target must
    be a configured place that admits each domain's capsules, and the shard map is re-pointed
    at it, so writers that keep running follow. Re-running resumes. Nothing is created at a
    source that does not exist, and an unreachable database is refused before any copy."""
    source_url = require_source(from_url, field="from")
    target_place = resolve_place(to_url, switch.places) if switch is not None else None
    if target_place is not None:
        target_url = require_reachable(target_place.url, field="to", configured=True)
    else:
        target_url = require_reachable(to_url, field="to")
    source, target = ShardStore(source_url), ShardStore(target_url)
    names = domains if domains is not None else domains_to_copy(source, target)
    if switch is not None and target_place is not None:
        for domain in names:
            switch.check_admits(domain, target_place)
    reports = []
    for domain in names:
        copier = DomainCopier(source, target, batch_size=batch_size, progress=progress)
        assign = None
        if switch is not None and target_place is not None:
            assign = partial(
                switch.service.shard_map.assign, domain, target.url, target_place.place
            )
        reports.append(copier.run(domain, switch=assign, delete_source=False))
    return MigrationReport(source=source.label, target=target.label, domains=reports)
