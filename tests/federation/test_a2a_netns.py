"""A2A across two hosts: two network namespaces joined by a veth pair with addresses in a
private /30 the test creates. An environment's A2A server runs in one namespace; in the
other, the SDK client discovers it from its card and delegates capsule tasks: one the
server's environment admits (answered), one it does not (refused by the sender)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from trifecta.core.tasks import solve

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.netns]
ROOT = Path(__file__).resolve().parents[2]
PORT = 8000
PEER = [sys.executable, "-m", "tests.federation.a2a_peer"]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, str, str]]:
    """(server namespace, client namespace, server address)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create network namespaces")
    tag = uuid.uuid4().hex[:6]
    server, client = f"trif-a2a-{tag}-s", f"trif-a2a-{tag}-c"
    veth_s, veth_c = f"ta{tag}s", f"ta{tag}c"
    # a /30 in 10.200.0.0/13 picked at random, so parallel runs do not collide
    base = random.Random(tag).randrange(0, 1 << 17) * 4
    net = f"10.{200 + (base >> 16)}.{(base >> 8) & 255}.{base & 255}"
    prefix = net.rsplit(".", 1)[0]
    last = int(net.rsplit(".", 1)[1])
    server_ip, client_ip = f"{prefix}.{last + 1}", f"{prefix}.{last + 2}"
    _ip("netns", "add", server)
    _ip("netns", "add", client)
    try:
        _ip("link", "add", veth_s, "type", "veth", "peer", "name", veth_c)
        _ip("link", "set", veth_s, "netns", server)
        _ip("link", "set", veth_c, "netns", client)
        for namespace, device, address in (
            (server, veth_s, server_ip),
            (client, veth_c, client_ip),
        ):
            _ip("-n", namespace, "addr", "add", f"{address}/30", "dev", device)
            _ip("-n", namespace, "link", "set", device, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
        yield server, client, server_ip
    finally:
        for namespace in (server, client):
            subprocess.run(["ip", "netns", "del", namespace], check=False, capture_output=True)


def _delegate(client: str, url: str, capsule: str, prompt: str) -> dict[str, object]:
    done = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            client,
            *PEER,
            "delegate",
            *("--url", url),
            *("--capsule", capsule),
            *("--prompt", prompt),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def test_a_task_delegated_between_two_hosts(
    two_hosts: tuple[str, str, str], tmp_path: Path
) -> None:
    server_ns, client_ns, address = two_hosts
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            server_ns,
            *PEER,
            "serve",
            *("--env", "sovereign"),
            *("--host", address),
            *("--port", str(PORT)),
        ],
        cwd=ROOT,
        env={**os.environ, "TRIFECTA_DATA_DIR": str(tmp_path / "data")},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://{address}:{PORT}"
    try:
        deadline = time.monotonic() + 60
        connect = f"import socket; socket.create_connection(('{address}', {PORT}), 1)"
        while True:  # wait until the server's port answers inside its namespace
            probe = subprocess.run(
                ["ip", "netns", "exec", server_ns, sys.executable, "-c", connect],
                capture_output=True,
            )
            if probe.returncode == 0:
                break
            assert server.poll() is None and time.monotonic() < deadline, (
                tmp_path / "server.log"
            ).read_text()[-3000:]
            time.sleep(0.3)
        prompt = "t=41,p=17,r=63;t+r?"
        answered = _delegate(client_ns, url, "gov-eu", prompt)
        refused = _delegate(client_ns, url, "twin-1", prompt)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    assert answered["peer_up"] is True and answered["peer"] == "sovereign"
    task = answered["task"]
    assert isinstance(task, dict) and task["state"] == "completed"
    assert task["outcome"]["answer"] == solve(prompt)
    assert task["outcome"]["environment"] == "sovereign"
    assert "may not be delegated to environment 'sovereign'" in str(refused["refused"])
