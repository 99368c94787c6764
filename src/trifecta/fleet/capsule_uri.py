"""Capsules addressable as `capsule://authority/domain/operation[/version]`.

- `authority`: the federation member that homes the capsule: an environment's name
  (`sovereign-eu`) or the host[:port] its server answers at;
- `domain`: the capsule's context domain (a slug);
- `operation`: what is asked of it (`task`, `search`, `feedback`);
- `version`: optional; selects manifests whose version it is a prefix of (`1` -> `1.4.2`).

`parse_capsule_uri` names the bad part (`uri.authority`, `uri.version`, ...) in an
`InvalidInput` (HTTP 422, CLI exit 2). `CapsuleResolver` resolves a URI locally first (the
registry, when the authority names this member) and then through the federation's peers,
from the manifests their agent cards publish. It depends only on two small protocols, so the
fleet package needs nothing from the federation package above it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Literal, Protocol
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from trifecta.core.errors import InvalidInput, NotFound
from trifecta.fleet.capsules import SLUG, Capsule
from trifecta.fleet.manifest import (
    CAPSULE_OPERATIONS,
    VERSION,
    CapsuleManifest,
    card_extension,
    manifest_of,
    manifests_in_card,
    version_key,
)
from trifecta.fleet.topology import Environment

SCHEME = "capsule"
AUTHORITY = r"^[a-z0-9](?:[a-z0-9._-]{0,252})(?::\d{1,5})?$"
MAX_URI_CHARS = 512
CARD_PATH = "/.well-known/agent-card.json"


class CapsuleURI(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    authority: str = Field(pattern=AUTHORITY)
    domain: str = Field(pattern=SLUG)
    operation: str = Field(pattern=SLUG)
    version: str | None = Field(default=None, pattern=VERSION)

    def __str__(self) -> str:
        tail = f"/{self.version}" if self.version else ""
        return f"{SCHEME}://{self.authority}/{self.domain}/{self.operation}{tail}"


def _bad(part: str, message: str) -> InvalidInput:
    return InvalidInput(message, field=f"uri.{part}")


def parse_capsule_uri(text: str) -> CapsuleURI:
    """Parse and validate a capsule URI; a bad one names its bad part."""
    if len(text) > MAX_URI_CHARS:
        raise InvalidInput(f"longer than {MAX_URI_CHARS} characters", field="uri")
    split = urlsplit(text.strip())
    if split.scheme != SCHEME:
        raise _bad("scheme", f"must be {SCHEME!r}, got {split.scheme or 'none'!r}")
    if split.query or split.fragment:
        raise _bad("query" if split.query else "fragment", "a capsule URI has none")
    authority = split.netloc.lower()
    if "@" in authority:
        raise _bad("authority", "credentials do not belong in a capsule URI")
    if not re.match(AUTHORITY, authority):
        raise _bad("authority", f"{authority!r} is not an environment name or host[:port]")
    segments = split.path.split("/")[1:] if split.path else []
    if segments and segments[-1] == "":
        segments = segments[:-1]  # one trailing slash is harmless
    if not 2 <= len(segments) <= 3:
        raise _bad("path", "expected /domain/operation[/version]")
    domain, operation = segments[0], segments[1]
    version = segments[2] if len(segments) == 3 else None
    if not re.match(SLUG, domain):
        raise _bad("domain", f"{domain!r} is not a domain (a-z, 0-9, _ and -)")
    if operation not in CAPSULE_OPERATIONS:
        raise InvalidInput(
            f"unknown operation {operation!r}", field="uri.operation", allowed=CAPSULE_OPERATIONS
        )
    if version is not None and not re.match(VERSION, version):
        raise _bad("version", f"{version!r} is not a version like 1, 1.2 or v1.2.3")
    return CapsuleURI(authority=authority, domain=domain, operation=operation, version=version)


class RemoteCapsule(BaseModel):
    """A capsule a peer publishes in its agent card."""

    peer: str = Field(description="the peer environment's name")
    url: str = Field(description="the peer's base URL")
    authorities: list[str] = Field(description="names the peer answers to: name, host[:port]")
    manifest: CapsuleManifest


def authorities_of(name: str | None, url: str) -> list[str]:
    """The names a URI may use for a federation member: its environment name, then the
    host[:port] and host of its URL."""
    split = urlsplit(url)
    names = [name.lower()] if name else []
    return [*names, split.netloc.lower(), (split.hostname or "").lower()]


class CapsuleSource(Protocol):
    """The local registry (`CapsuleRegistry`)."""

    def list(self, *, kind: str | None = None, domain: str | None = None) -> list[Capsule]: ...


class PeerCatalog(Protocol):
    """The federation's peers (`federation.a2a.discovery.PeerDirectory`, `CardCatalog`)."""

    def remote_capsules(self) -> list[RemoteCapsule]: ...


