"""Load generation for `benchmarks/context_service.py`: the service process, closed-loop
clients (HTTP clients in their own processes), percentiles, and a scratch Postgres database."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from trifecta.core.db import dispose_engines


@dataclass
class Run:
    name: str
    latencies_ms: list[float]
    seconds: float
    kinds: list[str] | None = None  # per request: "read" or "write" (mixed workloads)

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.seconds

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q))

    def of(self, kind: str) -> Run:
        """The requests of one kind (throughput: of that kind, over the whole run)."""
        kinds = self.kinds or []
        mine = [ms for ms, k in zip(self.latencies_ms, kinds, strict=True) if k == kind]
        return Run(f"{self.name} ({kind})", mine, self.seconds)


def closed_loop(name: str, clients: int, per_client: int, call: Callable[[int, int], Any]) -> Run:
    latencies: list[float] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        mine = []
        for i in range(per_client):
            start = time.perf_counter()
            call(c, c * per_client + i)
            mine.append((time.perf_counter() - start) * 1000)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Run(name, latencies, time.perf_counter() - began)


class Server:
    def __init__(self, database_url: str, redis_url: str | None, cache: bool, data_dir: Path):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        # The caller's context and embedder settings (TRIFECTA_CONTEXT_*, e.g.
        # LEARNING_PROCESS or LEARN_NICE; TRIFECTA_EMBED_*, e.g. ENGINE) reach the server;
        # every other TRIFECTA_ variable is the script's to set.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("TRIFECTA_")
            or k.startswith(("TRIFECTA_CONTEXT_", "TRIFECTA_EMBED_"))
        }
        env.update(
            {
                "TRIFECTA_DATA_DIR": str(data_dir),
                "TRIFECTA_DATABASE_URL": database_url,
                "TRIFECTA_CONTEXT_CACHE": str(cache).lower(),
                "TRIFECTA_CONFIG": str(data_dir / "none.toml"),
            }
        )
        if redis_url:
            env["TRIFECTA_REDIS_URL"] = redis_url
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
                str(port),
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Start-up is not measured; loading MiniLM takes seconds, more on a loaded machine.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise TimeoutError("context service did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def client_main(
    url: str,
    requests: list[tuple[str, dict[str, Any] | None]],
    barrier: Any,
    out: Any,
    token: str | None = None,
) -> None:
    """One client in its own process (as real clients are): after the barrier, send the
    requests one after another and report each latency and its kind (`kind_of`). A request
    with no body is a GET."""
    latencies: list[float] = []
    kinds: list[str] = []
    found: dict[str, list[str]] = {}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=url, timeout=300, headers=headers) as http:
        http.get("/health").raise_for_status()  # connected before the clock starts
        barrier.wait()
        began = time.time()
        for path, body in requests:
            start = time.perf_counter()
            response = http.get(path) if body is None else http.post(path, json=body)
            latencies.append((time.perf_counter() - start) * 1000)
            response.raise_for_status()
            kinds.append(kind_of(path))
            if body is not None and path.endswith("/memories/search"):
                found[body["query"]] = [h["memory"]["id"] for h in response.json()["hits"]]
        ended = time.time()
    out.put((latencies, began, ended, found, kinds))


def kind_of(path: str) -> str:
    """A search or retrieve is a "read", a playbook read (the loop's first hop) a
    "playbook"; anything else writes."""
    if path.endswith(("/memories/search", "/retrieve")):
        return "read"
    return "playbook" if path.endswith("/playbook") else "write"


def http_clients(
    name: str,
    url: str,
    per_client: list[list[tuple[str, dict[str, Any] | None]]],
    token: str | None = None,
) -> tuple[Run, dict[str, list[str]]]:
    """Each client in its own process; `token`: the capsule's API key (every route of the
    service authenticates)."""
    spawn = multiprocessing.get_context("spawn")
    barrier, out = spawn.Barrier(len(per_client)), spawn.Queue()
    procs = [
        spawn.Process(target=client_main, args=(url, reqs, barrier, out, token))
        for reqs in per_client
    ]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=3600) for _ in procs]
    for proc in procs:
        proc.join()
    latencies = [ms for r in results for ms in r[0]]
    kinds = [k for r in results for k in r[4]]
    seconds = max(r[2] for r in results) - min(r[1] for r in results)
    found = {q: ids for r in results for q, ids in r[3].items()}
    return Run(name, latencies, seconds, kinds), found


def recall(found: dict[str, list[str]], truth: dict[str, list[str]]) -> float:
    common = [q for q in truth if q in found]
    return sum(len(set(found[q]) & set(truth[q])) / len(truth[q]) for q in common) / max(
        1, len(common)
    )


def fresh_postgres(base: str) -> tuple[str, Callable[[], None]]:
    name = "bench_" + uuid.uuid4().hex[:10]
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(base).set(database=name).render_as_string(hide_password=False), drop
