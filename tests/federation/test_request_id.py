"""One request id across every hop: a task sent to a front door with an `X-Request-Id` (or
without, then the front door assigns one) is served through an environment that runs as its
own process (`trifecta env serve`); the same id is in the front door's JSON log line for the
task and in the environment server's JSON log lines for each federation hop it served."""

from __future__ import annotations

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

from tests.support import free_port, live_server
from trifecta.cognitive.serving.factory import build_service
from trifecta.core import db
from trifecta.core.auth import Principal, StaticKeys
from trifecta.core.logging import REQUEST_ID_HEADER, configure_logging
from trifecta.core.settings import Settings
from trifecta.federation.http_client import HttpBridge
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.registry import CapsuleRegistry
from trifecta.fleet.topology import load_topology
from trifecta.orchestrator.stack import Stack
from trifecta.serve.app import create_app

pytestmark = [pytest.mark.slow, pytest.mark.integration]
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
    cmd = [sys.executable, "-m", "trifecta.cli", "env", "serve", "--env", ENV]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*cmd, "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT
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
    env_lines = _json_lines(env_log.read_text())
    for request_id in (offered, given):
        door = [e for e in front_lines if e.get("request_id") == request_id]
        assert any(
            e.get("service") == "front-door" and e.get("path") == task and e.get("status") == 201
            for e in door
        ), door
        hops = [e for e in env_lines if e.get("request_id") == request_id]
        paths = {e["path"] for e in hops if e.get("service") == f"env:{ENV}"}
        # the context retrieval and the model's completion, each logged by the environment
        assert "/federation/v1/context/retrieve" in paths, (request_id, paths)
        assert any(p.startswith("/federation/v1/cognitive/") for p in paths), paths
        assert all(e["status"] < 400 for e in hops if "status" in e)
