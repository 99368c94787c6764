"""The edge mesh: nodes tracked by heartbeat, artifacts synced by content hash, requests
offloaded to a healthy node with fallback.

`EdgeMesh` runs its own event loop in a background thread (an anyio blocking portal), so it
is usable from plain Python, from the CLI (`trifecta edge mesh`) and inside a service. Nodes
are MCP endpoints: other processes or hosts (`add_node("http://host:port/mcp")`, each request
carrying the federation credential the nodes require) or in-process `EdgeNode`s
(`add_node(node)`), whose artifacts are sent through the same MCP tools; an in-process
node's `status` and `generate` are called directly (see Offload).

- Heartbeat: every `heartbeat_s` the mesh calls each node's `status`. A node that answers is
  healthy; one that does not is unhealthy at once and is skipped until it answers again.
- Sync: the mesh keeps the current artifacts in its own content-addressed store. When a
  node's inventory lacks one of them (it joined, rejoined after a failure, or something new
  was published) the mesh sends exactly the missing blobs, nothing else.
- Offload: `offload(capsule, prompts)` applies the policy of `offload.decide`, then tries the
  eligible nodes least-loaded first; a node that fails mid-request is marked down and the next
  one is tried. When none serves the request, the result says so and the caller falls back.
  It runs on the caller's thread: an in-process node's `serve_generate` is called there (the
  `generate` tool's own checks and work, without the MCP session's encoding, schema checks
  and two thread hand-offs, which cost more CPU than the edge model's forward), and only a
  remote node's call goes through the mesh's event loop.
- Slots: the mesh counts each node's requests in flight against the capacity its status
  gives, and takes a slot atomically before it calls the node. When every node a request may
  use is full, the request waits for one to free, up to `slot_wait_s` (`[edge] slot_wait_ms`),
  instead of going to the cloud tier at once: a freed slot is handed to the oldest waiter that
  may use that node (first come, first served; no polling). At most `slot_queue` requests a
  slot may wait; one more is refused at once, so a saturated mesh still answers fast. A
  request only ever waits for the nodes the policy allowed it (`OffloadDecision.full`).
- Request ids: an offload made while a request is served (`core.logging.current_request_id`)
  sends that id in the `generate` call, so the node logs the request under the front door's
  id. It goes as a tool argument because the link's MCP session sends its HTTP requests from
  its own task, outside the caller's context.
"""

from __future__ import annotations

import base64
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal
from pydantic import ValidationError

from trifecta.core.errors import InvalidInput, NotFound
from trifecta.core.logging import WELL_FORMED_ID, current_request_id, get_logger
from trifecta.core.protocols import Generation, TokenAlternative
from trifecta.core.settings import get_settings
from trifecta.edge.artifact import EdgeArtifact
from trifecta.edge.link import NodeDown, NodeLink
from trifecta.edge.node import (
    EdgeNode,
    GenerateRequest,
    GenerateResponse,
    NodeStatus,
    PutArtifactResponse,
)
from trifecta.edge.offload import NodeView, OffloadDecision, OffloadResult, decide
from trifecta.edge.settings import EdgeSettings
from trifecta.edge.store import ArtifactKind, ArtifactRef, ArtifactStore
from trifecta.fleet.capsules import Capsule

log = get_logger("trifecta.edge.mesh")
# A node answers `busy` at capacity; a request that found every node busy (say, while a killed
# node's load moves to the others) waits 20, 40, 80 ms between passes before it fails.
BUSY_ROUNDS = 4
BUSY_WAIT_S = 0.02


@dataclass
class NodeState:
    key: str
    link: NodeLink
    local: EdgeNode | None = None  # an in-process node: `generate` is called on it directly
    status: NodeStatus | None = None
    healthy: bool = False
    last_seen: float = 0.0
    failures: int = 0
    joins: int = 0
    in_flight: int = 0  # requests this mesh has sent and not yet seen answered
    synced: list[ArtifactRef] = field(default_factory=list)
    bytes_synced: int = 0
    removed: bool = False


