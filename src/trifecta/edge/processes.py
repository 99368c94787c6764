"""Edge nodes as separate processes on loopback (for `trifecta edge mesh --spawn` and tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from trifecta.core.errors import Unavailable


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class NodeProcess:
    """`python -m trifecta.edge.cli node ...` in its own process, with its own data directory."""

    name: str
    data_dir: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    environment: str = "edge"
    kind: str = "edge"
    jurisdiction: str | None = None
    capacity: int = 4
    log_file: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/mcp"

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "trifecta.edge.cli",
            "node",
            "--name",
            self.name,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--environment",
            self.environment,
            "--kind",
            self.kind,
            "--capacity",
            str(self.capacity),
        ]
        return cmd + (["--jurisdiction", self.jurisdiction] if self.jurisdiction else [])

    def start(self) -> NodeProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_file or self.data_dir / "node.log").open("ab")
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy()
        )
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> NodeProcess:
        """Wait until the node accepts connections on its port."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise Unavailable(
                    f"node {self.name} exited with code {self.process.returncode}", field="node"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        raise Unavailable(
            f"node {self.name} did not listen on port {self.port} within {timeout_s:.0f} s",
            field="node",
        )

    def kill(self) -> None:
        """SIGKILL: the node dies without a chance to say goodbye (a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
