"""Processes the reliability tests start, stop, kill and pause: `trifecta serve`, a throwaway
Postgres cluster and a throwaway Redis of their own (never the shared ones `make test` runs,
which other tests use at the same time)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.support import free_port

REPO = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any TRIFECTA_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIFECTA_")}
    env.update(extra)
    return env


class ServeProcess:
    """`trifecta serve` on a loopback port of its own, over the given database (and Redis)."""

    def __init__(
        self,
        data_dir: Path,
        database_url: str,
        redis_url: str | None = None,
        *,
        env: dict[str, str] | None = None,
    ):
        self.extra_env = env or {}  # settings of this server (TRIFECTA_...)
        self.data_dir = data_dir
        self.database_url = database_url
        self.redis_url = redis_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 180.0) -> None:
        env = clean_env(
            TRIFECTA_DATA_DIR=str(self.data_dir),
            TRIFECTA_CONFIG=str(self.data_dir / "absent.toml"),
            TRIFECTA_DATABASE_URL=self.database_url,
        )
        if self.redis_url:
            env["TRIFECTA_REDIS_URL"] = self.redis_url
        env.update(self.extra_env)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / f"serve-{self.starts}.log").open("wb")
        self.starts += 1
        self.process = subprocess.Popen(
            [sys.executable, "-m", "trifecta.cli", "serve", "--port", str(self.port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"trifecta serve exited with {self.process.returncode}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"trifecta serve on {self.url} did not start")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def admin_key(self) -> str:
        return (self.data_dir / "admin.key").read_text().strip()

    def kill9(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def capsule_keys(self, capsules: list[str]) -> dict[str, str]:
        """A key of each capsule, made through the admin API."""
        admin = {"Authorization": f"Bearer {self.admin_key}"}
        with httpx.Client(base_url=self.url, headers=admin, timeout=30) as http:
            return {
                capsule: http.post("/v1/keys", json={"capsule_id": capsule})
                .raise_for_status()
                .json()["token"]
                for capsule in capsules
            }


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: p.parts)
    return found[-1].parent if found else None


class ThrowawayPostgres:
    """A Postgres cluster of this test alone (initdb in a temporary folder, a free loopback
    port), started and stopped at will: the binaries `scripts/services.sh` uses."""

    def __init__(self) -> None:
        bin_dir = _pg_bin()
        if bin_dir is None:
            raise RuntimeError("no Postgres binaries (scripts/services.sh installs them)")
        self.bin = bin_dir
        self.port = free_port()
        # Not under pytest's tmp_path: that is 0700, and Postgres runs as its own user.
        self.root = Path(tempfile.mkdtemp(prefix="trifecta-pg-"))
        self.data = self.root / "data"
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres = os.getuid() == 0
        if self._as_postgres:
            self.root.chmod(0o755)
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "pg.log"), "-w", "-o", options,
            "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class ThrowawayRedis:
    """A redis-server of this test alone, to kill, restart and pause (SIGSTOP) at will."""

    def __init__(self, work: Path) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("no redis-server (scripts/services.sh installs it)")
        self.port = free_port()
        self.work = work
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.work)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        import redis

        client = redis.Redis(port=self.port, socket_timeout=0.5)
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)
