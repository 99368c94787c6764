"""The ReasoningBank HTTP service: the `ContextService` API over FastAPI.

`create_app(...)` builds the app (the main server mounts it under `/context`); every route
is one facade call, so HTTP clients and the in-process orchestrator get the same tenancy
checks and caching. Errors are 4xx JSON bodies naming the field (`core.http`).

Every route authenticates through `core.auth.authenticated`: a capsule's key acts only for
its own capsule (a path or trajectory naming another is 403), the admin key for any; the
shard routes (list, move, share) need the admin key. `/health` needs none (counters only).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, FastAPI, Header, Path, Query, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from trifecta.context.admin import MoveRequest, ShardAdmin, ShardListing, ShareRequest
from trifecta.context.copier import CopyReport
from trifecta.context.deltas import Delta, DeltaResult
from trifecta.context.facade import ContextService, Read
from trifecta.context.learn_queue import LearnTicket
from trifecta.context.learning import LearnResult
from trifecta.context.models import (
    AddMemoriesRequest,
    AddMemoriesResult,
    MemoryQuery,
    MemorySearchResult,
    PlaybookView,
    RenderedPlaybook,
    RenderRequest,
    Retrieval,
    RetrieveRequest,
)
from trifecta.context.settings import ContextSettings
from trifecta.context.shards import Share
from trifecta.context.trajectory import Trajectory
from trifecta.core.auth import (
    Authenticator,
    Principal,
    admin_only,
    authenticated,
    principal_of,
    remembered_principal,
)
from trifecta.core.http import install_error_handlers, stand_alone
from trifecta.core.protocols import Embedder, LanguageModel
from trifecta.fleet.capsules import SLUG

M = TypeVar("M", bound=BaseModel)
CapsuleId = Annotated[str, Path(pattern=SLUG, description="the calling capsule")]
Domain = Annotated[str, Path(pattern=SLUG)]


def authenticated_on_loop(auth: Authenticator) -> Callable[..., Awaitable[Principal]]:
    """`core.auth.authenticated` for the routes that may answer from the cache, run on the
    event loop: FastAPI runs a plain-function dependency in the thread pool, and that hop (a
    worker woken, then the loop woken again) was a sixth of a cache hit's samples under
    py-spy. Only a key the store remembers is answered on the loop (`fleet.keys` renews a
    used key's row in the background before it expires); a key whose row must be read now
    is checked in the thread pool, so no request waits behind that read."""

    async def dependency(authorization: str | None = Header(default=None)) -> Principal:
        principal = remembered_principal(auth, authorization)
        if principal is None:
            principal = await run_in_threadpool(principal_of, auth, authorization)
        return principal

    return dependency


class Health(BaseModel):
    status: str
    cache: bool
    redis: bool
    cache_stats: dict[str, int]


def create_app(
    service: ContextService | None = None,
    *,
    language_model: LanguageModel | None = None,
    embedder: Embedder | Callable[[], Embedder] | None = None,
    settings: ContextSettings | None = None,
    control_url: str | None = None,
    redis_url: str | None = None,
    cache: bool | None = None,
    auth: Authenticator | None = None,
) -> FastAPI:
    """The service app. Pass a ready `ContextService`, or the parts to build one (the
    language model comes from the composition root; None runs the roles on outcomes).
    `auth` checks the keys (default: the key store of the control database)."""
    settings = settings or (service.settings if service else ContextSettings())
    service = service or ContextService(
        control_url=control_url,
        embedder=embedder,
        language_model=language_model,
        redis_url=redis_url,
        settings=settings,
        cache=cache,
    )
    if auth is None:  # the keys of the capsules the service checks tenancy against
        from trifecta.fleet.keys import KeyStore

        auth = KeyStore(service.registry.engine)
    admin = ShardAdmin(service)
    caller = Depends(authenticated(auth))
    reader = Depends(authenticated_on_loop(auth))  # the routes that may answer from the cache
    admin_key = [Depends(admin_only(auth))]
    app = FastAPI(
        title="Trifecta context service",
        summary="ACE playbooks and ReasoningBank memories per capsule domain, with shared caching.",
        version="1",
    )
    app.state.context = service
    install_error_handlers(app, max_body_bytes=settings.max_body_bytes)

    @app.get("/health", tags=["service"])  # liveness: counters only, no key needed
    def health() -> Health:
        return Health(
            status="ok",
            cache=service.cache_enabled,
            redis=service.redis is not None,
            cache_stats=service.cache_stats(),
        )

    async def answer(plan: Callable[[], Read[M]]) -> Response:
        # With Redis, a hit of this process's cache is answered on the event loop (the
        # tenancy check, usually remembered, and two probes); whatever waits for Redis or a
        # database, or computes, runs in the thread pool. The body is the cached JSON as it
        # is: FastAPI neither validates nor encodes it again (the route's response_model
        # still documents it).
        if service.fast_reads:
            read = plan()
            body = service.cached_json(read)
            if body is None:
                body = await run_in_threadpool(lambda: service.run_json(read, asked=True))
        else:
            body = await run_in_threadpool(lambda: service.run_json(plan()))
        return Response(body, media_type="application/json")

    @app.get("/capsules/{capsule_id}/playbook", tags=["playbook"], response_model=PlaybookView)
    async def read_playbook(
        capsule_id: CapsuleId,
        domain: Annotated[str | None, Query(pattern=SLUG, description="a shared domain")] = None,
        key: Principal = reader,
    ) -> Response:
        """The active bullets of the capsule's domain (or of a domain shared with it)."""
        capsule = key.act_for(capsule_id)
        return await answer(lambda: service.plan_playbook(capsule, domain))

    @app.post(
        "/capsules/{capsule_id}/playbook/render", tags=["playbook"], response_model=RenderedPlaybook
    )
    async def render_playbook(
        capsule_id: CapsuleId, request: RenderRequest, key: Principal = reader
    ) -> Response:
        """The playbook as prompt text within a token budget, most useful bullets first."""
        capsule = key.act_for(capsule_id)
        return await answer(lambda: service.plan_render(capsule, request))

    @app.post("/capsules/{capsule_id}/deltas", tags=["playbook"])
    def apply_delta(capsule_id: CapsuleId, delta: Delta, key: Principal = caller) -> DeltaResult:
        """Merge ADD / UPDATE / TAG / REMOVE operations; replayed op ids change nothing."""
        return service.apply_delta(key.act_for(capsule_id), delta)

    @app.post("/capsules/{capsule_id}/retrieve", tags=["retrieval"], response_model=Retrieval)
    async def retrieve(
        capsule_id: CapsuleId, request: RetrieveRequest, key: Principal = reader
    ) -> Response:
        """Bullets and memories for one task, structured and as prompt text."""
        capsule = key.act_for(capsule_id)
        return await answer(lambda: service.plan_retrieve(capsule, request))

    @app.post("/capsules/{capsule_id}/memories", tags=["memory"])
    def add_memories(
        capsule_id: CapsuleId, request: AddMemoriesRequest, key: Principal = caller
    ) -> AddMemoriesResult:
        """Append memory items; near-identical ones reinforce what is stored."""
        return service.add_memories(key.act_for(capsule_id), request.items)

    @app.post(
        "/capsules/{capsule_id}/memories/search", tags=["memory"], response_model=MemorySearchResult
    )
    async def search_memories(
        capsule_id: CapsuleId, query: MemoryQuery, key: Principal = reader
    ) -> Response:
        """Top-k memories by cosine similarity, filtered by outcome and age."""
        capsule = key.act_for(capsule_id)
        return await answer(lambda: service.plan_search(capsule, query))

    @app.post("/trajectories", tags=["learning"])
    def learn(trajectory: Trajectory, key: Principal = caller) -> LearnResult:
        """Reflect, curate and distil one trajectory (tags, delta, memories) in one call."""
        key.act_for(trajectory.capsule_id, field="capsule_id")
        return service.learn(trajectory)

    @app.post("/trajectories/queue", tags=["learning"], status_code=202)
    def submit(trajectory: Trajectory, key: Principal = caller) -> LearnTicket:
        """Queue a trajectory for learning. The answer is the acknowledgement: the trajectory
        is stored and will be learned from, in order, exactly once."""
        key.act_for(trajectory.capsule_id, field="capsule_id")
        return service.submit(trajectory)

    @app.get("/shards", tags=["shards"], dependencies=admin_key)
    def list_shards() -> ShardListing:
        return admin.listing()

    @app.post("/shards/{domain}/move", tags=["shards"], dependencies=admin_key)
    def move_domain(domain: Domain, request: MoveRequest) -> CopyReport:
        """Move a domain to another database online (copy, catch up, switch, verify)."""
        return admin.move(domain, request)

    @app.post("/shards/{domain}/shares", tags=["shards"], dependencies=admin_key)
    def share_domain(domain: Domain, request: ShareRequest) -> Share:
        """Let another domain's capsules (or everyone, '*') read this domain."""
        return admin.share(domain, request.grantee)

    @app.delete(
        "/shards/{domain}/shares/{grantee}",
        tags=["shards"],
        status_code=204,
        dependencies=admin_key,
    )
    def unshare_domain(domain: Domain, grantee: str) -> Response:
        admin.unshare(domain, grantee)
        return Response(status_code=204)

    return app


def create_app_from_settings() -> FastAPI:
    """For `uvicorn --factory`: everything from TRIFECTA_* settings, no language model; the
    embedder loads before the server accepts requests."""
    from trifecta.core.heap import bound_native_caches, freeze_startup_heap

    bound_native_caches()  # before the embedder's first kernel (core/heap.py says why)
    service = ContextService()
    service.warm_up()
    service.start_learning()  # learns what a previous process left queued
    app = stand_alone(create_app(service), service="context")
    # The embedder, torch and the app stay for the process's life: keep full collections
    # from walking them on the request path (as `trifecta serve` does).
    freeze_startup_heap()
    return app
