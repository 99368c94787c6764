"""Online shard moves: a domain moves to another database while writers keep writing, and
every write lands exactly once on the new shard."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from tests.context.conftest import ServiceFactory
from tests.support import live_server
from trifecta.context.admin import MoveRequest, ShardAdmin
from trifecta.context.copier import count_rows, table_check
from trifecta.context.deltas import AddOp, Delta, TagOp
from trifecta.context.facade import ContextService
from trifecta.context.merge import bullet_id_for
from trifecta.context.models import MemoryDraft, MemoryQuery
from trifecta.context.service import create_app
from trifecta.context.settings import ContextSettings
from trifecta.context.shards import ContextPlace
from trifecta.context.sql import read_domain
from trifecta.context.store import PendingMemory, ShardStore
from trifecta.core.auth import AllowLocal
from trifecta.core.db import normalize_url, transaction
from trifecta.core.errors import InvalidInput, SovereigntyViolation
from trifecta.core.settings import get_settings
from trifecta.fleet.topology import Environment

pytestmark = pytest.mark.slow


def places(
    kind: str = "inference", jurisdiction: str | None = None, **urls: str
) -> dict[str, ContextPlace]:
    """Configured places for a test: environments of `kind` named as given, each at its URL
    (what `shard_urls` and the topology configure for a real deployment)."""
    return {
        name: ContextPlace(
            environment=Environment(
                name=name, kind=kind, provider="test", region="test", jurisdiction=jurisdiction
            ),
            url=normalize_url(url),
        )
        for name, url in urls.items()
    }


def seed_memories(store: ShardStore, domain: str, count: int, *, seed: int = 0) -> None:
    """Bulk rows for the copy to chew on (random unit vectors: the copy only moves bytes)."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for start in range(0, count, 500):
        store.add_memories(
            domain,
            [
                PendingMemory(
                    f"mem-seed{seed:02d}{i:06d}",
                    MemoryDraft(title=f"seeded {i}", content=f"seeded row {i}", outcome="success"),
                    vectors[i],
                )
                for i in range(start, min(count, start + 500))
            ],
        )


@dataclass
class Writers:
    """Threads writing through their own services (their own routers, like other replicas)
    until told to stop; they count what they committed."""

    services: list[ContextService]
    bullet: str
    tags: int = 0
    memories: int = 0
    errors: list[BaseException] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run_tags(self, w: int) -> None:
        service, i = self.services[w], 0
        try:
            while not self.stop.is_set():
                service.apply_delta(
                    "twin-a",
                    Delta(ops=[TagOp(op_id=f"w{w}-{i}", bullet_id=self.bullet, tag="helpful")]),
                )
                i += 1
                with self.lock:
                    self.tags += 1
        except BaseException as exc:
            self.errors.append(exc)

    def run_memories(self, w: int) -> None:
        service, i = self.services[w], 0
        try:
            while not self.stop.is_set():
                service.add_memories(
                    "twin-a2",
                    [
                        MemoryDraft(
                            title=f"live {w}-{i}",
                            content=f"Live memory {i} from writer {w}.",
                            outcome="failure",
                        )
                    ],
                )
                i += 1
                with self.lock:
                    self.memories += 1
        except BaseException as exc:
            self.errors.append(exc)

    def start(self) -> list[threading.Thread]:
        targets = [self.run_tags, self.run_tags, self.run_memories]
        threads = [threading.Thread(target=t, args=(i,)) for i, t in enumerate(targets)]
        for thread in threads:
            thread.start()
        return threads


def writer_services(make_service: ServiceFactory, control_url: str, n: int) -> list[ContextService]:
    # Every distinct text is its own memory here, so the row count is exact.
    settings = ContextSettings(tenancy_ttl_s=0, memory_dedup_threshold=1.0)
    return [make_service(control_url, settings=settings) for _ in range(n)]