@dataclass(eq=False)
class _Waiter:
    """A request waiting for a slot on one of `keys` (its allowed, healthy, full nodes)."""

    keys: frozenset[str]
    event: threading.Event = field(default_factory=threading.Event)
    granted: NodeState | None = None  # the node whose slot was handed over


@dataclass(frozen=True)
class SyncReport:
    node: str
    sent: tuple[ArtifactRef, ...]
    bytes: int


class EdgeMesh:
    def __init__(
        self,
        store_dir: Path | None = None,
        *,
        heartbeat_s: float = 0.5,
        status_timeout_s: float = 5.0,
        request_timeout_s: float = 60.0,
        transfer_timeout_s: float = 60.0,
        max_attempts: int = 3,
        credential: str | None = None,
        slot_wait_s: float | None = None,
        slot_queue: float | None = None,
    ):
        self.store = ArtifactStore(store_dir or get_settings().artifacts_dir("edge", "mesh"))
        self.credential = credential  # presented to nodes over HTTP (`edge.mesh_auth`)
        self.heartbeat_s = heartbeat_s
        self.status_timeout_s = status_timeout_s
        self.request_timeout_s = request_timeout_s
        self.transfer_timeout_s = transfer_timeout_s
        self.max_attempts = max_attempts
        if slot_wait_s is None or slot_queue is None:
            settings = EdgeSettings()
            slot_wait_s = settings.slot_wait_ms / 1000 if slot_wait_s is None else slot_wait_s
            slot_queue = settings.slot_queue if slot_queue is None else slot_queue
        self.slot_wait_s, self.slot_queue = slot_wait_s, slot_queue
        if not (math.isfinite(self.slot_wait_s) and self.slot_wait_s >= 0):
            raise InvalidInput(f"not a wait: {self.slot_wait_s!r}", field="slot_wait_s")
        if not (math.isfinite(self.slot_queue) and self.slot_queue >= 0):
            raise InvalidInput(f"not a queue bound: {self.slot_queue!r}", field="slot_queue")
        self._nodes: dict[str, NodeState] = {}
        self._counter = itertools.count()
        # `in_flight` counts and the waiters change on the callers' threads, under this lock
        self._flight = threading.Lock()
        self._waiters: deque[_Waiter] = deque()
        self._stack: ExitStack | None = None
        self._portal: BlockingPortal | None = None
        self._local: list[EdgeNode] = []
        self._accuracy: dict[str, dict[int, float]] = {}

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> EdgeMesh:
        if self._portal is None:
            self._stack = ExitStack()
            self._portal = self._stack.enter_context(start_blocking_portal())
        return self

    def stop(self) -> None:
        if self._portal is not None and self._stack is not None:
            for state in self._nodes.values():
                state.link.close()
            self._portal.call(self._portal.stop, True)
            self._stack.close()
            self._portal = self._stack = None

    def __enter__(self) -> EdgeMesh:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def portal(self) -> BlockingPortal:
        if self._portal is None:
            raise InvalidInput(
                "the mesh is not started (call start() or use it as a context manager)",
                field="mesh",
            )
        return self._portal

    # -- membership ---------------------------------------------------------------------

    def add_node(self, target: str | EdgeNode) -> str:
        """Track a node: an MCP URL (`http://127.0.0.1:8701/mcp`) or an in-process `EdgeNode`."""
        local = target if isinstance(target, EdgeNode) else None
        if local is not None:
            key, link = local.name, NodeLink(local.mcp_server())
        else:
            assert isinstance(target, str)
            if not target.startswith(("http://", "https://")):
                raise InvalidInput(f"not an MCP URL: {target!r}", field="node")
            key, link = target, NodeLink(target, credential=self.credential)
        if key in self._nodes:
            raise InvalidInput(f"node {key!r} is already in the mesh", field="node")
        if local is not None:
            self._local.append(local)
        state = NodeState(key, link, local)
        self._nodes[key] = state
        self.portal.start_task_soon(link.supervise)
        self.portal.start_task_soon(self._heartbeat_loop, state)
        return key

    def remove_node(self, key: str) -> None:
        state = self._nodes.pop(key, None)
        if state is None:
            raise NotFound(f"no node {key!r}", field="node", allowed=list(self._nodes))
        state.removed = True
        state.link.close()

    def node_states(self) -> list[NodeState]:
        return list(self._nodes.values())

    def wait_until(self, predicate: Any, timeout_s: float = 60.0, poll_s: float = 0.1) -> bool:
        """Block until `predicate(mesh)` holds (True) or the timeout passes (False)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(poll_s)
        return bool(predicate(self))

    def healthy_count(self) -> int:
        return sum(1 for s in self._nodes.values() if s.healthy)

    def in_sync(self, state: NodeState) -> bool:
        have = {r.sha256 for r in state.status.inventory} if state.status else set()
        return state.healthy and all(r.sha256 in have for r in self.store.inventory())

    # -- artifacts ----------------------------------------------------------------------

    def publish(self, kind: ArtifactKind, name: str, data: bytes) -> ArtifactRef:
        """Make an artifact current in the mesh; the heartbeat delivers it to every node."""
        ref = self.store.put(kind, name, data)
        log.info("artifact published", kind=kind, name=name, sha256=ref.sha256[:12], size=ref.size)
        return ref

    def publish_file(self, kind: ArtifactKind, path: Path, name: str | None = None) -> ArtifactRef:
        if not path.is_file():
            raise NotFound(f"no file {path}", field="path")
        # A model is read (and its payload hash checked) before any node gets it: a corrupt
        # file is refused here with one clear error instead of being synced to the mesh.
        accuracy = EdgeArtifact.load(path).accuracy if kind == "model" else None
        ref = self.publish(kind, name or path.stem, path.read_bytes())
        if accuracy is not None:
            self._accuracy[ref.sha256] = accuracy
        return ref

    def current_model(self) -> ArtifactRef | None:
        return self.store.current("model")

    def model_accuracy(self) -> dict[int, float]:
        """The current model's held-out accuracy per grade, as its artifact records it."""
        model = self.current_model()
        if model is None:
            return {}
        if model.sha256 not in self._accuracy:
            self._accuracy[model.sha256] = EdgeArtifact.load(self.store.path(model.sha256)).accuracy
        return self._accuracy[model.sha256]

    async def _sync(self, state: NodeState) -> SyncReport:
        """Send a node exactly the current artifacts its inventory lacks."""
        have = {r.sha256 for r in state.status.inventory} if state.status else set()
        missing = [r for r in self.store.inventory() if r.sha256 not in have]
        # Models last, so the node activates the model only once the rest is in place.
        missing.sort(key=lambda r: r.kind == "model")
        sent: list[ArtifactRef] = []
        for ref in missing:
            data = self.store.read(ref.sha256)
            answer = await state.link.call(
                "put_artifact",
                {
                    "kind": ref.kind,
                    "name": ref.name,
                    "sha256": ref.sha256,
                    "data_base64": base64.b64encode(data).decode(),
                    "activate": True,
                },
                PutArtifactResponse,
                self.transfer_timeout_s,
            )
            if answer.status != "stored":
                log.warning(
                    "node refused artifact", node=state.key, name=ref.name, reason=answer.message
                )
                continue
            sent.append(ref)
            state.bytes_synced += ref.size
        state.synced.extend(sent)
        if sent:
            log.info(
                "node synced", node=state.key, artifacts=len(sent), bytes=sum(r.size for r in sent)
            )
        return SyncReport(state.key, tuple(sent), sum(r.size for r in sent))

    # -- heartbeat ----------------------------------------------------------------------

    async def _heartbeat_loop(self, state: NodeState) -> None:
        """One loop per node, so a slow or dead node never delays the others' heartbeats."""
        while not state.removed:
            try:
                await self._beat(state)
            except Exception as exc:  # a bug or a malformed answer must not end the heartbeat
                state.healthy = False
                log.error("heartbeat error", node=state.key, error=repr(exc)[:200])
            await anyio.sleep(self.heartbeat_s)

    async def _status(self, state: NodeState) -> NodeStatus:
        """The node's `status`: read directly from an in-process node (the tool's own answer,
        without an MCP round trip every beat), else over its link."""
        if state.local is not None:
            return state.local.status()
        return await state.link.call("status", {}, NodeStatus, self.status_timeout_s)

    async def _beat(self, state: NodeState) -> None:
        try:
            status = await self._status(state)
        except NodeDown as exc:
            if state.healthy:
                log.warning("node down", node=state.key, reason=str(exc))
            state.healthy = False
            state.failures += 1
            return
        if not state.healthy:
            state.joins += 1
            log.info(
                "node joined" if state.joins == 1 else "node rejoined",
                node=state.key,
                name=status.node,
            )
        state.status, state.last_seen = status, time.time()
        state.healthy = True
        if not self.in_sync(state):
            try:
                await self._sync(state)
                state.status = await self._status(state)
            except NodeDown as exc:
                state.healthy = False
                log.warning("sync failed", node=state.key, reason=str(exc))

    # -- offload ------------------------------------------------------------------------

    def views(self) -> list[NodeView]:
        """A snapshot of the nodes for the policy, rotated on each call so that equally loaded
        nodes take turns (the policy's sort by load is stable)."""
        model = self.current_model()
        views = []
        states = list(self._nodes.values())
        shift = next(self._counter) % len(states) if states else 0
        for state in states[shift:] + states[:shift]:
            if state.status is None:
                continue
            current = model is None or state.status.model_sha256 == model.sha256
            views.append(
                NodeView(
                    key=state.key,
                    environment=state.status.environment,
                    healthy=state.healthy,
                    serves_current_model=current and state.status.model_sha256 is not None,
                    in_flight=state.in_flight,
                    capacity=state.status.capacity,
                )
            )
        return views

    def should_offload(
        self, capsule: Capsule | None, prompt: str | Sequence[str]
    ) -> OffloadDecision:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        return decide(capsule, prompts, self.views(), self.model_accuracy())

    def offload(
        self, capsule: Capsule | None, prompts: Sequence[str], **options: Any
    ) -> OffloadResult:
        """Serve `prompts` on the edge if the policy allows; never raises for node failures.
        `options` are the `generate` tool's (`GenerateRequest`): one it refuses is answered
        `invalid_request`, naming the field, without a node being asked. When every node the
        request may use is full, it waits up to `slot_wait_s` for a slot (module docstring)."""
        portal = self.portal  # a mesh not started has no heartbeat: refuse as before
        prompts = list(prompts)
        decision = decide(capsule, prompts, self.views(), self.model_accuracy())
        if not decision.offload and decision.reason != "no_capacity":
            return OffloadResult(False, decision.reason, decision.detail)
        request_id = current_request_id()
        if request_id is not None and WELL_FORMED_ID.match(request_id):
            options = {**options, "request_id": request_id}
        try:
            request = GenerateRequest(prompts=prompts, **options)
        except ValidationError as exc:
            return OffloadResult(False, "invalid_request", _first_error(exc))
        keys = decision.candidates or decision.full
        first = self._admit(keys, self.slot_wait_s)
        if isinstance(first, str):
            return OffloadResult(
                False, "no_capacity", f"all {len(keys)} nodes it may use are at capacity{first}"
            )
        order = [first.key, *(k for k in keys if k != first.key)][: self.max_attempts]
        reserved: NodeState | None = first
        attempts: list[str] = []
        for round_ in range(BUSY_ROUNDS):
            busy = False  # a node at capacity: worth another pass after a short wait
            for key in order:
                taken = reserved or self._admit((key,), 0.0)
                reserved = None
                state = taken if isinstance(taken, NodeState) else None
                if state is None:  # full (or gone, or down) since the policy looked
                    known = self._nodes.get(key)
                    if known is not None and known.healthy:
                        attempts.append(f"{key}: busy at the mesh's count")
                        busy = True
                    continue
                try:
                    answer = self._generate(portal, state, request)
                except NodeDown as exc:
                    state.healthy = False  # skip it until its heartbeat answers again
                    attempts.append(f"{key}: {exc}")
                    continue
                finally:
                    self._release(state)
                if answer.status == "ok":
                    return OffloadResult(
                        True,
                        "offloaded",
                        f"served by {answer.node}",
                        answer.node,
                        [_generation(g) for g in answer.generations],
                        attempts,
                    )
                attempts.append(f"{key}: {answer.status} {answer.message}")
                busy = busy or answer.status == "busy"
                if answer.status == "invalid":
                    return OffloadResult(
                        False, "rejected_by_node", answer.message, key, None, attempts
                    )
            if not busy or round_ == BUSY_ROUNDS - 1:
                break
            time.sleep(BUSY_WAIT_S * 2**round_)
        return OffloadResult(
            False, "nodes_failed", "; ".join(attempts) or "no node answered", None, None, attempts
        )

    def _admit(self, keys: Sequence[str], wait_s: float) -> NodeState | str:
        """A slot on the least loaded of `keys` that is healthy and below its capacity, taken
        (its `in_flight` counted); when all are full, the slot the first release among them
        hands over within `wait_s`. Else why not, as the end of a sentence: at once when the
        queue is full, after `wait_s` when no slot came."""
        with self._flight:
            state = self._free(keys)
            if state is not None:
                state.in_flight += 1
                return state
            if wait_s <= 0:
                return ""
            wanted = frozenset(keys)
            slots = sum(s.status.capacity for s in self._states(wanted) if s.status is not None)
            waiting = sum(1 for w in self._waiters if w.keys & wanted)
            if waiting >= self.slot_queue * slots:
                return f", and {waiting} requests already wait for their {slots} slots"
            waiter = _Waiter(wanted)
            self._waiters.append(waiter)
        waiter.event.wait(wait_s)
        with self._flight:
            if waiter.granted is not None:
                return waiter.granted
            self._waiters.remove(waiter)  # timed out: no release reached it
        return f"; none freed within {wait_s * 1000:g} ms"

    def _release(self, state: NodeState) -> None:
        """A request's slot on `state` is free: handed to the oldest waiter that may use the
        node (its count stays, as one request leaves and one enters), else given back."""
        with self._flight:
            capacity = state.status.capacity if state.status is not None else 0
            if state.healthy and not state.removed and state.in_flight <= capacity:
                for waiter in self._waiters:
                    if state.key in waiter.keys:
                        self._waiters.remove(waiter)
                        waiter.granted = state
                        waiter.event.set()
                        return
            state.in_flight -= 1

    def _states(self, keys: frozenset[str] | Sequence[str]) -> list[NodeState]:
        return [s for k in keys if (s := self._nodes.get(k)) is not None]

    def _free(self, keys: Sequence[str]) -> NodeState | None:
        """The least loaded of `keys` that is healthy and below its capacity (call with the
        lock held); ties go to the earlier key (the policy's order, which rotates)."""
        best: NodeState | None = None
        best_load = 1.0
        for state in self._states(keys):
            if not state.healthy or state.status is None or state.status.capacity <= 0:
                continue
            load = state.in_flight / state.status.capacity
            if load < best_load:
                best, best_load = state, load
        return best

    def _generate(
        self, portal: BlockingPortal, state: NodeState, request: GenerateRequest
    ) -> GenerateResponse:
        """One `generate` on one node: in process on this thread, else over its MCP link."""
        if state.local is None:
            arguments = request.model_dump(exclude_none=True)
            return portal.call(
                state.link.call, "generate", arguments, GenerateResponse, self.request_timeout_s
            )
        try:
            return state.local.serve_generate(request)
        except Exception as exc:  # a bug in the node: fail over as for a node that broke
            log.error("node failed", node=state.key, error=repr(exc)[:200])
            raise NodeDown(f"{state.key}: generate failed ({type(exc).__name__})") from exc


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "request"
    return f"{where}: {error['msg']}"


def _generation(out: Any) -> Generation:
    return Generation(
        text=out.text,
        tokens=out.tokens,
        logprobs=out.logprobs,
        entropies=out.entropies,
        finish_reason=out.finish_reason,
        model=out.model,
        prompt_tokens=out.prompt_tokens,
        top_logprobs=[[TokenAlternative(t, lp) for t, lp in step] for step in out.top_logprobs],
    )
