"""`trifecta cognitive serve`: bad input is one line and exit 2; the server answers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import free_port
from trifecta.cli import main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tier", "huge"], "tier: unknown tier 'huge' (allowed: large, medium, small)"),
        (["--port", "0"], "port: 0 is not a TCP port (1-65535)"),
        (
            ["--min-replicas", "3", "--max-replicas", "2"],
            "min_replicas: must not exceed --max-replicas",
        ),
    ],
)
def test_bad_options_exit_2_with_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["cognitive", "serve", *args])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip() == f"trifecta: error: {message}"


@pytest.mark.slow
@pytest.mark.integration
def test_the_command_serves_the_api(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "TRIFECTA_DATA_DIR": str(tmp_path / "data")}
    key = subprocess.run(
        [sys.executable, "-m", "trifecta.cli", "keys", "create", "--admin"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    headers = {"Authorization": f"Bearer {key}"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trifecta.cli",
            "cognitive",
            "serve",
            "--tier",
            "small",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.communicate()[0]
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers=headers, timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        assert [m["id"] for m in models.json()["data"]] == ["small"]
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/completions",
            headers=headers,
            timeout=30,
            json={"model": "small", "prompt": "41+17?", "max_tokens": 3},
        )
        assert answer.status_code == 200 and answer.headers["X-Trifecta-Tier"] == "small"
    finally:
        server.terminate()
        server.wait(timeout=30)
