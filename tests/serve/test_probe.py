"""What a hostile client's probe of `trifecta serve` found, each now a test: every answer a
4xx naming the field (or a sane replay), never a 500, a hang, or a dropped connection.

- a capsule share of 1e308 or 5e-324 and one completion took the `small` tier down for every
  tenant until restart (the slot guarantees overflowed inside the fair queue's pop);
- 500s from `/v1/plan` (a huge `requests_per_s`, `quota_rps: 1e-320`), a completion seed
  of 1e23, `max_age_s: Infinity`;
- concurrent tasks with the same `request_id` (15 of 18 calls answered 500);
- a 100 MB chunked body read and parsed past the 1 MB limit; bodies deeply nested or not UTF-8;
- context written through `/context` before a domain's first task lost after a restart;
- a Postgres outage answered with plain-text 500s and dropped connections (a throwaway
  cluster of our own is stopped: never the shared test server).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher

from tests.support import free_port, live_server
from trifecta.cognitive.serving.factory import build_service
from trifecta.cognitive.serving.fair_queue import FairQueue
from trifecta.cognitive.serving.slot_shares import SlotShares
from trifecta.cognitive.serving.tenants import TenantDirectory
from trifecta.core import db
from trifecta.core.settings import Settings
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.keys import KeyStore
from trifecta.orchestrator.stack import Stack
from trifecta.serve.app import MAX_BODY_BYTES, create_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ALPHA = Capsule(id="pr-alpha", name="Alpha", kind="digital_twin", domain="pr-grid")
CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)  # real argon2id, small
TASK = {"prompt": "t=41,p=17;t+p?"}
COMPLETION = {"model": "small", "prompt": "t=41,p=17;t+p?", "max_tokens": 4}


@dataclass
class Served:
    url: str
    client: httpx.Client
    store: KeyStore
    admin: dict[str, str]


@contextmanager
def serving(settings: Settings, capsules: list[Capsule]) -> Iterator[Served]:
    stack = Stack(settings=settings, capsules=capsules)
    store = KeyStore(stack.engine, hasher=CHEAP)
    tenants = TenantDirectory(stack.capsules.registry.get, ttl_s=0.0)
    cognitive = build_service(tiers=["small"], phase=stack.phase, tenants=tenants)
    app = create_app(stack, cognitive=cognitive, auth=store)
    admin = {"Authorization": f"Bearer {store.create(admin=True).token}"}
    try:
        with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
            yield Served(url, client, store, admin)
    finally:
        cognitive.close()
        stack.close()
        db.dispose_engines()


def _sqlite(data: Path) -> Settings:
    return Settings(data_dir=data, database_url=f"sqlite:///{data / 'control.db'}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(_sqlite(Path(tmp_path_factory.mktemp("probe"))), [ALPHA]) as server:
        yield server


def _refused(answer: httpx.Response, status: int, field: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    named = error.get("field") or error.get("param")
    assert named == field, error


def test_the_spec_holds_every_surface_and_the_docs_load_locally(served: Served) -> None:
    spec = served.client.get("/openapi.json").json()
    assert "/mcp" in spec["paths"] and "/context/capsules/{capsule_id}/retrieve" in spec["paths"]
    task = spec["paths"]["/v1/capsules/{capsule_id}/tasks"]["post"]["responses"]
    assert {"400", "401", "403", "404", "409", "413", "422", "429", "503"} <= set(task)
    for page in ("/docs", "/redoc", "/context/docs"):
        html = served.client.get(page)
        assert html.status_code == 200 and "cdn." not in html.text and "https://" not in html.text


@pytest.mark.parametrize("share", [1e308, 5e-324])
def test_an_extreme_share_is_refused_and_the_tier_serves_everyone(
    served: Served, share: float
) -> None:
    capsule = {"id": "pr-share", "name": "S", "kind": "digital_twin", "domain": "pr-grid"}
    answer = served.client.post(
        "/v1/capsules", json={**capsule, "share": share}, headers=served.admin
    )
    _refused(answer, 422, "share")
    completed = served.client.post("/v1/completions", json=COMPLETION, headers=served.admin)
    assert completed.status_code == 200, completed.text


def test_the_fair_queue_survives_shares_at_the_float_limits() -> None:
    """Below the model's bounds too: the scheduler's arithmetic stays finite."""
    shares, queue = SlotShares(), FairQueue[str]()
    for tenant, share in (("huge", 1e308), ("tiny", 5e-324), ("plain", 1.0)):
        shares.arrived(tenant, share)
        queue.push(tenant, tenant, cost=10.0, share=max(share, 1e-300))
    assert all(g >= 1 for g in shares.guarantees(8).values())
    served = [queue.pop(lambda t: shares.allows(t, 8)) for _ in range(3)]
    assert sorted(s for s in served if s) == ["huge", "plain", "tiny"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"demand": {"requests_per_s": 1e308}}, "[0].demand.requests_per_s"),
        ({"quota_rps": 1e-320}, "[0].quota_rps"),
        ({"share": 1e308}, "[0].share"),
    ],
)
def test_plan_refuses_out_of_range_capsules(
    served: Served, change: dict[str, Any], field: str
) -> None:
    body = [{**ALPHA.model_dump(mode="json"), **change}]
    _refused(served.client.post("/v1/plan", json=body, headers=served.admin), 422, field)


def test_a_huge_seed_is_refused(served: Served) -> None:
    answer = served.client.post(
        "/v1/completions", json={**COMPLETION, "seed": 1e23}, headers=served.admin
    )
    _refused(answer, 400, "seed")


def test_an_infinite_age_is_refused(served: Served) -> None:
    answer = served.client.post(
        f"/context/capsules/{ALPHA.id}/memories/search",
        content=b'{"query": "41+17", "max_age_s": Infinity}',
        headers={**served.admin, "content-type": "application/json"},
    )
    _refused(answer, 422, "max_age_s")


def test_concurrent_tasks_with_one_request_id_are_served_once(served: Served) -> None:
    body = {**TASK, "request_id": "probe-same-id"}

    def submit(_: int) -> httpx.Response:
        return served.client.post(f"/v1/capsules/{ALPHA.id}/tasks", json=body, headers=served.admin)

    with ThreadPoolExecutor(max_workers=18) as pool:
        answers = list(pool.map(submit, range(18)))
    assert all(a.status_code in (201, 409) for a in answers), [a.text for a in answers]
    results = [a.json() for a in answers if a.status_code == 201]
    assert results and {r["id"] for r in results} == {"probe-same-id"}
    assert len({r["answer"] for r in results}) == 1  # one serving, replayed


def _read_answer(sock: socket.socket, got: bytes) -> bytes:
    """The rest of an HTTP answer whose first bytes are `got` (headers, then the body by its
    Content-Length)."""
    sock.setblocking(True)
    while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < _length(got):
        more = sock.recv(65536)
        if not more:
            break
        got += more
    return got


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def _raw_post(url: str, head: bytes, chunks: Iterator[bytes]) -> bytes:
    """Send a request chunk by chunk and stop as soon as the server answers."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        for chunk in chunks:
            try:
                answer = sock.recv(65536)
            except BlockingIOError:
                answer = b""
            if answer:
                return _read_answer(sock, answer)
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError, BlockingIOError):
                break
        return _read_answer(sock, b"")


