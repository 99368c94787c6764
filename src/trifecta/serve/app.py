"""The one FastAPI process that serves every HTTP surface of Trifecta.

- `/v1/models`, `/v1/completions`, `/v1/chat/completions`: the cognitive layer's
  OpenAI-compatible API (tiers and `auto`), at the root so OpenAI clients work unchanged;
- `/v1/capsules/{id}/tasks`: a capsule's task through the whole trifecta loop, its result,
  and the client's feedback on it;
- `/v1/capsules`, `/v1/plan`, `/v1/topology`, `/v1/ledger`: the control plane and the costs;
- `/context/...`: the ReasoningBank / ACE service;
- `/metrics`: Prometheus; `/healthz`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import APIRouter, FastAPI, Query, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from trifecta import __version__
from trifecta.cognitive.serving.app import build_router
from trifecta.cognitive.serving.service import CognitiveService
from trifecta.context.service import create_app as create_context_app
from trifecta.core.http import install_error_handlers
from trifecta.core.settings import PHASES, Phase
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.plan_model import Plan
from trifecta.fleet.planner import plan as make_plan
from trifecta.fleet.topology import Topology
from trifecta.orchestrator.ledger import Rollup
from trifecta.orchestrator.loop import Orchestrator
from trifecta.orchestrator.models import Feedback, FeedbackResult, TaskRequest, TaskResult
from trifecta.orchestrator.stack import Stack
from trifecta.serve.mcp_face import OrchestratorFace, mount_mcp_face

MAX_BODY_BYTES = 1 << 20


def capsule_routes(orchestrator: Orchestrator, stack: Stack) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["capsules"])

    @router.post("/capsules/{capsule_id}/tasks", status_code=status.HTTP_201_CREATED)
    def submit_task(capsule_id: str, body: TaskRequest) -> TaskResult:
        """Serve one task through the trifecta loop (context, route, layer, verify, learn)."""
        return orchestrator.serve(capsule_id, body)

    @router.get("/capsules/{capsule_id}/tasks/{task_id}")
    def get_task(capsule_id: str, task_id: str) -> TaskResult:
        stack.capsule(capsule_id)
        return orchestrator.records.get(task_id, capsule_id)

    @router.post("/capsules/{capsule_id}/tasks/{task_id}/feedback")
    def task_feedback(capsule_id: str, task_id: str, body: Feedback) -> FeedbackResult:
        """The client's verdict on an earlier task; the context layer learns from it."""
        return orchestrator.feedback(capsule_id, task_id, body)

    @router.get("/capsules")
    def list_capsules(kind: str | None = None, domain: str | None = None) -> list[Capsule]:
        return stack.capsules.registry.list(kind=kind, domain=domain)

    @router.post("/capsules", status_code=status.HTTP_201_CREATED)
    def add_capsule(body: Capsule) -> Capsule:
        return stack.add_capsule(body)

    @router.get("/capsules/{capsule_id}")
    def get_capsule(capsule_id: str) -> Capsule:
        return stack.capsules.registry.get(capsule_id)

    @router.delete("/capsules/{capsule_id}", status_code=status.HTTP_204_NO_CONTENT)
    def remove_capsule(capsule_id: str) -> Response:
        stack.remove_capsule(capsule_id)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return router


def control_routes(stack: Stack) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["control plane"])

    @router.get("/plan")
    def current_plan() -> Plan:
        """The plan the running stack serves by."""
        return stack.plan

    @router.post("/plan")
    def plan_capsules(capsules: list[Capsule], phase: Phase | None = None) -> Plan:
        """Plan a fleet (the body) on this server's topology, without changing anything."""
        return make_plan(capsules, stack.topology, phase or stack.phase)

    @router.get("/topology")
    def topology() -> Topology:
        return stack.topology

    @router.get("/ledger")
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
) -> FastAPI:
    """The server. Pass a running `Stack` (default: the embedded one from settings); the
    OpenAI-compatible API serves the stack's own cognitive serving layer (the tiers loaded
    once), unless another `cognitive` service is given."""
    if stack is None:
        stack, own_stack = Stack(), True
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
    app.include_router(build_router(cognitive))
    app.include_router(capsule_routes(orchestrator, stack))
    app.include_router(control_routes(stack))
    if stack.context is not None:
        app.mount("/context", create_context_app(stack.context))
    app.state.orchestrator = orchestrator
    mount_mcp_face(app, OrchestratorFace(orchestrator, stack))
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

    return app
