"""An environment's A2A server for the tests: the default topology's environment, a few
capsules, and a handler that answers with the task family's exact solver (so an answer can
be checked). `python -m tests.federation.a2a_peer serve --env NAME --host H --port P` serves one in
its own process, and `... delegate --url U --capsule C --prompt P` delegates a task to one
(the network-namespace test runs each on its own host)."""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import uvicorn
from fastapi import FastAPI

from tests.support import free_port
from trifecta.core.errors import NotFound
from trifecta.core.tasks import solve
from trifecta.federation.a2a.cards import build_agent_card
from trifecta.federation.a2a.models import CapsuleTask, CapsuleTaskHandler, CapsuleTaskOutcome
from trifecta.federation.a2a.server import add_a2a_routes
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.manifest import manifest_of
from trifecta.fleet.topology import Environment, load_topology

CAPSULES = [
    Capsule(id="twin-1", name="Turbine twin", kind="digital_twin", domain="energy"),
    Capsule(id="gov-eu", name="EU grid", kind="sovereign", domain="sov-eu-grid", jurisdiction="eu"),
    Capsule(id="gov-us", name="US grid", kind="sovereign", domain="sov-us-grid", jurisdiction="us"),
]


def lookup(capsule_id: str) -> Capsule:
    for capsule in CAPSULES:
        if capsule.id == capsule_id:
            return capsule
    raise NotFound(f"no capsule {capsule_id!r}", field="capsule_id")


def solver(environment: str, seen: list[tuple[str, str]] | None = None) -> CapsuleTaskHandler:
    """Answers every task-family prompt exactly; records (capsule, prompt) it served."""

    def handle(capsule_id: str, task: CapsuleTask) -> CapsuleTaskOutcome:
        if seen is not None:
            seen.append((capsule_id, task.prompt))
        return CapsuleTaskOutcome(
            answer=solve(task.prompt), environment=environment, route="solver", verified=True
        )

    return handle


def blocking(release: threading.Event) -> CapsuleTaskHandler:
    """Holds every task until `release` is set (to cancel a task that is still running)."""

    def handle(capsule_id: str, task: CapsuleTask) -> CapsuleTaskOutcome:
        release.wait(timeout=30)
        return CapsuleTaskOutcome(answer=None, environment="held")

    return handle


def peer_app(
    environment: Environment,
    base_url: str,
    handler: CapsuleTaskHandler,
    capsule_lookup: Callable[[str], Capsule] = lookup,
    credential: str | None = None,
) -> FastAPI:
    homed = [manifest_of(c) for c in CAPSULES if environment.admits(c)]
    card = build_agent_card(environment, base_url, manifests=homed)
    holder: list[object] = []

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        for service in holder:
            await service.aclose()  # type: ignore[attr-defined]

    app = FastAPI(lifespan=lifespan)
    holder.append(add_a2a_routes(app, card, handler, capsule_lookup, credential=credential))
    return app


async def delegate(url: str, capsule_id: str, prompt: str) -> dict[str, object]:
    """Discover the peer at `url` from its card and delegate one task to it (what the other
    host does in the network-namespace test)."""
    from trifecta.core.errors import TrifectaError
    from trifecta.federation.a2a.client import Delegator
    from trifecta.federation.a2a.discovery import PeerDirectory

    directory = PeerDirectory([url], timeout_s=5.0, attempts=3)
    try:
        (peer,) = await directory.refresh()
        if not peer.up:
            return {"peer_up": False, "error": peer.error}
        async with Delegator(lookup) as delegator:
            try:
                done = await delegator.send(
                    directory.card(peer.name or url), capsule_id, CapsuleTask(prompt=prompt)
                )
            except TrifectaError as exc:
                return {"peer_up": True, "peer": peer.name, "refused": exc.one_line()}
        return {"peer_up": True, "peer": peer.name, "task": done.model_dump(mode="json")}
    finally:
        await directory.aclose()


def main() -> None:
    import json

    import anyio

    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve")
    serve.add_argument("--env", required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, required=True)
    send = commands.add_parser("delegate")
    send.add_argument("--url", required=True)
    send.add_argument("--capsule", required=True)
    send.add_argument("--prompt", required=True)
    args = parser.parse_args()
    if args.command == "delegate":
        print(json.dumps(anyio.run(delegate, args.url, args.capsule, args.prompt)))
        return
    environment = load_topology().environment(args.env)
    base = f"http://{args.host}:{args.port}"
    uvicorn.run(
        peer_app(environment, base, solver(environment.name)),
        host=args.host,
        port=args.port,
        log_level="warning",
    )


if __name__ == "__main__":
    main()


@contextmanager
def serving(make_app: Callable[[str], FastAPI]) -> Iterator[tuple[str, uvicorn.Server]]:
    """Serve `make_app(base_url)` on a free loopback port (the card must name its own URL,
    so the port is chosen before the app is built); yields (base URL, server)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = uvicorn.Config(make_app(base), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield base, server
    finally:
        stop(server, thread)


def stop(server: uvicorn.Server, thread: threading.Thread | None = None) -> None:
    server.should_exit = True
    if thread is not None:
        thread.join(timeout=10)
