"""One request id across every hop: a task sent to a front door with an `X-Request-Id` (or
without, then the front door assigns one) is served through an environment that runs as its
own process (`trifecta env serve`); the same id is in the front door's JSON log line for the
task and in the environment server's JSON log lines for each federation hop it served."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.support import free_port, live_server
from trifecta.cognitive.serving.factory import build_service
from trifecta.core import db
from trifecta.core.auth import Principal, StaticKeys
from trifecta.core.errors import InvalidInput
from trifecta.core.http import install_error_handlers
from trifecta.core.logging import (
    ERROR_RING_SIZE,
    REQUEST_ID_HEADER,
    LoggedError,
    RecentErrors,
    RequestIds,
    configure_logging,
    current_request_id,
    get_logger,
    recent_errors,
)
from trifecta.core.settings import Settings
from trifecta.federation.http_client import HttpBridge
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.registry import CapsuleRegistry
from trifecta.fleet.topology import load_topology
from trifecta.orchestrator.stack import Stack
from trifecta.serve.app import create_app

CREDENTIAL = "request-id-federation-credential"
ADMIN = "request-id-admin-token"
TWIN = Capsule(id="rid-twin", name="Twin", kind="digital_twin", domain="rid-grid")
ENV = "local"  # hosts the cognitive tiers and the context shards


def _json_lines(text: str) -> list[dict[str, Any]]:
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


# -- the middleware and the log lines, in one process ----------------------------------------
def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    log = get_logger("tests.request_id")

    @app.get("/work")
    def work() -> dict[str, str | None]:  # a sync route: FastAPI runs it in a worker thread
        log.info("working")
        return {"seen": current_request_id()}

    @app.get("/refuse")
    def refuse() -> None:
        raise InvalidInput("prompt: too long", field="prompt")

    app.add_middleware(RequestIds, service="unit")
    return app


def test_the_id_reaches_the_route_its_log_lines_and_the_answer() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    try:
        with TestClient(_app()) as client:
            offered = client.get("/work", headers={REQUEST_ID_HEADER: "ops-unit-0001"})
            assigned = client.get("/work", headers={REQUEST_ID_HEADER: "no"})
            refused = client.get("/refuse", headers={REQUEST_ID_HEADER: "ops-unit-0002"})
    finally:
        configure_logging()
    assert offered.json() == {"seen": "ops-unit-0001"}
    assert offered.headers[REQUEST_ID_HEADER] == "ops-unit-0001"
    new = assigned.headers[REQUEST_ID_HEADER]
    assert new.startswith("req-") and assigned.json() == {"seen": new}
    lines = _json_lines(stream.getvalue())
    worked = [e for e in lines if e.get("request_id") == "ops-unit-0001"]
    assert {e["event"] for e in worked} == {"working", "request"}
    (line,) = [e for e in worked if e["event"] == "request"]
    assert line["service"] == "unit" and line["path"] == "/work" and line["status"] == 200
    (warned,) = [e for e in lines if e.get("request_id") == "ops-unit-0002"]
    assert refused.status_code == 422 and warned["level"] == "warning"
    assert warned["detail"] == refused.json()["error"]["message"]
    ring = [e for e in recent_errors.latest(ERROR_RING_SIZE) if e.request_id == "ops-unit-0002"]
    assert ring and ring[0].event == "request refused" and "too long" in ring[0].detail


def test_the_error_ring_is_bounded() -> None:
    ring = RecentErrors(size=5)
    for i in range(12):
        ring.add(LoggedError(at=str(i), level="error", logger="t", event=f"e{i}"))
    assert [e.event for e in ring.latest(10)] == ["e11", "e10", "e9", "e8", "e7"]
    assert ring.total == 12


# -- across processes --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """`trifecta env serve --env local` as its own process, logging JSON to a file."""
    data = Path(tmp_path_factory.mktemp("rid"))
    CapsuleRegistry(db.get_engine(f"sqlite:///{data / 'trifecta.db'}")).add_many([TWIN])
    port, log = free_port(), data / "env.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIFECTA_") or "_TEST_" in k}
    env |= {
        "TRIFECTA_DATA_DIR": str(data),
        "TRIFECTA_LOG_FORMAT": "json",
        "TRIFECTA_FEDERATION_CREDENTIAL": CREDENTIAL,
        "TRIFECTA_CONFIG": str(data / "none.toml"),
    }
    cmd = [
        sys.executable,
        "-m",
        "trifecta.cli",
        "env",
        "serve",
        "--env",
        ENV,
        "--log-level",
        "info",
    ]
    with log.open("wb") as err:  # the log lines; stdout has the greeting only
        process = subprocess.Popen(
            [*cmd, "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=err
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the environment server did not start"
            try:
                health = httpx.get(
                    f"{url}/federation/v1/health",
                    headers={"Authorization": f"Bearer {CREDENTIAL}"},
                    timeout=2,
                )
                if health.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield url, data, log
    finally:
        process.terminate()
        process.wait(timeout=30)
        db.dispose_engines()


@pytest.mark.slow
@pytest.mark.integration
def test_one_request_id_in_the_front_door_s_and_the_environment_s_logs(
    environment: tuple[str, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, data, env_log = environment
    settings = Settings(data_dir=data, database_url=f"sqlite:///{data / 'trifecta.db'}")
    bridge = HttpBridge(load_topology(), {ENV: url}, credential=CREDENTIAL)
    cognitive = build_service(tiers=["small"], phase=settings.phase)
    stack = Stack(settings=settings, capsules=[TWIN], remote=bridge, cognitive=cognitive)
    app = create_app(stack, auth=StaticKeys({ADMIN: Principal(key_id="admin", admin=True)}))
    configure_logging("INFO", "json")  # the front door's lines as JSON, like the environment's
    offered = f"ops-{uuid.uuid4().hex[:12]}"
    try:
        with live_server(app) as front, httpx.Client(base_url=front, timeout=120) as client:
            headers = {"Authorization": f"Bearer {ADMIN}"}
            task = f"/v1/capsules/{TWIN.id}/tasks"
            mine = client.post(
                task,
                json={"prompt": "t=41,p=17;t+p?"},
                headers={**headers, REQUEST_ID_HEADER: offered},
            )
            assert mine.status_code == 201, mine.text
            assert mine.headers[REQUEST_ID_HEADER] == offered
            assigned = client.post(task, json={"prompt": "t=12,p=30;t+p?"}, headers=headers)
            assert assigned.status_code == 201, assigned.text
            given = assigned.headers[REQUEST_ID_HEADER]
            assert given.startswith("req-") and given != offered
    finally:
        configure_logging()
        stack.close()
    front_lines = _json_lines(capsys.readouterr().err)
    time.sleep(0.5)  # the environment's last line is written after its answer
    written = [line for line in env_log.read_text().splitlines() if line.strip()]
    env_lines = _json_lines("\n".join(written))
    assert len(env_lines) == len(written), written[:5]  # JSON lines only, uvicorn's included
    assert any(e.get("logger_name", "").startswith("uvicorn") for e in env_lines), written[:5]
    for request_id in (offered, given):
        door = [e for e in front_lines if e.get("request_id") == request_id]
        assert any(
            e.get("service") == "front-door" and e.get("path") == task and e.get("status") == 201
            for e in door
        ), door
        hops = [e for e in env_lines if e.get("request_id") == request_id]
        paths = {e["path"] for e in hops if e.get("service") == f"env:{ENV}"}
        # the context hops and the model's completion, each logged by the environment
        assert any(p.startswith("/federation/v1/context/") for p in paths), (request_id, paths)
        assert "/federation/v1/cognitive/complete" in paths, (request_id, paths)
        assert all(e["status"] < 400 for e in hops if "status" in e)


def test_a_delegated_a2a_task_carries_the_delegating_request_s_id() -> None:
    """The A2A delegator's HTTP client adds the id of the request it serves to every hop."""
    import asyncio

    from trifecta.core.logging import request_scope
    from trifecta.federation.a2a.client import Delegator

    seen: list[str | None] = []

    def peer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("X-Request-Id"))
        return httpx.Response(200, json={})

    def no_lookup(capsule_id: str) -> Capsule:
        raise AssertionError(f"no capsule is looked up here ({capsule_id})")

    async def hops() -> None:
        http = httpx.AsyncClient(transport=httpx.MockTransport(peer))
        delegator = Delegator(no_lookup, http=http)
        with request_scope("req-delegating-0001"):
            await delegator.http.get("http://peer.test/a2a")
        await delegator.http.get("http://peer.test/a2a")  # outside a request: no id
        await http.aclose()

    asyncio.run(hops())
    assert seen == ["req-delegating-0001", None]
