"""The tiers on Ray Serve: a local Ray cluster inside a network namespace of the test's own
(only loopback up, since Ray binds to the external interface), served through our API."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.netns]
CLIENT = "tests.cognitive.serving.ray_client"  # run as a module from the repository root
ROOT = Path(__file__).resolve().parents[3]


def _pids(namespace: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]


@pytest.fixture
def namespace() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create a network namespace")
    name = f"trif-ray-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):  # whatever Ray left behind in there
            for pid in _pids(name):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while _pids(name) and time.monotonic() < deadline:
                time.sleep(0.2)
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_the_tier_serves_through_ray_serve(namespace: str, tmp_path: Path) -> None:
    port = 8000
    env = {
        **os.environ,
        "TRIFECTA_DATA_DIR": str(tmp_path / "data"),
        "RAY_USAGE_STATS_ENABLED": "0",
        # a token left in ~/.ray by another Ray user of this machine must not switch this
        # test's own cluster to token authentication
        "RAY_AUTH_MODE": "disabled",
    }
    env["TRIFECTA_TEST_API_KEY"] = subprocess.run(
        [sys.executable, "-m", "trifecta.cli", "keys", "create", "--admin"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            namespace,
            sys.executable,
            "-m",
            "trifecta.cognitive.serving.cli",
            "--ray-address",
            "local",
            "--tier",
            "small",
            "--port",
            str(port),
            "--max-batch",
            "4",
            "--min-replicas",
            "1",
            "--max-replicas",
            "2",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        client = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                namespace,
                sys.executable,
                "-m",
                CLIENT,
                f"http://127.0.0.1:{port}",
            ],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert client.returncode == 0, (
            client.stderr[-3000:] + (tmp_path / "server.log").read_text()[-3000:]
        )
        seen = json.loads(client.stdout.strip().splitlines()[-1])
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    assert seen["models"] == ["small"]
    assert seen["text"] == seen["expected"] == seen["streamed"]
    assert all(2 <= n <= 3 for n in seen["top_logprobs"])
    assert seen["cost"]["tier"] == "small" and seen["cost"]["accelerator_seconds"] > 0
    assert seen["first_chunk"]
    assert len(seen["scaled_replicas"]) == 2  # Serve scaled the tier out under load
    # With two replicas up, our router kept each shared prefix on one of them (Serve's default
    # power-of-two router would split five requests over both most of the time).
    assert all(len(home) == 1 for home in seen["affinity_homes"])