def test_a_chunked_body_past_the_limit_is_refused_before_it_is_read(served: Served) -> None:
    head = (
        f"POST /v1/capsules/{ALPHA.id}/tasks HTTP/1.1\r\nHost: probe\r\n"
        f"Authorization: {served.admin['Authorization']}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    piece = b"x" * 65536
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(100 * 16):  # 100 MB if the server never stopped it
            sent += len(piece)
            yield chunk

    answer = _raw_post(served.url, head, chunks())
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"field":"body"' in answer
    assert sent < 8 * MAX_BODY_BYTES  # refused early, not after 100 MB


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b'{"prompt": "\xff\xfe"}', 400),  # not UTF-8
        (b"[" * 100_000 + b"]" * 100_000, 400),  # nested past the parser's depth
        (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, 400),
        (b'{"prompt": "41+17?"', 400),  # not JSON: cut short
        (b'{"prompt": "' + b"x" * (MAX_BODY_BYTES + 1) + b'"}', 413),
        (b'{"prompt": 1e999}', 422),
    ],
)
def test_hostile_bodies_are_4xx_naming_the_field(
    served: Served, content: bytes, status: int
) -> None:
    answer = served.client.post(
        f"/v1/capsules/{ALPHA.id}/tasks",
        content=content,
        headers={**served.admin, "content-type": "application/json"},
    )
    _refused(answer, status, "prompt" if status == 422 else "body")


