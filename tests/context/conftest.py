"""Fixtures of the context tests: capsules in a control database, services over it, and
context-service processes on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.context.replicas import CAPSULE, lesson
from tests.support import free_port
from trifecta.context.facade import ContextService
from trifecta.context.settings import ContextSettings
from trifecta.context.store import ShardStore
from trifecta.context.writes import Changes
from trifecta.core.db import get_engine
from trifecta.core.embeddings import MiniLMEmbedder, get_embedder
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.keys import KeyStore
from trifecta.fleet.registry import CapsuleRegistry

CAPSULES = [
    Capsule(id="twin-a", name="Plant twin A", kind="digital_twin", domain="plant"),
    Capsule(id="twin-a2", name="Plant twin A2", kind="digital_twin", domain="plant"),
    Capsule(id="twin-b", name="Grid twin", kind="digital_twin", domain="grid"),
    Capsule(id="gov-1", name="Sovereign", kind="sovereign", domain="gov", jurisdiction="eu"),
]

ServiceFactory = Callable[..., ContextService]


@pytest.fixture(scope="session")
def embedder() -> MiniLMEmbedder:
    """The real all-MiniLM-L6-v2 embedder, loaded once for the whole run."""
    return get_embedder()


def register_capsules(control_url: str) -> None:
    registry = CapsuleRegistry(get_engine(control_url))
    if registry.count() == 0:
        registry.add_many(CAPSULES)


@pytest.fixture
def make_service(embedder: MiniLMEmbedder) -> ServiceFactory:
    """Services over a control database with the test capsules registered. Tenancy answers
    are not remembered between calls so tests see shares change at once."""

    def make(control_url: str, **kwargs: Any) -> ContextService:
        register_capsules(control_url)
        settings = kwargs.pop("settings", None) or ContextSettings(tenancy_ttl_s=0)
        return ContextService(
            control_url=control_url, embedder=embedder, settings=settings, **kwargs
        )

    return make


@pytest.fixture
def replicas(
    make_service: ServiceFactory, sqlite_url: str, redis_url: str
) -> Iterator[tuple[ContextService, ContextService]]:
    """Two caching services over one shard and one Redis, as two replicas would be."""
    a = make_service(sqlite_url, redis_url=redis_url)
    b = make_service(sqlite_url, redis_url=redis_url)
    a.add_memories(CAPSULE, [lesson(1)])
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def service(make_service: ServiceFactory, sqlite_url: str) -> ContextService:
    return make_service(sqlite_url)


ChangesSpy = Callable[[ShardStore], list[int]]


@pytest.fixture
def spy_changes_since(monkeypatch: pytest.MonkeyPatch) -> ChangesSpy:
    """Wraps a store's `changes_since` and returns the list of each `since` it is asked for,
    so a test can tell a view that caught up by reading newer rows from one that reloaded."""

    def spy(store: ShardStore) -> list[int]:
        asked: list[int] = []
        load = store.changes_since

        def recording(domain: str, since: int) -> Changes:
            asked.append(since)
            return load(domain, since)

        monkeypatch.setattr(store, "changes_since", recording)
        return asked

    return spy


class ServiceProcess:
    """`uvicorn trifecta.context.service:create_app_from_settings` in its own process."""

    def __init__(self, env: dict[str, str], log_path: Path, admin_key: str):
        self.headers = {"Authorization": f"Bearer {admin_key}"}  # acts for any capsule
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_path.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "trifecta.context.service:create_app_from_settings",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"service on {self.url} did not start")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture
def start_services(tmp_path: Path) -> Iterator[Callable[..., list[ServiceProcess]]]:
    """Start context-service processes sharing one control database (and Redis if given)."""
    started: list[ServiceProcess] = []

    def start(
        count: int, *, database_url: str, redis_url: str | None = None, cache: bool = True
    ) -> list[ServiceProcess]:
        register_capsules(database_url)
        admin_key = KeyStore(get_engine(database_url)).create(admin=True).token
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIFECTA_")}
        env.update(
            {
                "TRIFECTA_DATA_DIR": str(tmp_path / "data"),
                "TRIFECTA_CONFIG": str(tmp_path / "absent.toml"),
                "TRIFECTA_DATABASE_URL": database_url,
                "TRIFECTA_CONTEXT_CACHE": "true" if cache else "false",
                "TRIFECTA_CONTEXT_TENANCY_TTL_S": "0",
            }
        )
        if redis_url:
            env["TRIFECTA_REDIS_URL"] = redis_url
        procs = [
            ServiceProcess(env, tmp_path / f"service-{len(started) + i}.log", admin_key)
            for i in range(count)
        ]
        started.extend(procs)
        for proc in procs:
            proc.wait_ready()
        return procs

    yield start
    for proc in started:
        proc.stop()
