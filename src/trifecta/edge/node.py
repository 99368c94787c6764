"""An edge node: the torch-free runtime behind an MCP server (official `mcp` SDK).

Tools (streamable HTTP at `/mcp`, or in-process through `mcp.Client(node.mcp_server())`):
- `generate`: run the active edge model on a batch of prompts; the mesh sends the id of the
  request it serves (`request_id`), and the node logs the call under it (one line: status,
  prompts, milliseconds), so one id names the request at the front door and on the node.
  The same work, with the same checks (`GenerateRequest`), is `EdgeNode.serve_generate`: the
  mesh calls it directly on an in-process node, on the requesting thread;
- `status`: identity, environment, load and capacity, active model, artifact inventory
  (the mesh's heartbeat);
- `put_artifact`: receive an artifact (model, playbook snapshot, tensor-logic program),
  checked against its content hash; a model is also checked as an edge-model artifact and
  refused, with nothing stored, when corrupt.

A node keeps its artifacts in a content-addressed store under its data directory, so after a
restart it still has them and the mesh sends only what it missed. Requests beyond
`capacity` are answered `busy` at once (the mesh then tries another node).
"""

from __future__ import annotations

import base64
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Literal

import anyio
from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel, ConfigDict, Field

from trifecta.core.errors import TrifectaError
from trifecta.core.logging import WELL_FORMED_ID, accept_request_id, get_logger, request_scope
from trifecta.core.protocols import Generation
from trifecta.edge.artifact import EdgeArtifact
from trifecta.edge.runtime import EdgeRuntime
from trifecta.edge.store import ARTIFACT_KINDS, NAME, ArtifactKind, ArtifactRef, ArtifactStore
from trifecta.fleet.capsules import SLUG

log = get_logger("trifecta.edge.node")
MAX_PROMPTS = 64
MAX_NEW_TOKENS = 64
MAX_ARTIFACT_BYTES = 64 * 1024 * 1024


# The `generate` tool's arguments, declared once: the tool's schema and `GenerateRequest`.
Prompts = Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]
NewTokens = Annotated[int, Field(ge=1, le=MAX_NEW_TOKENS)]
Temperature = Annotated[float, Field(ge=0.0, le=5.0)]
TopLogprobs = Annotated[int, Field(ge=0, le=10)]
Stops = Annotated[list[str], Field(max_length=8)]
RequestId = Annotated[str | None, Field(pattern=WELL_FORMED_ID.pattern)]


class GenerateRequest(BaseModel):
    """A `generate` call: what the MCP tool accepts, checked the same way in process."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompts: Prompts
    max_new_tokens: NewTokens = 8
    temperature: Temperature = 0.0
    top_logprobs: TopLogprobs = 0
    stop: Stops = Field(default_factory=list)
    request_id: RequestId = None


class NodePlace(BaseModel):
    """The environment a node belongs to; satisfies `fleet.capsules.Place`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=SLUG, description="environment name in the topology")
    kind: str = Field(default="edge", pattern=SLUG)
    jurisdiction: str | None = Field(default=None, pattern=SLUG)


class NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=SLUG)
    environment: NodePlace = Field(default_factory=lambda: NodePlace(name="edge"))
    data_dir: Path
    capacity: int = Field(default=4, gt=0, description="requests accepted at once")
    kernel: str | None = Field(
        default=None, description="ternary kernel; None: chosen by CPU features"
    )
    threads: int = Field(default=1, gt=0, description="kernel threads per request")
    accelerator: str = Field(
        default="coral-npu", description="the edge target this node stands for"
    )


class GenerationOut(BaseModel):
    text: str
    tokens: list[str]
    logprobs: list[float]
    entropies: list[float]
    finish_reason: str
    model: str
    prompt_tokens: int
    top_logprobs: list[list[tuple[str, float]]] = Field(default_factory=list)

    @classmethod
    def of(cls, g: Generation) -> GenerationOut:
        return cls(
            text=g.text,
            tokens=g.tokens,
            logprobs=g.logprobs,
            entropies=g.entropies,
            finish_reason=g.finish_reason,
            model=g.model,
            prompt_tokens=g.prompt_tokens,
            top_logprobs=[[(a.token, a.logprob) for a in step] for step in g.top_logprobs],
        )


