"""The trifecta's MCP face (official `mcp` SDK 2.x, streamable HTTP at `/mcp` of `trifecta
serve`), and capsule-URI resolution over HTTP (`GET /v1/resolve?uri=...`).

Tools, each validating its input and answering bad input (or a refusal: unknown capsule,
quota, sovereignty) with an MCP error result (`isError`), never a crash:
- `run_task`: one capsule task through the trifecta loop;
- `search_context` / `show_playbook`: a capsule domain's ReasoningBank memories and ACE
  playbook, read from the domain's shard through the bridge (sovereignty applies);
- `show_plan`: the plan being served by (assignments capped by `max_assignments`);
- `fleet_status`: every environment of the topology, up or down, what it served;
- `resolve_capsule`: a `capsule://authority/domain/operation[/version]` URI.

The tools need only `TrifectaFace`; `OrchestratorFace` is its one adapter over the server's
orchestrator and stack, kept in one class so the request path can change under it.

HTTP: `/mcp` refuses a request without a valid API key (401, before the MCP session sees
it), a POST body not declared `application/json` (415) and one above 1 MB (413), each as an
`ErrorBody`; a body that is not a JSON-RPC message gets the protocol's JSON-RPC error (400).
Each tool then reads the caller's key from the request's headers: a capsule's key acts only
for its own capsule, and `show_plan`, `fleet_status`, `resolve_capsule` and `GET /v1/resolve`
need the admin key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import anyio
from fastapi import Depends, FastAPI, Query
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.types import CallToolResult, InputRequiredResult
from pydantic import BaseModel, Field, ValidationError
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trifecta import __version__
from trifecta.context.models import MemoryOutcome, MemoryQuery, MemorySearchResult, PlaybookView
from trifecta.core.auth import Authenticator, Principal, admin_only, principal_of
from trifecta.core.errors import BadRequest, TrifectaError, invalid_input_from
from trifecta.core.http import error_response
from trifecta.fleet.capsule_uri import CapsuleResolver, Resolution
from trifecta.fleet.capsules import SLUG
from trifecta.fleet.plan_model import Plan
from trifecta.orchestrator.loop import Orchestrator
from trifecta.orchestrator.models import MAX_PROMPT_CHARS, TaskRequest, TaskResult
from trifecta.orchestrator.stack import Stack

MCP_PATH = "/mcp"
T = TypeVar("T")


class EnvironmentStatus(BaseModel):
    name: str
    kind: str
    jurisdiction: str | None
    reserved_for: list[str] | None
    accelerators: list[str]
    up: bool
    services: list[str] = Field(default_factory=list)
    served: int = 0
    refused: int = 0
    edge_nodes: int = 0
    fault: str = Field(default="none", description="injected fault, if any")
    error: str = ""


class FleetStatus(BaseModel):
    phase: str
    capsules: int
    plan_cost_per_hour: float
    environments: list[EnvironmentStatus]


class TrifectaFace(Protocol):
    """What the MCP tools need of a running trifecta."""

    def run_task(self, capsule_id: str, request: TaskRequest) -> TaskResult: ...

    def search(self, capsule_id: str, query: MemoryQuery) -> MemorySearchResult: ...

    def playbook(self, capsule_id: str) -> PlaybookView: ...

    def plan(self) -> Plan: ...

    def fleet_status(self) -> FleetStatus: ...

    def resolve(self, uri: str) -> Resolution: ...


class DomainContext(Protocol):
    """What the face reads of a domain's context service (the bridge's context client)."""

    def search_memories(self, capsule_id: str, query: MemoryQuery) -> MemorySearchResult: ...

    def playbook(self, capsule_id: str) -> PlaybookView: ...


class OrchestratorFace:
    """`TrifectaFace` over the server's orchestrator and stack. Context reads go to the
    domain's shard environment through the bridge, like the loop's own."""

    def __init__(self, orchestrator: Orchestrator, stack: Stack):
        self.orchestrator = orchestrator
        self.stack = stack

    def run_task(self, capsule_id: str, request: TaskRequest) -> TaskResult:
        return self.orchestrator.serve(capsule_id, request)

    def _context(self, capsule_id: str) -> DomainContext:
        capsule = self.stack.capsule(capsule_id)
        return self.stack.bridge.context(capsule, self.stack.place_domain(capsule.domain))

    def search(self, capsule_id: str, query: MemoryQuery) -> MemorySearchResult:
        return self._context(capsule_id).search_memories(capsule_id, query)

    def playbook(self, capsule_id: str) -> PlaybookView:
        return self._context(capsule_id).playbook(capsule_id)

    def plan(self) -> Plan:
        return self.stack.plan

    def fleet_status(self) -> FleetStatus:
        bridge, faults = self.stack.bridge, self.stack.bridge.faults()
        environments = []
        for env in self.stack.topology.environments:
            status = EnvironmentStatus(
                name=env.name,
                kind=env.kind,
                jurisdiction=env.jurisdiction,
                reserved_for=env.reserved_for,
                accelerators=env.accelerators,
                up=bridge.is_up(env.name),
                fault=faults[env.name].describe() if env.name in faults else "none",
            )
            if status.up:
                try:
                    health = bridge.health(env.name)
                except TrifectaError as exc:  # hosts nothing, or failed just now
                    status.error = exc.one_line()
                else:
                    status.services = list(health.services)
                    status.served, status.refused = health.served, health.refused
                    status.edge_nodes = health.edge_nodes
            environments.append(status)
        return FleetStatus(
            phase=self.stack.phase,
            capsules=len(self.stack.capsules.all()),
            plan_cost_per_hour=self.stack.plan.cost_per_hour,
            environments=environments,
        )

    def resolve(self, uri: str) -> Resolution:
        # Every environment of the front door's topology is local: it hosts them all.
        local = {"local": None, "localhost": None}
        resolver = CapsuleResolver(
            self.stack.capsules.registry,
            local={**local, **{e.name: e for e in self.stack.topology.environments}},
        )
        return resolver.resolve(uri)


def _answer(call: Callable[[], T]) -> T:
    """Run a tool body; expected failures become the tool's error result."""
    try:
        return call()
    except TrifectaError as exc:
        raise ToolError(exc.one_line()) from None
    except ValidationError as exc:
        raise ToolError(invalid_input_from(exc).one_line()) from None


