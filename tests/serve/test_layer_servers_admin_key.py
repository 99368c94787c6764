"""`trifecta context serve` and `trifecta cognitive serve` on first start, as a new user runs
them: each writes a local admin key (0600) into the data directory, says where it is, and
answers with it; without a key, 401. The second server reuses the first one's key."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration]
SERVERS = [
    (["context", "serve"], "/shards", "/health"),
    (["cognitive", "serve", "--tier", "small"], "/v1/models", None),
]


def _start(argv: list[str], port: int, data: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIFECTA_") or "TEST" in k} | {
        "TRIFECTA_DATA_DIR": str(data),
        "TRIFECTA_CONFIG": str(data / "none.toml"),
    }
    code = "import sys; from trifecta.cli import main; main(sys.argv[1:])"
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", code, *argv, "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_first_start_writes_an_admin_key_and_the_server_needs_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    key_file = data / "admin.key"
    for argv, admin_route, _health in SERVERS:
        port = free_port()
        log = tmp_path / f"{argv[0]}.log"
        server = _start(argv, port, data, log)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                assert server.poll() is None, log.read_text()
                try:
                    if httpx.get(url + admin_route, timeout=2).status_code == 401:
                        break
                except httpx.HTTPError:
                    time.sleep(0.3)
            else:
                pytest.fail(f"{argv} did not answer: {log.read_text()[-2000:]}")
            assert f"the admin key is in {key_file}" in log.read_text()
            assert key_file.stat().st_mode & 0o777 == 0o600
            token = key_file.read_text().strip()
            assert token.startswith("trf_")
            answer = httpx.get(
                url + admin_route, headers={"Authorization": f"Bearer {token}"}, timeout=30
            )
            assert answer.status_code == 200, answer.text
        finally:
            server.terminate()
            server.wait(timeout=30)
    assert len(list(data.glob("admin.key*"))) == 1  # the second server reused the key
