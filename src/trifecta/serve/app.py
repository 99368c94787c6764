"""The one FastAPI process that serves every HTTP surface of Trifecta.

- `/v1/models`, `/v1/completions`, `/v1/chat/completions`: the cognitive layer's
  OpenAI-compatible API (tiers and `auto`), at the root so OpenAI clients work unchanged;
- `/v1/capsules/{id}/tasks`: a capsule's task through the whole trifecta loop, its result,
  and the client's feedback on it;
- `/v1/capsules`, `/v1/plan`, `/v1/topology`, `/v1/ledger`: the control plane and the costs;
- `/context/...`: the ReasoningBank / ACE service;
- `/v1/keys`: API keys (admin);
- `/v1/generative/placement`: the generative layer's expert placement, and rebalancing it (admin);
- `/metrics`: Prometheus; `/healthz` (these two need no key: no tenant's data is in them).

Every other route authenticates through `core.auth.authenticated` (`Authorization: Bearer
<key>`); the capsule a request acts for comes from its key (a path id that is not the key's
capsule is 403), and the admin routes need the admin key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from trifecta import __version__
from trifecta.cognitive.serving.app import build_router
from trifecta.cognitive.serving.service import CognitiveService
from trifecta.context.service import create_app as create_context_app
from trifecta.core.apidocs import install_api_docs
from trifecta.core.auth import Authenticator, Principal, admin_only, authenticated
from trifecta.core.http import install_error_handlers
from trifecta.core.logging import RequestIds
from trifecta.core.settings import PHASES, Phase
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.keys import KeyStore
from trifecta.fleet.plan_model import Plan
from trifecta.fleet.planner import plan as make_plan
from trifecta.fleet.topology import Topology
from trifecta.generative.named import GenerativeModels
from trifecta.orchestrator.ledger import Rollup
from trifecta.orchestrator.loop import Orchestrator
from trifecta.orchestrator.models import Feedback, FeedbackResult, TaskRequest, TaskResult
from trifecta.orchestrator.stack import Stack
from trifecta.serve.auth import keys_routes, revoke_capsule_keys, server_authenticator
from trifecta.serve.dashboard import mount_dashboard
from trifecta.serve.generative_admin import generative_admin_routes
from trifecta.serve.idempotency import SingleFlight
from trifecta.serve.mcp_face import OrchestratorFace, mount_mcp_face
from trifecta.serve.openapi import document_app, operations_of

MAX_BODY_BYTES = 1 << 20


def capsule_routes(orchestrator: Orchestrator, stack: Stack, auth: Authenticator) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["capsules"])
    caller, admin = Depends(authenticated(auth)), Depends(admin_only(auth))
    flights = SingleFlight()

    @router.post("/capsules/{capsule_id}/tasks", status_code=status.HTTP_201_CREATED)
    def submit_task(capsule_id: str, body: TaskRequest, key: Principal = caller) -> TaskResult:
        """Serve one task through the trifecta loop (context, route, layer, verify, learn).
        A `request_id` seen before replays its result (409 if another capsule's)."""
        capsule = key.act_for(capsule_id)
        return flights.run(body.request_id, lambda: orchestrator.serve(capsule, body))

    @router.get("/capsules/{capsule_id}/tasks/{task_id}")
    def get_task(capsule_id: str, task_id: str, key: Principal = caller) -> TaskResult:
        stack.capsule(key.act_for(capsule_id))
        return orchestrator.records.get(task_id, capsule_id)

    @router.post("/capsules/{capsule_id}/tasks/{task_id}/feedback")
    def task_feedback(
        capsule_id: str, task_id: str, body: Feedback, key: Principal = caller
    ) -> FeedbackResult:
        """The client's verdict on an earlier task; the context layer learns from it."""
        return orchestrator.feedback(key.act_for(capsule_id), task_id, body)

    @router.get("/capsules", dependencies=[admin])
    def list_capsules(kind: str | None = None, domain: str | None = None) -> list[Capsule]:
        return stack.capsules.registry.list(kind=kind, domain=domain)

    @router.post("/capsules", status_code=status.HTTP_201_CREATED, dependencies=[admin])
    def add_capsule(body: Capsule) -> Capsule:
        return stack.add_capsule(body)

    @router.get("/capsules/{capsule_id}")
    def get_capsule(capsule_id: str, key: Principal = caller) -> Capsule:
        return stack.capsules.registry.get(key.act_for(capsule_id))

    @router.delete(
        "/capsules/{capsule_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[admin]
    )
    def remove_capsule(capsule_id: str) -> Response:
        stack.remove_capsule(capsule_id)
        revoke_capsule_keys(auth, capsule_id)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return router


def control_routes(stack: Stack, auth: Authenticator) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["control plane"])
    admin = [Depends(admin_only(auth))]

    @router.get("/plan", dependencies=admin)
    def current_plan() -> Plan:
        """The plan the running stack serves by."""
        return stack.plan

    @router.post("/plan", dependencies=admin)
    def plan_capsules(capsules: list[Capsule], phase: Phase | None = None) -> Plan:
        """Plan a fleet (the body) on this server's topology, without changing anything."""
        return make_plan(capsules, stack.topology, phase or stack.phase)

    @router.get("/topology", dependencies=[Depends(authenticated(auth))])
    def topology() -> Topology:
        return stack.topology

    @router.get("/ledger", dependencies=admin)
    def ledger(
        by: Literal["capsule_id", "capsule_kind", "environment", "layer"] = Query("layer"),
    ) -> list[Rollup]:
        """Charged cost rolled up by capsule, kind, environment or layer."""
        return stack.parts.ledger.rollup(by)

    return router