def test_move_under_concurrent_writes_loses_nothing(
    make_service: ServiceFactory, sqlite_url: str, db_url: str
) -> None:
    target_url = db_url if "postgresql" in db_url else db_url.replace("parity.db", "shard-b.db")
    mover = make_service(sqlite_url)
    mover.apply_delta("twin-a", Delta(ops=[AddOp(op_id="c0", section="checks", content="Count.")]))
    bullet = bullet_id_for("checks", "c0")
    source = mover.router.store_for("plant")
    seeded = 3000
    seed_memories(source, "plant", seeded)
    writers = Writers(writer_services(make_service, sqlite_url, 3), bullet)
    threads = writers.start()
    time.sleep(0.5)  # writes before the move starts
    admin = ShardAdmin(mover, places=places(inference=target_url))
    report = admin.move("plant", MoveRequest(to=target_url, batch_size=200))
    time.sleep(0.5)  # and after it switched
    writers.stop.set()
    for thread in threads:
        thread.join()
    assert writers.errors == []
    assert report.verified and report.switched and report.source_deleted

    target = ShardStore(target_url)
    assert mover.shard_map.get("plant")[0] == normalize_url(target_url)  # type: ignore[index]
    with transaction(source.engine) as session:
        assert read_domain(session, "plant")[1:] == ("moved", target.label)
    assert count_rows(source, "plant") == 0
    rows = {
        name: table_check(target, "plant", name)[0]
        for name in ("bullets", "memories", "applied_ops")
    }
    assert rows == {
        "bullets": 1,
        "memories": seeded + writers.memories,
        "applied_ops": 1 + writers.tags,
    }
    fresh = make_service(sqlite_url)
    assert fresh.playbook("twin-a").bullets[0].helpful == writers.tags
    assert writers.tags > 0 and writers.memories > 0
    found = fresh.search_memories("twin-a", MemoryQuery(query="Live memory 0 from writer 2.", k=1))
    assert found.hits[0].memory.title == "live 2-0"


def test_move_back_and_forth_and_refusals(
    make_service: ServiceFactory, sqlite_url: str, tmp_path: object
) -> None:
    service = make_service(sqlite_url)
    service.apply_delta("twin-b", Delta(ops=[AddOp(op_id="g", section="checks", content="Grid.")]))
    elsewhere = sqlite_url.replace("test.db", "elsewhere.db")
    admin = ShardAdmin(service, places=places(elsewhere=elsewhere, home=sqlite_url))
    admin.move("grid", MoveRequest(to="elsewhere"))
    with pytest.raises(Exception) as same:
        admin.move("grid", MoveRequest(to=elsewhere))
    assert getattr(same.value, "field", None) == "to"
    back = admin.move("grid", MoveRequest(to=sqlite_url))  # the configured URL names it too
    assert back.verified and back.final_version >= 1
    assert [b.content for b in service.playbook("twin-b").bullets] == ["Grid."]
    service.apply_delta(
        "twin-b", Delta(ops=[AddOp(op_id="g2", section="checks", content="After.")])
    )
    assert len(service.playbook("twin-b").bullets) == 2


