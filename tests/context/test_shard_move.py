"""Online shard moves: a domain moves to another database while writers keep writing, and
every write lands exactly once on the new shard."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from tests.context.conftest import ServiceFactory
from trifecta.context.admin import MoveRequest, ShardAdmin
from trifecta.context.copier import count_rows, table_check
from trifecta.context.deltas import AddOp, Delta, TagOp
from trifecta.context.facade import ContextService
from trifecta.context.merge import bullet_id_for
from trifecta.context.models import MemoryDraft, MemoryQuery
from trifecta.context.settings import ContextSettings
from trifecta.context.sql import read_domain
from trifecta.context.store import PendingMemory, ShardStore
from trifecta.core.db import normalize_url, transaction

pytestmark = pytest.mark.slow


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
    report = ShardAdmin(mover).move("plant", MoveRequest(to=target_url, batch_size=200))
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
    admin = ShardAdmin(service)
    elsewhere = sqlite_url.replace("test.db", "elsewhere.db")
    admin.move("grid", MoveRequest(to=elsewhere))
    with pytest.raises(Exception) as same:
        admin.move("grid", MoveRequest(to=elsewhere))
    assert getattr(same.value, "field", None) == "to"
    back = admin.move("grid", MoveRequest(to=sqlite_url))
    assert back.verified and back.final_version >= 1
    assert [b.content for b in service.playbook("twin-b").bullets] == ["Grid."]
    service.apply_delta(
        "twin-b", Delta(ops=[AddOp(op_id="g2", section="checks", content="After.")])
    )
    assert len(service.playbook("twin-b").bullets) == 2