CapsuleId = Field(pattern=SLUG, description="the capsule (tenant) id")


def _caller(auth: Authenticator, ctx: Context) -> Principal:
    """The key of the HTTP request that carried this tool call."""
    headers = ctx.headers or {}
    return _answer(lambda: principal_of(auth, headers.get("authorization")))


class OneLineErrors(MCPServer):
    """The SDK's server, answering arguments that fail the tool's schema with one line
    naming the field (the SDK's own text is pydantic's multi-line report with its links)."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context | None = None
    ) -> CallToolResult | InputRequiredResult:
        try:
            return await super().call_tool(name, arguments, context)
        except UnexpectedToolError:
            raise
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):
                raise ToolError(invalid_input_from(exc.__cause__).one_line()) from exc.__cause__
            raise


def build_mcp_server(face: TrifectaFace, auth: Authenticator) -> MCPServer:
    """The MCP server; sync tools run in the SDK's worker threads (the loop blocks)."""
    server: MCPServer = OneLineErrors(
        "trifecta",
        version=__version__,
        log_level="WARNING",
        instructions="Run capsule tasks through the Trifecta loop; read a domain's context, "
        "the plan and the fleet's status; resolve capsule:// URIs.",
    )

    @server.tool(description="Serve one capsule task through the trifecta loop.")
    def run_task(
        ctx: Context,
        capsule_id: str = CapsuleId,
        prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS),
        max_tokens: int = Field(default=8, ge=1, le=256),
        request_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,40}$"),
    ) -> TaskResult:
        key = _caller(auth, ctx)
        return _answer(
            lambda: face.run_task(
                key.act_for(capsule_id),
                TaskRequest(prompt=prompt, max_tokens=max_tokens, request_id=request_id),
            )
        )

    @server.tool(description="Search the ReasoningBank memories of a capsule's domain.")
    def search_context(
        ctx: Context,
        capsule_id: str = CapsuleId,
        query: str = Field(min_length=1, max_length=2000),
        k: int = Field(default=5, ge=1, le=100),
        outcome: MemoryOutcome | None = None,
    ) -> MemorySearchResult:
        key = _caller(auth, ctx)
        return _answer(
            lambda: face.search(
                key.act_for(capsule_id), MemoryQuery(query=query, k=k, outcome=outcome)
            )
        )

    @server.tool(description="The ACE playbook of a capsule's domain (bullets and counters).")
    def show_playbook(ctx: Context, capsule_id: str = CapsuleId) -> PlaybookView:
        key = _caller(auth, ctx)
        return _answer(lambda: face.playbook(key.act_for(capsule_id)))

    @server.tool(description="The plan being served: cost, pools, capsule assignments.")
    def show_plan(ctx: Context, max_assignments: int = Field(default=50, ge=0, le=10_000)) -> Plan:
        _answer(_caller(auth, ctx).require_admin)
        plan = face.plan()
        return plan.model_copy(update={"assignments": plan.assignments[:max_assignments]})

    @server.tool(description="Every environment: up or down, faults, what it served.")
    def fleet_status(ctx: Context) -> FleetStatus:
        _answer(_caller(auth, ctx).require_admin)
        return _answer(face.fleet_status)

    @server.tool(description="Resolve capsule://authority/domain/operation[/version].")
    def resolve_capsule(ctx: Context, uri: str = Field(min_length=1, max_length=512)) -> Resolution:
        _answer(_caller(auth, ctx).require_admin)
        return _answer(lambda: face.resolve(uri))

    return server