def test_a_move_goes_only_to_a_configured_place_that_admits_the_domain(
    make_service: ServiceFactory, sqlite_url: str, tmp_path: Path
) -> None:
    """A path typo, a URL nobody configured and a made-up sovereign place are refused before
    anything is created or copied; the place of a move is derived from its target."""
    service = make_service(sqlite_url)
    service.apply_delta("gov-1", Delta(ops=[AddOp(op_id="s", section="checks", content="Gov.")]))
    configured = f"sqlite:///{tmp_path / 'eu' / 'context.db'}"
    (tmp_path / "eu").mkdir()
    admin = ShardAdmin(
        service,
        places={
            **places(cloud=f"sqlite:///{tmp_path / 'cloud.db'}"),
            **places("sovereign", "eu", **{"sovereign-eu": configured}),
        },
    )
    typo = f"sqlite:///{tmp_path / 'ue' / 'context.db'}"
    for target in (typo, f"sqlite:///{tmp_path / 'mine.db'}", "postgresql://u:p@10.9.9.9/x"):
        with pytest.raises(InvalidInput) as refused:
            admin.move("gov", MoveRequest(to=target))
        assert refused.value.field == "to" and "not a configured place" in refused.value.message
    with pytest.raises(ValidationError):  # the caller cannot name a place: it is derived
        MoveRequest.model_validate(
            {"to": typo, "place": {"name": "x", "kind": "sovereign", "jurisdiction": "eu"}}
        )
    with pytest.raises(SovereigntyViolation) as outside:  # configured, but not for gov's tenancy
        admin.move("gov", MoveRequest(to="cloud"))
    assert outside.value.field == "to"
    assert not (tmp_path / "ue").exists() and not (tmp_path / "mine.db").exists()
    assert not (tmp_path / "cloud.db").exists()

    report = admin.move("gov", MoveRequest(to="sovereign-eu"))
    assert report.switched
    entry = service.shard_map.get("gov")
    assert entry is not None and entry[0] == normalize_url(configured)
    assert entry[1] is not None and (entry[1].name, entry[1].kind, entry[1].jurisdiction) == (
        "sovereign-eu",
        "sovereign",
        "eu",
    )


def test_after_a_move_the_next_start_serves_the_domain_where_it_moved(
    make_service: ServiceFactory, sqlite_url: str, tmp_path: Path
) -> None:
    """The next process (`trifecta run` / `serve` after `shard move`) reads the moved shard and
    writes to it at once; the fenced old copy is never written again."""
    service = make_service(sqlite_url)
    service.apply_delta("twin-b", Delta(ops=[AddOp(op_id="g", section="checks", content="Grid.")]))
    source = service.router.store_for("grid")
    target_url = f"sqlite:///{tmp_path / 'grid.db'}"
    ShardAdmin(service, places=places(inference=target_url)).move(
        "grid", MoveRequest(to="inference", keep_source=True)
    )
    service.close()

    restarted = make_service(sqlite_url)  # a new process over the same control database
    started = time.monotonic()
    restarted.apply_delta(
        "twin-b", Delta(ops=[AddOp(op_id="g2", section="checks", content="After.")])
    )
    assert time.monotonic() - started < 5  # no 30 s wait on a fence
    assert [b.content for b in restarted.playbook("twin-b").bullets] == ["Grid.", "After."]
    assert table_check(ShardStore(target_url), "grid", "bullets")[0] == 2
    assert table_check(source, "grid", "bullets")[0] == 1  # the fenced copy, as it was
    with transaction(source.engine) as session:
        assert read_domain(session, "grid")[1] == "moved"


def test_the_move_route_answers_bad_targets_with_4xx_naming_the_field(
    make_service: ServiceFactory, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over HTTP (admin): a made-up place, any URL, an unreachable configured Postgres: 4xx
    naming `to`, never a 500, and the domain stays where it was."""
    monkeypatch.setenv(
        "TRIFECTA_SHARD_URLS", '{"inference": "postgresql+psycopg://u:p@127.0.0.1:1/x"}'
    )
    get_settings.cache_clear()
    service = make_service(sqlite_url)
    service.apply_delta("twin-b", Delta(ops=[AddOp(op_id="g", section="checks", content="Grid.")]))
    with (
        live_server(create_app(service, auth=AllowLocal())) as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        bodies = [
            {"to": "sqlite:////tmp/anywhere.db"},
            {"to": "sovereign"},  # configured, reserved for sovereign capsules
            {"to": "inference"},  # configured, but its Postgres does not answer
            {"to": "inference", "place": {"name": "x", "kind": "sovereign"}},
        ]
        for body in bodies:
            answer = http.post("/shards/grid/move", json=body)
            assert answer.status_code in (403, 422), (body, answer.text)
            assert answer.json()["error"]["field"] in ("to", "place"), answer.text
    assert service.shard_map.get("grid") is None  # still on the default shard
    assert [b.content for b in service.playbook("twin-b").bullets] == ["Grid."]