class GenerateResponse(BaseModel):
    status: Literal["ok", "busy", "no_model", "invalid"]
    node: str
    generations: list[GenerationOut] = Field(default_factory=list)
    message: str = ""
    seconds: float = 0.0


class NodeStatus(BaseModel):
    node: str
    environment: NodePlace
    accelerator: str
    in_flight: int
    capacity: int
    served: int
    model_sha256: str | None
    kernel: str | None
    inventory: list[ArtifactRef]
    inventory_digest: str
    uptime_s: float


class PutArtifactResponse(BaseModel):
    status: Literal["stored", "rejected"]
    ref: ArtifactRef | None = None
    message: str = ""
    inventory_digest: str


class EdgeNode:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.store = ArtifactStore(config.data_dir / "artifacts")
        self.runtime: EdgeRuntime | None = None
        self.model_sha256: str | None = None
        self._lock = threading.Lock()
        self._in_flight = 0
        self._served = 0
        self._started = time.time()
        current = self.store.current("model")
        if current is not None:
            try:
                self._activate(current.sha256)
            except TrifectaError as exc:
                # A model this version cannot read (an older format, a damaged disk): start
                # without one, so that the mesh sees an out-of-date node and sends it the
                # current model, instead of the node failing to start.
                log.warning("stored model unusable", node=self.name, reason=exc.one_line())

    @property
    def name(self) -> str:
        return self.config.name

    def _activate(self, sha256: str) -> None:
        artifact = EdgeArtifact.load(self.store.path(sha256))
        self.runtime = EdgeRuntime(
            artifact,
            kernel=self.config.kernel,
            threads=self.config.threads,
            name=f"edge:{self.name}",
        )
        self.model_sha256 = sha256
        log.info(
            "model activated", node=self.name, sha256=sha256[:12], kernel=self.runtime.kernel.name
        )

    def status(self) -> NodeStatus:
        inventory = self.store.inventory()
        return NodeStatus(
            node=self.name,
            environment=self.config.environment,
            accelerator=self.config.accelerator,
            in_flight=self._in_flight,
            capacity=self.config.capacity,
            served=self._served,
            model_sha256=self.model_sha256,
            kernel=self.runtime.kernel.name if self.runtime else None,
            inventory=inventory,
            inventory_digest=self.store.digest(),
            uptime_s=time.time() - self._started,
        )

    def put_artifact(
        self, kind: ArtifactKind, name: str, sha256: str, data: bytes, activate: bool = True
    ) -> PutArtifactResponse:
        try:
            if kind == "model":
                self._check_model(data)
            ref = self.store.put(kind, name, data, sha256=sha256)
            if kind == "model" and activate:
                self._activate(ref.sha256)
        except TrifectaError as exc:
            log.warning(
                "artifact refused", node=self.name, kind=kind, name=name, reason=exc.one_line()
            )
            return PutArtifactResponse(
                status="rejected", message=exc.one_line(), inventory_digest=self.store.digest()
            )
        return PutArtifactResponse(status="stored", ref=ref, inventory_digest=self.store.digest())

    def _check_model(self, data: bytes) -> None:
        with tempfile.NamedTemporaryFile(dir=self.store.root, suffix=".safetensors") as handle:
            handle.write(data)
            handle.flush()
            EdgeArtifact.load(Path(handle.name))

    def serve_generate(self, request: GenerateRequest) -> GenerateResponse:
        """The `generate` tool's work on the calling thread: the capacity gate, the model, and
        one log line under the request's id. With info lines off, none of the line's work is
        done (the id's scope, the clock, the fields): nothing under it logs at other levels."""
        # At info the line costs ~100 us of a served call's ~830 of CPU (shipped model, one
        # prompt, console or JSON renderer alike: the processors run with cold caches after
        # the model's forward), against 15 us in a tight loop; with info off, nothing.
        if not log.is_enabled_for(logging.INFO):
            return self._generate(request)
        with request_scope(accept_request_id(request.request_id)):
            started = time.perf_counter()
            answer = self._generate(request)
            log.info(
                "generate",
                node=self.name,
                status=answer.status,
                prompts=len(request.prompts),
                ms=round((time.perf_counter() - started) * 1000, 1),
            )
            return answer

    def _generate(self, request: GenerateRequest) -> GenerateResponse:
        runtime = self.runtime
        if runtime is None:
            return GenerateResponse(
                status="no_model", node=self.name, message="no model artifact yet"
            )
        with self._lock:
            if self._in_flight >= self.config.capacity:
                return GenerateResponse(
                    status="busy", node=self.name, message=f"{self._in_flight} requests in flight"
                )
            self._in_flight += 1
        started = time.perf_counter()
        try:
            generations = runtime.generate(
                request.prompts,
                max_new_tokens=request.max_new_tokens,
                temperature=request.temperature,
                top_logprobs=request.top_logprobs,
                stop=request.stop,
            )
        except TrifectaError as exc:
            return GenerateResponse(status="invalid", node=self.name, message=exc.one_line())
        finally:
            with self._lock:
                self._in_flight -= 1
        with self._lock:
            self._served += len(request.prompts)
        return GenerateResponse(
            status="ok",
            node=self.name,
            generations=[GenerationOut.of(g) for g in generations],
            seconds=time.perf_counter() - started,
        )

    def mcp_server(self) -> MCPServer:
        server: MCPServer = MCPServer(f"trifecta-edge-node-{self.name}", log_level="WARNING")
        node = self

        @server.tool(description="Run the node's edge model on a batch of prompts.")
        async def generate(
            prompts: Prompts,
            max_new_tokens: NewTokens = 8,
            temperature: Temperature = 0.0,
            top_logprobs: TopLogprobs = 0,
            stop: Stops = Field(default_factory=list),
            request_id: RequestId = None,
        ) -> GenerateResponse:
            request = GenerateRequest.model_construct(  # checked by the tool's own schema
                prompts=prompts,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_logprobs=top_logprobs,
                stop=stop,
                request_id=request_id,
            )
            return await anyio.to_thread.run_sync(node.serve_generate, request)

        @server.tool(
            description="Identity, environment, load, active model and artifact inventory."
        )
        def status() -> NodeStatus:
            return node.status()

        @server.tool(description="Receive an artifact, checked against its SHA-256.")
        async def put_artifact(
            kind: ArtifactKind,
            name: str = Field(pattern=NAME),
            sha256: str = Field(pattern=r"^[0-9a-f]{64}$"),
            data_base64: str = Field(max_length=MAX_ARTIFACT_BYTES * 4 // 3 + 4),
            activate: bool = True,
        ) -> PutArtifactResponse:
            data = base64.b64decode(data_base64, validate=True)
            return await anyio.to_thread.run_sync(
                lambda: node.put_artifact(kind, name, sha256, data, activate)
            )

        return server


def serve_node(node: EdgeNode, host: str, port: int, *, credential: str | None = None) -> None:
    """Serve a node's MCP endpoint over streamable HTTP until interrupted (blocking); with a
    federation credential, only peers presenting it are answered (`edge.mesh_auth`)."""
    import uvicorn
    from starlette.types import ASGIApp

    from trifecta.edge.mesh_auth import PeersOnly

    app: ASGIApp = node.mcp_server().streamable_http_app(
        json_response=True, host=host, max_request_body_size=MAX_ARTIFACT_BYTES * 2
    )
    if credential is not None:
        app = PeersOnly(app, credential)
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    )
    log.info(
        "edge node serving", node=node.name, url=f"http://{host}:{port}/mcp", kinds=ARTIFACT_KINDS
    )
    server.run()
