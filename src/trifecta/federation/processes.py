"""A federation on one machine: every environment of a topology as its own process
(`trifecta up`), stopped by `trifecta down`, inspected by `trifecta status`.

Each environment runs `trifecta env serve` on a loopback port (or an address the caller gives,
e.g. inside a network namespace), and the running set is written to
`<data>/federation/up.json` (URLs, process ids and the federation credential, readable by the
owner only), which the front door (`trifecta serve --federated`, `trifecta run --federated`)
reads to build its HTTP bridge.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict, Field

from trifecta.core.errors import NotFound, Unavailable
from trifecta.core.settings import Phase, Settings
from trifecta.edge.processes import free_port
from trifecta.federation.http_client import HttpBridge
from trifecta.federation.http_server import PREFIX
from trifecta.federation.services import EnvironmentHealth
from trifecta.fleet.topology import Topology

START_TIMEOUT_S = 180.0  # each process imports torch and loads its models; two cores are shared


class RunningEnvironment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    url: str
    pid: int
    log: str


class Federation(BaseModel):
    """What `trifecta up` started."""

    model_config = ConfigDict(extra="forbid")

    topology: str | None = Field(description="the topology file, or None for the shipped one")
    credential: str = Field(description="the federation credential peers present")
    environments: list[RunningEnvironment]

    def urls(self) -> dict[str, str]:
        return {e.name: e.url for e in self.environments}

    def bridge(self, topology: Topology) -> HttpBridge:
        return HttpBridge(topology, self.urls(), credential=self.credential)


def state_file(settings: Settings) -> Path:
    return settings.data_dir / "federation" / "up.json"


def load_federation(settings: Settings) -> Federation:
    path = state_file(settings)
    if not path.is_file():
        raise NotFound(
            f"no federation is running for {settings.data_dir} (start one with `trifecta up`)",
            field="federation",
        )
    return Federation.model_validate_json(path.read_text())


def _save(settings: Settings, federation: Federation) -> None:
    path = state_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(federation.model_dump_json(indent=2))
    path.chmod(0o600)


def serving_environments(topology: Topology, phase: Phase) -> list[str]:
    return [e.name for e in topology.environments if e.available_in(phase) and e.kind != "training"]


def env_command(
    name: str, host: str, port: int, topology: Path | None, peers: list[str]
) -> list[str]:
    cmd = [sys.executable, "-m", "trifecta.cli", "env", "serve", "--env", name]
    cmd += ["--host", host, "--port", str(port)]
    if topology is not None:
        cmd += ["--topology", str(topology)]
    for peer in peers:
        cmd += ["--peer", peer]
    return cmd


def wait_healthy(
    url: str, credential: str, timeout_s: float, process: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {credential}"}
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise Unavailable(
                f"environment server at {url} exited with code {process.returncode}",
                field="environment",
            )
        try:
            if httpx.get(url + PREFIX + "/health", headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise Unavailable(f"environment server at {url} not healthy after {timeout_s:.0f} s")


def up(
    settings: Settings,
    topology: Topology,
    *,
    topology_file: Path | None = None,
    host: str = "127.0.0.1",
    only: list[str] | None = None,
    on_started: Callable[[str], None] | None = None,
) -> Federation:
    """Start every serving environment as its own process and wait until each is healthy."""
    if state_file(settings).is_file():
        down(settings)
    credential = secrets.token_urlsafe(24)
    logs = settings.data_dir / "federation" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = os.environ | {
        "TRIFECTA_DATA_DIR": str(settings.data_dir),
        "TRIFECTA_FEDERATION_CREDENTIAL": credential,
        "TRIFECTA_PHASE": settings.phase,
    }
    if settings.database_url:
        env["TRIFECTA_DATABASE_URL"] = settings.database_url
    started: list[tuple[RunningEnvironment, subprocess.Popen[bytes]]] = []
    names = only or serving_environments(topology, settings.phase)
    for name in names:
        topology.environment(name)  # NotFound names the environments
    ports = {name: free_port(host) for name in names}
    urls = {name: f"http://{host}:{port}" for name, port in ports.items()}
    for name in names:
        port = ports[name]
        log_path = logs / f"{name}.log"
        peers = [url for other, url in urls.items() if other != name]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                env_command(name, host, port, topology_file, peers),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        running = RunningEnvironment(
            name=name, url=f"http://{host}:{port}", pid=process.pid, log=str(log_path)
        )
        started.append((running, process))
    federation = Federation(
        topology=str(topology_file) if topology_file else None,
        credential=credential,
        environments=[r for r, _ in started],
    )
    _save(settings, federation)
    try:
        for running, process in started:
            wait_healthy(running.url, credential, START_TIMEOUT_S, process)
            if on_started is not None:
                on_started(running.name)
    except BaseException:
        # Stop what this call started, and forget the state only if it is still ours: another
        # `up` (or `down`) may have replaced it meanwhile.
        for _, process in started:
            _signal(process.pid, signal.SIGKILL)
        path = state_file(settings)
        if path.is_file() and load_federation(settings).credential == credential:
            path.unlink(missing_ok=True)
        raise
    return federation


def down(settings: Settings, *, grace_s: float = 10.0) -> list[str]:
    """Stop every environment `up` started (SIGTERM, then SIGKILL after `grace_s`)."""
    path = state_file(settings)
    if not path.is_file():
        return []
    federation = Federation.model_validate_json(path.read_text())
    for env in federation.environments:
        _signal(env.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for env in federation.environments:
        while _alive(env.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(env.pid):
            _signal(env.pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return [e.name for e in federation.environments]


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (killed, not yet reaped by whoever adopted it) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def kill_environment(settings: Settings, name: str) -> None:
    """kill -9 one environment of the running federation (fault tests and drills)."""
    federation = load_federation(settings)
    for env in federation.environments:
        if env.name == name:
            _signal(env.pid, signal.SIGKILL)
            return
    raise NotFound(f"no running environment {name!r}", field="env", allowed=federation.urls())


class EnvironmentStatus(BaseModel):
    name: str
    url: str
    up: bool
    starting: bool = Field(default=False, description="its process lives but does not answer yet")
    health: EnvironmentHealth | None = None
    peers_up: list[str] = Field(default_factory=list, description="peers whose card answers")
    why: str = ""


def status(federation: Federation, topology: Topology) -> list[EnvironmentStatus]:
    """Each running environment's own health, or why it does not answer."""
    bridge = federation.bridge(topology)
    rows = []
    try:
        for env in federation.environments:
            try:
                health = bridge.health(env.name)
                peers = httpx.get(env.url + PREFIX + "/peers", timeout=5).json()
                rows.append(
                    EnvironmentStatus(
                        name=env.name,
                        url=env.url,
                        up=True,
                        health=health,
                        peers_up=sorted(p["name"] for p in peers if p.get("up") and p.get("name")),
                    )
                )
            except Unavailable as exc:
                rows.append(
                    EnvironmentStatus(
                        name=env.name,
                        url=env.url,
                        up=False,
                        starting=_alive(env.pid),
                        why=exc.one_line(),
                    )
                )
    finally:
        bridge.close()
    return rows


def seed_registry(settings: Settings) -> int:
    """The configured fleet's capsules that the control database does not hold yet, so that
    every environment and the front door know the same capsules from the start."""
    from trifecta.core.db import get_engine
    from trifecta.fleet.fleetfile import load_fleet
    from trifecta.fleet.registry import CapsuleRegistry

    return CapsuleRegistry(get_engine(settings.db_url)).add_missing(load_fleet(settings.fleet))
