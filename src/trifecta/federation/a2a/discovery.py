"""Peers found from seed URLs (the spec's "direct configuration" discovery): each seed's agent
card is fetched from `/.well-known/agent-card.json`, refreshed on an interval, and a peer whose
card stops answering is marked down until it answers again.

The seeds are the topology's `Environment.url` values. With the federation credential, a peer's
card includes the manifests of the capsules it homes (`capsule://` resolution); without it,
the public card has none. Fetches use the SDK's card resolver on
one shared httpx client, with a per-request timeout and a short tenacity retry, so one lost
packet does not mark a peer down but a dead peer is found within `timeout_s * attempts`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import anyio
import httpx
from a2a.client.card_resolver import A2ACardResolver
from a2a.client.errors import A2AClientError
from a2a.types.a2a_pb2 import AgentCard
from a2a.utils.errors import A2AError
from pydantic import BaseModel, Field
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_fixed

from trifecta.core.errors import NotFound, TrifectaError, Unavailable
from trifecta.core.logging import get_logger
from trifecta.federation.a2a.cards import card_environment, card_manifests, card_services
from trifecta.fleet.capsule_uri import RemoteCapsule, authorities_of
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.topology import Environment, Topology

log = get_logger("trifecta.federation.discovery")
_TRANSIENT = (httpx.HTTPError, A2AClientError, A2AError)


class Peer(BaseModel):
    """What this environment knows of one seed."""

    url: str = Field(description="the seed URL the card is fetched from")
    name: str | None = Field(default=None, description="the peer environment's name")
    environment: Environment | None = None
    services: list[str] = Field(default_factory=list)
    up: bool = False
    last_seen: float | None = Field(default=None, description="epoch s of the last good card")
    failures: int = Field(default=0, description="failed refreshes in a row")
    error: str = ""

    @property
    def authorities(self) -> list[str]:
        """The names a `capsule://` URI may use for this peer."""
        return authorities_of(self.name, self.url)


class PeerDirectory:
    def __init__(
        self,
        seeds: Sequence[str],
        *,
        refresh_s: float = 10.0,
        timeout_s: float = 2.0,
        attempts: int = 2,
        http: httpx.AsyncClient | None = None,
        credential: str | None = None,
    ):
        self.refresh_s = refresh_s
        self._headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        self.timeout_s = timeout_s
        self.attempts = attempts
        self._owned = http is None
        self.http = http or httpx.AsyncClient()
        self._peers = {url.rstrip("/"): Peer(url=url.rstrip("/")) for url in seeds}
        self._cards: dict[str, AgentCard] = {}
        self._stop = anyio.Event()

    @classmethod
    def from_topology(
        cls,
        topology: Topology,
        *,
        own: str | None = None,
        refresh_s: float = 10.0,
        timeout_s: float = 2.0,
    ) -> PeerDirectory:
        """Seeds: every other environment of the topology that names its URL."""
        seeds = [e.url for e in topology.environments if e.url and e.name != own]
        return cls(seeds, refresh_s=refresh_s, timeout_s=timeout_s)

    async def aclose(self) -> None:
        self.stop()
        if self._owned:
            await self.http.aclose()

    # -- refreshing ----------------------------------------------------------------------
    async def _fetch(self, url: str) -> AgentCard:
        resolver = A2ACardResolver(self.http, url)
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_fixed(min(0.2, self.timeout_s / 4)),
            retry=retry_if_exception_type(_TRANSIENT),
            reraise=True,
        ):
            with attempt:
                return await resolver.get_agent_card(
                    http_kwargs={"timeout": self.timeout_s, "headers": self._headers}
                )
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    async def refresh_one(self, url: str) -> Peer:
        peer = self._peers[url]
        try:
            card = await self._fetch(url)
            environment = card_environment(card)
        except (*_TRANSIENT, TrifectaError) as exc:
            if peer.up:
                log.warning("peer down", peer=peer.name or url, error=str(exc)[:200])
            peer.up, peer.failures, peer.error = False, peer.failures + 1, str(exc)[:300]
            return peer
        if not peer.up:
            log.info("peer up", peer=environment.name, url=url)
        self._cards[url] = card
        peer.name, peer.environment, peer.services = (
            environment.name,
            environment,
            card_services(card),
        )
        peer.up, peer.failures, peer.error, peer.last_seen = True, 0, "", time.time()
        return peer

    async def refresh(self) -> list[Peer]:
        """Fetch every seed's card now (concurrently)."""
        async with anyio.create_task_group() as group:
            for url in self._peers:
                group.start_soon(self.refresh_one, url)
        return self.peers()

    async def run(self) -> None:
        """Refresh every `refresh_s` until `stop()` (run it as a background task)."""
        self._stop = anyio.Event()
        while not self._stop.is_set():
            await self.refresh()
            with anyio.move_on_after(self.refresh_s):
                await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()

    # -- reading ---------------------------------------------------------------------------
    def peers(self, *, up: bool | None = None) -> list[Peer]:
        return [p for p in self._peers.values() if up is None or p.up == up]

    def peer(self, name: str) -> Peer:
        for peer in self._peers.values():
            if name in (peer.name, peer.url):
                return peer
        raise NotFound(
            f"no peer {name!r}", field="peer", allowed=[p.name or p.url for p in self.peers()]
        )

    def card(self, name: str) -> AgentCard:
        """The card of an up peer (`Unavailable` when it stopped answering)."""
        peer = self.peer(name)
        if not peer.up:
            raise Unavailable(f"peer {name!r} is down: {peer.error}", field="peer")
        return self._cards[peer.url]

    def admitting(self, capsule: Capsule) -> list[Peer]:
        """Up peers whose environment admits `capsule` (where it may be delegated)."""
        return [p for p in self.peers(up=True) if p.environment and p.environment.admits(capsule)]

    def remote_capsules(self) -> list[RemoteCapsule]:
        """The capsule manifests up peers publish (`fleet.capsule_uri.PeerCatalog`)."""
        found: list[RemoteCapsule] = []
        for peer in self.peers(up=True):
            try:
                manifests = card_manifests(self._cards[peer.url])
            except TrifectaError as exc:
                log.warning("bad manifests in card", peer=peer.name, error=exc.one_line())
                continue
            found += [
                RemoteCapsule(
                    peer=peer.name or peer.url,
                    url=peer.url,
                    authorities=peer.authorities,
                    manifest=m,
                )
                for m in manifests
            ]
        return found
