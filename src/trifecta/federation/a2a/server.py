"""The A2A face of an environment: its agent card and a JSON-RPC endpoint where peers
delegate capsule tasks (send, get, cancel, streaming), built on the SDK's request handler.

The capsule travels as the A2A tenant (`SendMessageRequest.tenant`, protocol 1.0), and the
task store is scoped by tenant, so one capsule never reads or cancels another's task. With a
federation credential configured, the JSON-RPC endpoint answers only a peer that presents it
(`Authorization: Bearer`, the same check as the typed hops, `http_server.peer_auth`): anyone
else gets 401 before the SDK parses the request. The agent card stays public: it is how a peer
finds the endpoint and the environment's place before any credential is used (A2A's
well-known discovery), and it holds no prices and nothing a tenant sent or learned. The
manifests of the capsules an environment homes (names, domains, jurisdictions) are in the card
only for a peer presenting the credential; anyone else reads the card without them. The
receiving side checks the placement rule itself: a task whose capsule this environment does
not admit (`Environment.admits`) is rejected (A2A state `rejected`) before the handler runs,
whatever the sender decided.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio
from a2a.helpers.proto_helpers import get_data_parts, new_data_part, new_task, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.context import ServerCallContext
from a2a.server.events.event_queue_v2 import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import (
    add_a2a_routes_to_fastapi,
    create_agent_card_routes,
    create_jsonrpc_routes,
)
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types.a2a_pb2 import AgentCard, TaskState
from fastapi import FastAPI
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from trifecta.core.errors import InvalidInput, SovereigntyViolation, TrifectaError, Unauthenticated
from trifecta.core.http import error_response
from trifecta.core.logging import get_logger
from trifecta.federation.a2a.cards import RPC_PATH, card_environment, without_manifests
from trifecta.federation.a2a.models import CapsuleLookup, CapsuleTask, CapsuleTaskHandler
from trifecta.federation.http_server import peer_auth
from trifecta.fleet.topology import Environment

log = get_logger("trifecta.federation.a2a")
OUTCOME_ARTIFACT = "outcome"


def task_of(context: RequestContext) -> CapsuleTask:
    """The capsule task in a message: a JSON data part (`CapsuleTask`), else its text as the
    prompt."""
    message = context.message
    data = get_data_parts(list(message.parts)) if message is not None else []
    try:
        if data:
            if not isinstance(data[0], dict):
                raise InvalidInput("the data part must be a JSON object", field="task")
            return CapsuleTask.model_validate(data[0])
        return CapsuleTask(prompt=context.get_user_input())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "task"
        raise InvalidInput(str(first["msg"]), field=f"task.{where}") from None


class CapsuleTaskExecutor(AgentExecutor):
    """Runs a delegated capsule task through `handler` in a worker thread."""

    def __init__(
        self, environment: Environment, handler: CapsuleTaskHandler, lookup: CapsuleLookup
    ):
        self.environment = environment
        self.handler = handler
        self.lookup = lookup

    def admit(self, context: RequestContext) -> tuple[str, CapsuleTask]:
        capsule_id = context.tenant
        if not capsule_id:
            raise InvalidInput("a capsule task names its capsule as the A2A tenant", field="tenant")
        capsule = self.lookup(capsule_id)
        if not self.environment.admits(capsule):
            raise SovereigntyViolation(
                f"environment {self.environment.name!r} ({self.environment.kind}, "
                f"{self.environment.jurisdiction or 'no jurisdiction'}) does not admit capsule "
                f"{capsule.id!r}",
                field="tenant",
            )
        return capsule_id, task_of(context)

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        task_id, context_id = context.task_id or "", context.context_id or ""
        if context.current_task is None:  # the protocol wants the Task before its updates
            first = new_task(task_id, context_id, TaskState.TASK_STATE_SUBMITTED)
            if context.message is not None:
                first.history.append(context.message)
            await event_queue.enqueue_event(first)
        updater = TaskUpdater(event_queue, task_id, context_id)
        try:
            capsule_id, task = self.admit(context)
        except TrifectaError as exc:
            log.warning(
                "a2a task refused", environment=self.environment.name, reason=exc.one_line()
            )
            await updater.reject(updater.new_agent_message([new_text_part(exc.one_line())]))
            return
        await updater.start_work()
        try:
            # Cancellation abandons the worker thread: the loop's request finishes on its own
            # and its result is dropped; the task is already `canceled` for the peer.
            outcome = await anyio.to_thread.run_sync(
                self.handler, capsule_id, task, abandon_on_cancel=True
            )
        except TrifectaError as exc:
            await updater.failed(updater.new_agent_message([new_text_part(exc.one_line())]))
            return
        await updater.add_artifact(
            [new_data_part(outcome.model_dump(mode="json"))], name=OUTCOME_ARTIFACT, last_chunk=True
        )
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        updater = TaskUpdater(event_queue, context.task_id or "", context.context_id or "")
        await updater.cancel()


def _tenant_scope(context: ServerCallContext) -> str:
    return context.tenant


@dataclass
class A2AService:
    """The routes to mount and the request handler behind them (close it on shutdown)."""

    card: AgentCard
    routes: list[BaseRoute]
    card_routes: list[BaseRoute]
    rpc_routes: list[BaseRoute]
    request_handler: DefaultRequestHandler

    async def aclose(self) -> None:
        await self.request_handler.aclose()


Endpoint = Callable[[Request], Awaitable[Response]]


def _peers_only(endpoint: Endpoint, credential: str) -> Endpoint:
    check = peer_auth(credential)

    async def guarded(request: Request) -> Response:
        try:
            check(request.headers.get("authorization"))
        except Unauthenticated as exc:
            return error_response(exc)
        return await endpoint(request)

    return guarded


def peers_only(routes: Sequence[BaseRoute], credential: str | None) -> list[BaseRoute]:
    """The routes with the federation credential required in front of each (unchanged when
    no credential is configured: a single-machine setup without `trifecta up`)."""
    if credential is None:
        return list(routes)
    return [
        Route(r.path, _peers_only(r.endpoint, credential), methods=r.methods, name=r.name)
        if isinstance(r, Route)
        else r
        for r in routes
    ]


def card_routes_for(card: AgentCard, credential: str | None) -> list[BaseRoute]:
    """The card route: the whole card for a peer presenting `credential`, the card without
    capsule manifests for anyone else (the whole card for all when no credential is set)."""
    if credential is None:
        return list(create_agent_card_routes(card))
    (public,) = create_agent_card_routes(without_manifests(card))
    (whole,) = create_agent_card_routes(card)
    assert isinstance(public, Route) and isinstance(whole, Route)
    check = peer_auth(credential)
    public_card, whole_card = public.endpoint, whole.endpoint

    async def card_for(request: Request) -> Response:
        try:
            check(request.headers.get("authorization"))
        except Unauthenticated:
            return await public_card(request)
        return await whole_card(request)

    return [Route(public.path, card_for, methods=["GET"], name=public.name)]


def build_a2a_service(
    card: AgentCard,
    handler: CapsuleTaskHandler,
    lookup: CapsuleLookup,
    *,
    credential: str | None = None,
) -> A2AService:
    """The agent-card route (`/.well-known/agent-card.json`, public) and the JSON-RPC route
    (`RPC_PATH`, peers presenting `credential` only) of the environment the card describes."""
    executor = CapsuleTaskExecutor(card_environment(card), handler, lookup)
    request_handler = DefaultRequestHandler(
        agent_executor=executor,
        task_store=InMemoryTaskStore(owner_resolver=_tenant_scope),
        agent_card=card,
    )
    card_routes = card_routes_for(card, credential)
    rpc_routes = peers_only(create_jsonrpc_routes(request_handler, rpc_url=RPC_PATH), credential)
    return A2AService(
        card=card,
        routes=[*card_routes, *rpc_routes],
        card_routes=card_routes,
        rpc_routes=rpc_routes,
        request_handler=request_handler,
    )


def add_a2a_routes(
    app: FastAPI,
    card: AgentCard,
    handler: CapsuleTaskHandler,
    lookup: CapsuleLookup,
    *,
    credential: str | None = None,
) -> A2AService:
    """Mount an environment's A2A routes on a FastAPI app (listed in its OpenAPI)."""
    service = build_a2a_service(card, handler, lookup, credential=credential)
    add_a2a_routes_to_fastapi(
        app, agent_card_routes=service.card_routes, jsonrpc_routes=service.rpc_routes
    )
    return service
