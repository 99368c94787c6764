"""The federation credential between the edge mesh and its nodes.

An edge node served over HTTP (`trifecta edge node`) answers only a peer that presents the
federation credential as a bearer token: a mesh pushing an artifact, asking for a generation
or a status. Anyone else gets 401 before the MCP session sees the request, so an artifact
from an unauthenticated peer is never stored and a request never reaches the runtime. The
credential is the one the federation hops use (`federation_credential` in the settings, which
`trifecta up` hands every process it starts); the check is `core.auth`'s, over one token.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from trifecta.core.auth import Principal, StaticKeys, principal_of
from trifecta.core.errors import Unauthenticated
from trifecta.core.http import error_response

PEER = Principal(key_id="federation-peer")


def peer_headers(credential: str | None) -> dict[str, str]:
    """What a mesh sends with every request to a node (nothing without a credential)."""
    return {"Authorization": f"Bearer {credential}"} if credential else {}


class PeersOnly:
    """ASGI middleware: every HTTP request must carry the federation credential, else 401."""

    def __init__(self, app: ASGIApp, credential: str):
        self.app = app
        self.keys = StaticKeys({credential: PEER})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            authorization = headers.get(b"authorization")
            try:
                principal_of(self.keys, authorization.decode("latin-1") if authorization else None)
            except Unauthenticated as exc:
                await error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)
