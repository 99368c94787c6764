"""Delegating a capsule task to a peer environment with the SDK's `ClientFactory`.

The sender applies the placement rule before anything leaves this process: a peer whose
environment (read from its agent card) does not admit the capsule gets no request, and the
caller gets a `SovereigntyViolation` (the receiver refuses it again if asked). The capsule
travels as the A2A tenant of every request, so the peer scopes tasks to it, and every request
carries the federation credential (the topology's, or the one `trifecta up` made) as a bearer
token, which the peer's endpoint requires.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from types import TracebackType

import httpx
from a2a.client import ClientConfig, ClientFactory
from a2a.client.client import Client, ClientCallContext
from a2a.client.errors import A2AClientError
from a2a.helpers.proto_helpers import get_data_parts, get_message_text, new_data_part
from a2a.types.a2a_pb2 import (
    AgentCard,
    CancelTaskRequest,
    GetTaskRequest,
    Message,
    Role,
    SendMessageRequest,
    StreamResponse,
    Task,
    TaskState,
)
from a2a.utils.errors import A2AError, TaskNotCancelableError, TaskNotFoundError
from pydantic import ValidationError

from trifecta.core.errors import Conflict, NotFound, SovereigntyViolation, Unavailable
from trifecta.core.logging import forward_request_id
from trifecta.federation.a2a.cards import card_environment
from trifecta.federation.a2a.models import (
    CapsuleLookup,
    CapsuleTask,
    CapsuleTaskOutcome,
    DelegatedTask,
)
from trifecta.federation.a2a.models import TaskState as State
from trifecta.federation.a2a.server import OUTCOME_ARTIFACT

_STATES: dict[int, State] = {
    TaskState.TASK_STATE_SUBMITTED: "submitted",
    TaskState.TASK_STATE_WORKING: "working",
    TaskState.TASK_STATE_COMPLETED: "completed",
    TaskState.TASK_STATE_FAILED: "failed",
    TaskState.TASK_STATE_CANCELED: "canceled",
    TaskState.TASK_STATE_REJECTED: "rejected",
}


def _outcome(task: Task) -> CapsuleTaskOutcome | None:
    for artifact in task.artifacts:
        if artifact.name == OUTCOME_ARTIFACT:
            data = get_data_parts(list(artifact.parts))
            try:
                return CapsuleTaskOutcome.model_validate(data[0]) if data else None
            except ValidationError:
                return None
    return None


def delegated(peer: str, capsule_id: str, task: Task) -> DelegatedTask:
    return DelegatedTask(
        peer=peer,
        capsule_id=capsule_id,
        task_id=task.id,
        context_id=task.context_id,
        state=_STATES.get(task.status.state, "unknown"),
        outcome=_outcome(task),
        message=get_message_text(task.status.message) if task.status.HasField("message") else "",
    )


class Delegator:
    """Sends capsule tasks to peers' A2A endpoints; one per process (shares an HTTP pool)."""

    def __init__(
        self,
        lookup: CapsuleLookup,
        *,
        timeout_s: float = 60.0,
        http: httpx.AsyncClient | None = None,
        credential: str | None = None,
    ):
        self.lookup = lookup
        # Per call rather than on the client: a shared httpx client may also fetch public cards.
        headers = {"Authorization": f"Bearer {credential}"} if credential else None
        self._context = ClientCallContext(service_parameters=headers)
        self._owned = http is None
        self.http = http or httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=5.0))
        # A delegated task is logged by the peer under the id of the request that delegated it.
        if forward_request_id not in self.http.event_hooks["request"]:
            self.http.event_hooks["request"].append(forward_request_id)

    async def __aenter__(self) -> Delegator:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owned:
            await self.http.aclose()

    def check(self, card: AgentCard, capsule_id: str) -> str:
        """The sender's half of the rule: refuse a peer that does not admit the capsule.
        Returns the peer environment's name."""
        environment = card_environment(card)
        capsule = self.lookup(capsule_id)
        if not environment.admits(capsule):
            raise SovereigntyViolation(
                f"capsule {capsule.id!r} may not be delegated to environment "
                f"{environment.name!r} ({environment.kind}, "
                f"{environment.jurisdiction or 'no jurisdiction'})",
                field="peer",
            )
        return environment.name

    def _client(self, card: AgentCard, *, streaming: bool = False, polling: bool = False) -> Client:
        config = ClientConfig(streaming=streaming, polling=polling, httpx_client=self.http)
        return ClientFactory(config).create(card)

    @staticmethod
    def _request(capsule_id: str, task: CapsuleTask) -> SendMessageRequest:
        message = Message(
            role=Role.ROLE_USER,
            parts=[new_data_part(task.model_dump(mode="json", exclude_none=True))],
            message_id=task.request_id or uuid.uuid4().hex,
        )
        return SendMessageRequest(tenant=capsule_id, message=message)

    async def send(
        self, card: AgentCard, capsule_id: str, task: CapsuleTask, *, wait: bool = True
    ) -> DelegatedTask:
        """Delegate `task`; with `wait`, return when the peer has finished it, else as soon as
        the peer has accepted it (poll with `get`)."""
        peer = self.check(card, capsule_id)
        last: DelegatedTask | None = None
        async for update in self._events(card, peer, capsule_id, task, polling=not wait):
            last = update
        if last is None:
            raise Unavailable(f"peer {peer!r} answered nothing", field="peer")
        return last

    async def stream(
        self, card: AgentCard, capsule_id: str, task: CapsuleTask
    ) -> AsyncIterator[DelegatedTask]:
        """Delegate `task` over SSE, yielding the task at each state the peer reports."""
        peer = self.check(card, capsule_id)
        async for update in self._events(card, peer, capsule_id, task, streaming=True):
            yield update

    async def _events(
        self,
        card: AgentCard,
        peer: str,
        capsule_id: str,
        task: CapsuleTask,
        *,
        streaming: bool = False,
        polling: bool = False,
    ) -> AsyncIterator[DelegatedTask]:
        client = self._client(card, streaming=streaming, polling=polling)
        current = Task()
        try:
            request = self._request(capsule_id, task)
            async for event in client.send_message(request, context=self._context):
                if _apply(current, event):
                    yield delegated(peer, capsule_id, current)
        except (A2AError, A2AClientError, httpx.HTTPError) as exc:
            raise _failure(peer, exc) from exc

    async def get(self, card: AgentCard, capsule_id: str, task_id: str) -> DelegatedTask:
        peer = self.check(card, capsule_id)
        try:
            task = await self._client(card).get_task(
                GetTaskRequest(tenant=capsule_id, id=task_id), context=self._context
            )
        except (A2AError, A2AClientError, httpx.HTTPError) as exc:
            raise _failure(peer, exc, task_id=task_id) from exc
        return delegated(peer, capsule_id, task)

    async def cancel(self, card: AgentCard, capsule_id: str, task_id: str) -> DelegatedTask:
        peer = self.check(card, capsule_id)
        try:
            task = await self._client(card).cancel_task(
                CancelTaskRequest(tenant=capsule_id, id=task_id), context=self._context
            )
        except (A2AError, A2AClientError, httpx.HTTPError) as exc:
            raise _failure(peer, exc, task_id=task_id) from exc
        return delegated(peer, capsule_id, task)


def _apply(current: Task, event: StreamResponse) -> bool:
    """Fold one streamed event into `current`; False for events that carry no task state."""
    if event.HasField("task"):
        current.CopyFrom(event.task)
    elif event.HasField("status_update"):
        update = event.status_update
        current.id, current.context_id = update.task_id, update.context_id
        current.status.CopyFrom(update.status)
    elif event.HasField("artifact_update"):
        update = event.artifact_update
        current.id, current.context_id = update.task_id, update.context_id
        current.artifacts.append(update.artifact)
    else:
        return False
    return True


def _failure(peer: str, exc: Exception, *, task_id: str | None = None) -> Exception:
    if isinstance(exc, TaskNotFoundError):
        return NotFound(f"peer {peer!r} has no task {task_id!r} of this capsule", field="task_id")
    if isinstance(exc, TaskNotCancelableError):
        return Conflict(f"task {task_id!r} on peer {peer!r} is already finished", field="task_id")
    return Unavailable(f"peer {peer!r} did not answer: {type(exc).__name__}: {exc}", field="peer")