class CardCatalog:
    """Peers' published capsules read once from their agent cards (for one-shot use, the CLI;
    a long-running server keeps a `PeerDirectory` instead). A peer that does not answer is
    skipped and listed in `unreachable`."""

    def __init__(
        self, urls: Iterable[str], *, timeout_s: float = 3.0, credential: str | None = None
    ):
        import httpx

        self.capsules: list[RemoteCapsule] = []
        self.unreachable: dict[str, str] = {}
        # A peer lists the capsules it homes only to a peer presenting the federation credential.
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        with httpx.Client(timeout=timeout_s, headers=headers) as http:
            for url in (u.rstrip("/") for u in urls):
                try:
                    response = http.get(f"{url}{CARD_PATH}")
                    response.raise_for_status()
                    card = response.json()
                    name = card_extension(card).get("environment", {}).get("name")
                    manifests = manifests_in_card(card)
                except (httpx.HTTPError, ValueError, InvalidInput) as exc:
                    self.unreachable[url] = str(exc)[:200]
                    continue
                self.capsules += [
                    RemoteCapsule(
                        peer=name or url,
                        url=url,
                        authorities=authorities_of(name, url),
                        manifest=m,
                    )
                    for m in manifests
                ]

    def remote_capsules(self) -> list[RemoteCapsule]:
        return list(self.capsules)


class Resolution(BaseModel):
    uri: str
    where: Literal["local", "peer"]
    capsule_id: str
    manifest: CapsuleManifest
    peer: str | None = Field(default=None, description="the peer that homes it")
    url: str | None = Field(default=None, description="the peer's base URL")
    alternatives: list[str] = Field(
        default_factory=list, description="other capsules of the domain offering the operation"
    )


def _best(uri: CapsuleURI, manifests: Iterable[CapsuleManifest]) -> list[CapsuleManifest]:
    """Manifests of the URI's domain offering its operation: highest version first."""
    found = [
        m for m in manifests if m.domain == uri.domain and m.offers(uri.operation, uri.version)
    ]
    return sorted(found, key=lambda m: (tuple(-v for v in version_key(m.version)), m.capsule_id))


class CapsuleResolver:
    """Local first (the registry, when the authority names this member), then the peers.

    `local` maps the authorities this member answers to onto the environment each names
    (None: no particular environment, e.g. `local`); a capsule resolves at an environment
    only if that environment admits it, so a URI cannot address a sovereign capsule at a
    commercial cloud."""

    def __init__(
        self,
        registry: CapsuleSource,
        peers: PeerCatalog | None = None,
        *,
        local: Mapping[str, Environment | None] | None = None,
    ):
        self.registry = registry
        self.peers = peers
        names = local if local is not None else {"local": None, "localhost": None}
        self.local = {name.lower(): env for name, env in names.items()}

    def resolve(self, uri: str | CapsuleURI) -> Resolution:
        parsed = uri if isinstance(uri, CapsuleURI) else parse_capsule_uri(uri)
        if parsed.authority in self.local:
            where = self.local[parsed.authority]
            capsules = [
                c
                for c in self.registry.list(domain=parsed.domain)
                if where is None or where.admits(c)
            ]
            local = _best(parsed, map(manifest_of, capsules))
            if not local:
                raise self._nothing(parsed)
            return Resolution(
                uri=str(parsed),
                where="local",
                capsule_id=local[0].capsule_id,
                manifest=local[0],
                alternatives=[m.capsule_id for m in local[1:]],
            )
        remote = self.peers.remote_capsules() if self.peers is not None else []
        homed = [r for r in remote if parsed.authority in r.authorities]
        if not homed:
            known = sorted(set(self.local) | {r.authorities[0] for r in remote})
            raise NotFound(
                f"no federation member {parsed.authority!r} is known (or it is down)",
                field="uri.authority",
                allowed=known,
            )
        best = _best(parsed, (r.manifest for r in homed))
        if not best:
            raise self._nothing(parsed)
        chosen = next(r for r in homed if r.manifest == best[0])
        return Resolution(
            uri=str(parsed),
            where="peer",
            capsule_id=chosen.manifest.capsule_id,
            manifest=chosen.manifest,
            peer=chosen.peer,
            url=chosen.url,
            alternatives=[m.capsule_id for m in best[1:]],
        )

    @staticmethod
    def _nothing(uri: CapsuleURI) -> NotFound:
        what = f"{uri.operation} {uri.version}" if uri.version else uri.operation
        return NotFound(
            f"no capsule of domain {uri.domain!r} at {uri.authority!r} offers {what}",
            field="uri.domain",
        )
