"""Shard administration: list, move a domain online, share domains, migrate a database.

A move re-points the shard map only after the copy verified; the sovereignty rule applies to
where a shard lives: every capsule of the domain must allow the target's place.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from trifecta.context.copier import CopyReport, DomainCopier, ProgressCallback, domains_to_copy
from trifecta.context.facade import ContextService
from trifecta.context.shards import EVERYONE, ShardEntry, ShardMap, ShardPlace, Share, hide_password
from trifecta.context.store import ShardStore
from trifecta.core.db import normalize_url
from trifecta.core.errors import Conflict, NotFound, SovereigntyViolation
from trifecta.fleet.capsules import SLUG


class MoveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str = Field(min_length=1, description="target database URL (sqlite:/// or postgresql://)")
    place: ShardPlace | None = Field(default=None, description="where the target runs")
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
    def __init__(self, service: ContextService):
        self.service = service

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
        url = normalize_url(request.to)
        if request.place is not None:
            for capsule in self.service.registry.list(domain=domain):
                if not capsule.allows(request.place):
                    raise SovereigntyViolation(
                        f"capsule {capsule.id!r} may not keep context at {request.place.name!r}",
                        field="place",
                    )
        service = self.service
        source = service.router.store_for(domain)
        target = service.router.store(url)
        if source.url == target.url:
            raise Conflict(f"domain {domain!r} already lives on {target.label}", field="to")
        copier = DomainCopier(source, target, batch_size=request.batch_size, progress=progress)
        report = copier.run(
            domain,
            switch=lambda: service.shard_map.assign(domain, url, request.place),
            delete_source=not request.keep_source,
        )
        service.router.invalidate(domain)
        service.versions.publish(domain, report.final_version)
        return report

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
    shard_map: ShardMap | None = None,
    progress: ProgressCallback | None = None,
) -> MigrationReport:
    """Copy every domain (or the named ones) of one database to another, e.g. SQLite to
    Postgres. Each domain is fenced on the source once copied and, with a shard map, re-pointed
    at the target, so writers that keep running follow it. Re-running resumes."""
    source, target = ShardStore(from_url), ShardStore(to_url)
    names = domains if domains is not None else domains_to_copy(source, target)
    reports = []
    for domain in names:
        copier = DomainCopier(source, target, batch_size=batch_size, progress=progress)
        switch = (lambda d=domain: shard_map.assign(d, target.url)) if shard_map else None
        reports.append(copier.run(domain, switch=switch, delete_source=False))
    return MigrationReport(source=source.label, target=target.label, domains=reports)