def test_a_huge_path_id_is_not_echoed_back_whole(served: Served) -> None:
    answer = served.client.get("/v1/capsules/" + "a" * 60_000, headers=served.admin)
    _refused(answer, 404, "capsule_id")
    assert len(answer.content) < 1000


def test_a_body_sent_as_text_names_the_body(served: Served) -> None:
    answer = served.client.post(
        f"/v1/capsules/{ALPHA.id}/tasks",
        content=b'{"prompt": "41+17?"}',
        headers={**served.admin, "content-type": "text/plain"},
    )
    _refused(answer, 422, "body")


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000, b"{}", b"x" * (MAX_BODY_BYTES + 1)],
)
def test_hostile_bodies_to_the_mcp_face_are_4xx(served: Served, content: bytes) -> None:
    accept = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    answer = served.client.post("/mcp", content=content, headers={**served.admin, **accept})
    assert 400 <= answer.status_code < 500, answer.text
    assert answer.headers["content-type"] == "application/json"


def test_context_written_before_the_first_task_survives_a_restart(tmp_path: Path) -> None:
    settings = _sqlite(tmp_path / "restart")
    memory = {"title": "sum", "content": "41+17=58 kept-across-restarts", "outcome": "success"}
    with serving(settings, [ALPHA]) as first:
        written = first.client.post(
            f"/context/capsules/{ALPHA.id}/memories", json={"items": [memory]}, headers=first.admin
        )
        assert written.status_code == 200, written.text
    with serving(settings, [ALPHA]) as second:
        assert (
            second.client.post(
                f"/v1/capsules/{ALPHA.id}/tasks", json=TASK, headers=second.admin
            ).status_code
            == 201
        )
        found = second.client.post(
            f"/context/capsules/{ALPHA.id}/memories/search",
            json={"query": "41+17=58 kept-across-restarts"},
            headers=second.admin,
        )
        assert "kept-across-restarts" in found.text, found.text


class ThrowawayPostgres:
    """A Postgres cluster of this test's own (the binaries `scripts/services.sh` uses)."""

    def __init__(self, root: Path):
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not found:
            pytest.skip("no Postgres binaries (scripts/services.sh installs them)")
        self.bin, self.root, self.port = Path(found[-1]), root, free_port()
        self.data = root / "pgdata"
        # Postgres refuses to run as root: as the Debian package's user then.
        self.run_as = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
        os.chmod(root, 0o777)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.run_as, str(self.bin / tool), *args], check=True, capture_output=True)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-w",
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "start",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "immediate", "stop")


@pytest.fixture
def postgres() -> Iterator[ThrowawayPostgres]:
    root = Path(tempfile.mkdtemp(prefix="trifecta-pg-outage-"))
    cluster = ThrowawayPostgres(root)
    cluster.start()
    try:
        yield cluster
    finally:
        with suppress(subprocess.CalledProcessError):  # already stopped by the test
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_a_postgres_outage_is_json_503_and_the_connection_survives(
    postgres: ThrowawayPostgres, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "pg-data", database_url=postgres.url)
    with serving(settings, [ALPHA]) as server:
        task = f"/v1/capsules/{ALPHA.id}/tasks"
        assert server.client.post(task, json=TASK, headers=server.admin).status_code == 201
        postgres.stop()
        calls = [
            ("GET", "/v1/capsules", None),
            ("POST", task, TASK),
            ("GET", f"/v1/capsules/{ALPHA.id}", None),
            ("GET", "/v1/ledger", None),
        ]
        for method, path, body in calls * 2:  # one keep-alive connection throughout
            answer = server.client.request(method, path, json=body, headers=server.admin)
            _refused(answer, 503, "database")
            assert answer.headers["retry-after"].isdigit()
        # the domain's shard is a SQLite file of its environment: served, or 503, never 500
        playbook = server.client.get(f"/context/capsules/{ALPHA.id}/playbook", headers=server.admin)
        assert playbook.status_code in (200, 503), playbook.text
        assert playbook.headers["content-type"] == "application/json"
        assert server.client.get("/healthz").status_code == 200
        postgres.start()
        assert server.client.post(task, json=TASK, headers=server.admin).status_code == 201
