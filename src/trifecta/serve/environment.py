"""One environment of the topology as its own server (`trifecta env serve --env NAME`).

The composition root of a site: it builds the services the topology places there (the
cognitive serving layer and the context shards of the domains homed there in a serving cloud
or sovereign site; the edge mesh of an edge site), puts them behind the federation routes
(`federation.http_server`, the typed hops a front door's `HttpBridge` calls), publishes the
site's A2A agent card and accepts capsule tasks delegated as A2A tasks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI

from trifecta import __version__
from trifecta.cognitive.serving.service import CognitiveService
from trifecta.context.facade import ContextService
from trifecta.core.apidocs import install_api_docs
from trifecta.core.db import get_engine
from trifecta.core.errors import InvalidInput
from trifecta.core.http import install_error_handlers
from trifecta.core.logging import RequestIds
from trifecta.core.settings import Phase, Settings
from trifecta.core.tasks import TaskFamilyVerifier
from trifecta.edge.mesh import EdgeMesh
from trifecta.federation.a2a.cards import build_agent_card
from trifecta.federation.a2a.discovery import Peer, PeerDirectory
from trifecta.federation.a2a.models import CapsuleTask, CapsuleTaskOutcome
from trifecta.federation.a2a.server import add_a2a_routes
from trifecta.federation.http_server import federation_router
from trifecta.federation.receiver import EnvironmentHost, EnvironmentServices
from trifecta.federation.rules import RuleBook
from trifecta.federation.services import CompleteRequest, OffloadRequest
from trifecta.fleet.manifest import manifest_of
from trifecta.fleet.registry import CapsuleRegistry
from trifecta.fleet.topology import Environment, Topology
from trifecta.orchestrator.parts import CapsuleDirectory
from trifecta.orchestrator.stack import (
    build_cognitive,
    build_generative,
    edge_rule_book,
    serves_cognitive,
    start_edge_mesh,
    warm_up,
)
from trifecta.serve.openapi import document_app

MAX_BODY_BYTES = 1 << 20


class EnvironmentSite:
    """The services of one environment, built once, closed together."""

    def __init__(
        self,
        topology: Topology,
        name: str,
        settings: Settings,
        *,
        phase: Phase | None = None,
        edge_nodes: int = 1,
    ):
        self.environment: Environment = topology.environment(name)
        self.phase: Phase = phase or settings.phase
        env = self.environment
        if not env.available_in(self.phase):
            raise InvalidInput(
                f"environment {name!r} does not serve in the {self.phase} phase",
                field="env",
                allowed=[e.name for e in topology.environments if e.available_in(self.phase)],
            )
        registry = CapsuleRegistry(get_engine(settings.db_url))
        self.capsules = CapsuleDirectory(registry)
        self.cognitive: CognitiveService | None = None
        self.context: ContextService | None = None
        self.mesh: EdgeMesh | None = None
        services = EnvironmentServices()
        if serves_cognitive(env, self.phase):
            self.cognitive = build_cognitive(settings, self.phase)
            self.context = ContextService(
                control_url=settings.db_url, registry=registry, redis_url=settings.redis_url
            )
            services.cognitive, services.context = self.cognitive.auto, self.context
            services.generative = build_generative(settings)
            services.rules = RuleBook()
        elif env.kind == "edge":
            self.mesh = services.edge = start_edge_mesh(env, settings, edge_nodes)
            services.rules = edge_rule_book(self.mesh)
        self.host = EnvironmentHost(env, services, self.capsules.get)
        self.verifier = TaskFamilyVerifier()
        self._lock = threading.Lock()

    def run_task(self, capsule_id: str, task: CapsuleTask) -> CapsuleTaskOutcome:
        """A capsule task delegated here over A2A, served by this site's own layer."""
        answer: str | None
        if self.host.services.cognitive is not None:
            response = self.host.cognitive_client().complete(
                CompleteRequest(
                    capsule_id=capsule_id, prompt=task.prompt, max_new_tokens=task.max_tokens
                )
            )
            answer, route = response.text, "cognitive"
            path = [f"cognitive/{d.tier}" for d in response.decisions]
        else:
            result = self.host.edge_client().offload(
                OffloadRequest(
                    capsule_id=capsule_id, prompts=[task.prompt], max_new_tokens=task.max_tokens
                )
            )
            answer = result.generations[0].text if result.generations else None
            route, path = "edge", [result.node or result.reason]
        verified = self.verifier.verify(task.prompt, answer) if answer is not None else None
        return CapsuleTaskOutcome(
            answer=answer,
            environment=self.environment.name,
            route=route,
            path=path,
            verified=verified,
        )

    def warm_up(self) -> None:
        services = self.host.services
        warm_up(
            auto=services.cognitive,
            meshes=[self.mesh] if self.mesh is not None else [],
            context=self.context,
            cloud_rules=services.rules if services.cognitive is not None else None,
            programs=[c.program for c in self.capsules.all() if c.program],
        )

    def close(self) -> None:
        if self.context is not None:
            self.context.close()
        if self.mesh is not None:
            self.mesh.stop()
        if self.cognitive is not None:
            self.cognitive.close()


def create_environment_app(
    site: EnvironmentSite,
    *,
    base_url: str,
    credential: str | None = None,
    peers: Sequence[str] = (),
    refresh_s: float = 5.0,
) -> FastAPI:
    """The environment's server: the federation hops, its A2A card (with the manifests of the
    capsules it admits) and delegated tasks, and discovery of its peers from `peers` (seed
    URLs: the topology's, or those `trifecta up` hands each environment)."""
    seeds = [p for p in peers if p.rstrip("/") != base_url]
    directory = PeerDirectory(seeds, refresh_s=refresh_s, credential=credential)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        watcher = asyncio.create_task(directory.run())
        yield
        directory.stop()
        await watcher
        await directory.aclose()
        await a2a.aclose()
        site.close()

    env = site.environment
    app = FastAPI(
        title=f"Trifecta environment {env.name}",
        version=__version__,
        description=f"The {env.kind} environment {env.name!r}: the typed federation hops, "
        "its A2A agent card and capsule tasks delegated over A2A.",
        lifespan=lifespan,
    )
    install_error_handlers(app, max_body_bytes=MAX_BODY_BYTES)
    app.include_router(federation_router(site.host, credential=credential))

    @app.get("/federation/v1/peers", tags=["federation"])
    def peer_list() -> list[Peer]:
        """The peers found from the seeds, and whether each one's card answers."""
        return directory.peers()

    admitted = [manifest_of(c) for c in site.capsules.all() if env.admits(c)]
    card = build_agent_card(env, base_url, services=site.host.services.names(), manifests=admitted)
    a2a = add_a2a_routes(app, card, site.run_task, site.capsules.get, credential=credential)
    install_api_docs(app)  # /docs and /redoc from the package
    document_app(app)  # the spec lists every status each route answers
    app.add_middleware(RequestIds, service=f"env:{env.name}")  # logs the front door's id
    app.state.site = site
    app.state.peers = directory
    return app