def create_app(
    stack: Stack | None = None,
    *,
    cognitive: CognitiveService | None = None,
    own_stack: bool = False,
    auth: Authenticator | None = None,
) -> FastAPI:
    """The server. Pass a running `Stack` (default: the embedded one from settings); the
    OpenAI-compatible API serves the stack's own cognitive serving layer (the tiers loaded
    once), unless another `cognitive` service is given. `auth` checks every key (default:
    the key store of the stack's control database)."""
    if stack is None:
        stack, own_stack = Stack(), True
    auth = auth or server_authenticator(stack.engine)
    cognitive = cognitive or stack.cognitive
    if cognitive is None:
        from trifecta.orchestrator.stack import build_cognitive

        cognitive = stack.cognitive = build_cognitive(stack.settings, stack.phase)
    orchestrator = Orchestrator(stack.parts)
    served = cognitive
    owned = cognitive is not stack.cognitive

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if owned:
            served.close()
        if own_stack:
            stack.close()

    app = FastAPI(
        title="Trifecta",
        version=__version__,
        description="Run and scale the Industriverse Trifecta for many tenants (capsules).",
        lifespan=lifespan,
    )
    install_error_handlers(app, max_body_bytes=MAX_BODY_BYTES)
    # The generative model by name on the same /v1/completions (the layers never import
    # each other: the serve layer composes them).
    named = GenerativeModels(stack.generative, stack.phase) if stack.generative else None
    openai_api = build_router(cognitive, auth=auth, named=named)
    app.include_router(openai_api)
    app.include_router(capsule_routes(orchestrator, stack, auth))
    app.include_router(control_routes(stack, auth))
    if stack.generative is not None:  # its expert placement, for the operator
        app.include_router(generative_admin_routes(stack.generative, auth))
    if isinstance(auth, KeyStore):
        app.include_router(keys_routes(auth))
    if stack.context is not None:
        context_app = create_context_app(stack.context, auth=auth)
        install_api_docs(context_app)
        app.mount("/context", context_app)
    app.state.orchestrator = orchestrator
    app.state.auth = auth
    mount_mcp_face(app, OrchestratorFace(orchestrator, stack), auth=auth)
    mount_dashboard(app, stack, orchestrator, auth)
    # outermost: every request (mounted apps too) gets its id and one log line
    app.add_middleware(RequestIds, service="front-door")
    app.state.stack = stack

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        body = generate_latest(orchestrator.metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, object]:
        return {
            "status": "ok",
            "phase": stack.phase,
            "capsules": len(stack.capsules),
            "environments": [e.name for e in stack.topology.environments],
            "edge_nodes": {name: mesh.healthy_count() for name, mesh in stack.meshes.items()},
            "phases": list(PHASES),
        }

    install_api_docs(app)
    document_app(app, openai=operations_of(openai_api), mcp=True)
    return app
