"""A persistent MCP session from the mesh to one edge node.

The official `mcp.Client` ties a session's transport to the task that opened it: when the
node dies, the transport's task group fails and cancels that task. So each link opens its
session in a supervisor task of its own and keeps it open; calls from other tasks use the
session, and a failed or timed-out call (or a failure of the session itself) closes it. The
supervisor then reconnects after `retry_s`. Callers only ever see `NodeDown`. A node reached
over HTTP gets the federation credential with every request (`edge.mesh_auth`).
"""

from __future__ import annotations

import math
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import anyio
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.shared._httpx_utils import create_mcp_http_client
from pydantic import BaseModel, ValidationError

from trifecta.core.logging import get_logger
from trifecta.edge.mesh_auth import peer_headers

log = get_logger("trifecta.edge.link")
ModelT = TypeVar("ModelT", bound=BaseModel)


class NodeDown(Exception):
    """The node did not answer (connection refused or lost, timeout, protocol error)."""


class NodeLink:
    def __init__(
        self,
        target: str | MCPServer,
        *,
        retry_s: float = 0.5,
        connect_timeout_s: float = 5.0,
        credential: str | None = None,
    ):
        self.target = target
        self.credential = credential
        self.retry_s = retry_s
        self.connect_timeout_s = connect_timeout_s
        self._client: Client | None = None
        self._lost = anyio.Event()
        self._stopping = False

    @property
    def address(self) -> str:
        return self.target if isinstance(self.target, str) else f"in-process:{self.target.name}"

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def supervise(self) -> None:
        """Keep a session open until `close`; run as a task of the mesh's event loop."""
        while not self._stopping:
            try:
                async with AsyncExitStack() as stack:
                    target: Any = self.target
                    if isinstance(target, str):  # over HTTP: a client that carries the credential
                        http = create_mcp_http_client(headers=peer_headers(self.credential))
                        await stack.enter_async_context(http)
                        target = streamable_http_client(target, http_client=http)
                    # The read timeout bounds the handshake; each call passes its own.
                    client = await stack.enter_async_context(
                        Client(target, read_timeout_seconds=self.connect_timeout_s)
                    )
                    self._lost = anyio.Event()
                    self._client = client
                    try:
                        await self._lost.wait()
                    finally:
                        self._client = None
            except Exception as exc:  # the node is down or the session broke: retry below
                log.debug("link down", node=self.address, error=repr(exc)[:300])
            if not self._stopping:
                await anyio.sleep(self.retry_s)

    def drop(self) -> None:
        """Close the session (after a failed call); the supervisor reconnects."""
        self._lost.set()

    def close(self) -> None:
        self._stopping = True
        self._lost.set()

    async def call(
        self, tool: str, arguments: dict[str, Any], result: type[ModelT], timeout_s: float
    ) -> ModelT:
        client, lost = self._client, self._lost
        if client is None:
            raise NodeDown(f"{self.address}: not connected")
        answers: list[Any] = []

        async def ask(scope: anyio.CancelScope) -> None:
            answers.append(await client.call_tool(tool, arguments, read_timeout_seconds=timeout_s))
            scope.cancel()

        async def watch(scope: anyio.CancelScope) -> None:
            await lost.wait()  # the session died: stop waiting for an answer that cannot come
            scope.cancel()

        try:
            with anyio.fail_after(timeout_s if math.isfinite(timeout_s) else None):
                async with anyio.create_task_group() as group:
                    group.start_soon(ask, group.cancel_scope)
                    group.start_soon(watch, group.cancel_scope)
        except Exception as exc:
            self.drop()
            raise NodeDown(f"{self.address}: {tool} failed ({type(exc).__name__})") from exc
        if not answers:
            raise NodeDown(f"{self.address}: connection lost during {tool}")
        answer = answers[0]
        if answer.is_error:
            text = " ".join(getattr(block, "text", "") for block in answer.content)
            raise NodeDown(f"{self.address}: {tool} refused: {text[:200]}")
        try:
            return result.model_validate(answer.structured_content)
        except ValidationError as exc:
            raise NodeDown(f"{self.address}: {tool} answered an unexpected shape") from exc