class UnsupportedMediaType(BadRequest):
    status = 415
    code = "unsupported_media_type"


_JSON = b"application/json"
_ERROR_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}


class McpGuard:
    """ASGI wrapper of the MCP route: what HTTP refuses before the MCP session manager sees
    a request, in the server's error shape (`ErrorBody`).

    - no valid key: 401 (verification runs off the event loop: it may hash);
    - a POST whose body is not declared JSON: 415 naming `content-type` (the SDK answered a
      plain-text 400);
    - any other error the SDK's transport answers in plain text (a bad Host header, ...):
      the same status with an `ErrorBody`. Its JSON-RPC errors (a body that is not JSON or
      not a JSON-RPC message, an unknown session) pass unchanged: MCP clients read them.
    The body-size limit (413) is the app's own middleware, outside this one."""

    def __init__(self, app: ASGIApp, auth: Authenticator):
        self.app, self.auth = app, auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        header = headers.get(b"authorization")
        value = header.decode("latin-1") if header is not None else None
        try:
            await anyio.to_thread.run_sync(principal_of, self.auth, value)
            media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if scope.get("method") == "POST" and media_type != _JSON:
                raise UnsupportedMediaType(
                    "send the JSON-RPC message as application/json", field="content-type"
                )
        except TrifectaError as exc:
            await error_response(exc)(scope, receive, send)
            return
        await self.app(scope, receive, _json_errors(send))


def _json_errors(send: Send) -> Send:
    """`send`, with a plain-text error answer rewritten as an `ErrorBody` of its status."""
    start: Message | None = None
    body = bytearray()

    async def send_json(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            content_type = dict(message.get("headers") or []).get(b"content-type", b"")
            if message["status"] >= 400 and not content_type.startswith(_JSON):
                start = message  # held until its body is complete
                return
        elif message["type"] == "http.response.body" and start is not None:
            body.extend(message.get("body", b""))
            if message.get("more_body", False):
                return
            status = int(start["status"])
            text = body.decode("utf-8", "replace").strip()[:300] or "refused"
            code = _ERROR_CODES.get(status, "bad_request" if status < 500 else "internal_error")
            answer = JSONResponse({"error": {"code": code, "message": text}}, status_code=status)
            await send(
                {"type": "http.response.start", "status": status, "headers": answer.raw_headers}
            )
            await send({"type": "http.response.body", "body": answer.body})
            return
        await send(message)

    return send_json


def mount_mcp_face(
    app: FastAPI,
    face: TrifectaFace,
    *,
    auth: Authenticator,
    allowed_hosts: list[str] | None = None,
) -> MCPServer:
    """Serve the MCP face at `MCP_PATH` of `app` and `GET /v1/resolve`. The MCP session
    manager runs inside the app's lifespan. DNS-rebinding protection admits loopback host
    names unless `allowed_hosts` (host:port patterns) names others."""
    from mcp.server.transport_security import TransportSecuritySettings

    server = build_mcp_server(face, auth)
    security = None
    if allowed_hosts is not None:
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=allowed_hosts,
            allowed_origins=[f"http://{h}" for h in allowed_hosts],
        )
    mcp_app = server.streamable_http_app(
        streamable_http_path=MCP_PATH, json_response=True, transport_security=security
    )
    # The MCP route joins the app's routes (a Mount would answer only at `/mcp/`).
    for route in mcp_app.routes:
        if hasattr(route, "app"):
            route.app = McpGuard(route.app, auth)
    app.router.routes.extend(mcp_app.routes)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(outer: FastAPI) -> AsyncIterator[None]:
        async with server.session_manager.run(), inner(outer):
            yield

    app.router.lifespan_context = lifespan

    @app.get("/v1/resolve", tags=["control plane"], dependencies=[Depends(admin_only(auth))])
    def resolve(uri: str = Query(min_length=1, max_length=512)) -> Resolution:
        """Resolve a capsule URI (a bad one: 422 naming the part; unknown: 404)."""
        return face.resolve(uri)

    return server
