"""One schema on SQLite and Postgres: the same work gives the same rows, and concurrent
writers never lose an update."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import select

from tests.context.conftest import ServiceFactory
from trifecta.context import tables
from trifecta.context.deltas import AddOp, Delta, RemoveOp, TagOp
from trifecta.context.facade import ContextService
from trifecta.context.merge import bullet_id_for
from trifecta.context.models import MemoryDraft, MemoryQuery
from trifecta.context.trajectory import Trajectory, TrajectoryStep
from trifecta.core.db import transaction

TIMESTAMPS = {"created_at", "updated_at", "applied_at"}


def scenario(service: ContextService) -> None:
    """Deltas (with a near-duplicate, a prune and a removal), memories, and two learns."""
    ops = [
        AddOp(
            op_id="s1",
            section="strategies",
            content="Read the named sensor from the telemetry first.",
        ),
        AddOp(
            op_id="s2", section="strategies", content="Read the named sensor from telemetry first."
        ),
        AddOp(
            op_id="s3", section="pitfalls", content="A minus sign applies only to the next term."
        ),
        AddOp(op_id="s4", section="checks", content="Answer with the bare integer."),
    ]
    service.apply_delta("twin-a", Delta(ops=ops))
    s3, s4 = bullet_id_for("pitfalls", "s3"), bullet_id_for("checks", "s4")
    service.apply_delta(
        "twin-a",
        Delta(
            ops=[
                TagOp(op_id="t1", bullet_id=s3, tag="harmful", count=4),
                RemoveOp(op_id="r1", bullet_id=s4),
            ]
        ),
    )
    service.add_memories(
        "twin-a",
        [
            MemoryDraft(
                title="Chains", content="Subtract the last operand after adding.", outcome="success"
            ),
            MemoryDraft(
                title="Chains", content="Subtract the last operand after adding!", outcome="success"
            ),
            MemoryDraft(
                title="Lookups", content="The sensor letter names the value.", outcome="failure"
            ),
        ],
    )
    survivor = min(bullet_id_for("strategies", "s1"), bullet_id_for("strategies", "s2"))
    for i, outcome in enumerate(["success", "failure"]):
        service.learn(
            Trajectory(
                id=f"traj-{i}",
                capsule_id="twin-a",
                prompt="t=41,p=17;p?",
                answer="17",
                outcome=outcome,
                judge="verifier",
                task_kind="lookup",
                steps=[TrajectoryStep(layer="edge", tier="n1", mean_entropy=0.1 * (i + 1))],
                bullet_ids=[survivor, s3],
            )
        )


def dump(service: ContextService, domain: str) -> dict[str, list[tuple[Any, ...]]]:
    store = service.router.store_for(domain)
    out = {}
    with transaction(store.engine) as session:
        for name, (table, keys) in tables.DATA_TABLES.items():
            columns = [c for c in table.columns if c.name not in TIMESTAMPS]
            rows = session.execute(
                select(*columns)
                .where(table.c.domain == domain)
                .order_by(*(table.c[k] for k in keys))
            )
            out[name] = [tuple(r) for r in rows]
    return out


def test_scenario_gives_expected_results_on_both_backends(
    make_service: ServiceFactory, db_url: str
) -> None:
    service = make_service(db_url)
    scenario(service)
    rows = dump(service, "plant")
    statuses = sorted(
        r[6] for r in rows["bullets"]
    )  # (domain, id, section, content, helpful, harmful, status, ...)
    assert statuses == ["active", "merged", "pruned", "removed"]
    assert (
        len(rows["memories"]) == 2 + 2
    )  # one folded into its twin, plus one per learned trajectory
    survivor = min(bullet_id_for("strategies", "s1"), bullet_id_for("strategies", "s2"))
    bullet = {b.id: b for b in service.playbook("twin-a").bullets}[survivor]
    assert (bullet.helpful, bullet.harmful) == (1, 1)
    hits = service.search_memories("twin-a", MemoryQuery(query="chain subtraction", k=1)).hits
    assert hits[0].memory.title == "Chains" and hits[0].memory.reinforced == 1


@pytest.mark.postgres
def test_sqlite_and_postgres_store_identical_rows(
    make_service: ServiceFactory, sqlite_url: str, postgres_url: str
) -> None:
    on_sqlite, on_postgres = make_service(sqlite_url), make_service(postgres_url)
    scenario(on_sqlite)
    scenario(on_postgres)
    assert dump(on_sqlite, "plant") == dump(on_postgres, "plant")


@pytest.mark.slow
def test_concurrent_writers_lose_no_increment(make_service: ServiceFactory, db_url: str) -> None:
    services = [make_service(db_url) for _ in range(3)]
    services[0].apply_delta(
        "twin-a", Delta(ops=[AddOp(op_id="c0", section="checks", content="Count me.")])
    )
    bullet = bullet_id_for("checks", "c0")
    writers, per_writer = 6, 25
    errors: list[BaseException] = []

    def write(w: int) -> None:
        service = services[w % len(services)]
        capsule = "twin-a" if w % 2 else "twin-a2"  # two capsules of the same domain
        try:
            for i in range(per_writer):
                service.apply_delta(
                    capsule,
                    Delta(
                        ops=[
                            TagOp(
                                op_id=f"w{w}-{i}",
                                bullet_id=bullet,
                                tag="helpful" if i % 3 else "harmful",
                            )
                        ]
                    ),
                )
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    total = writers * per_writer
    harmful = writers * len(range(0, per_writer, 3))
    rows = dump(services[0], "plant")
    assert [(r[4], r[5]) for r in rows["bullets"]] == [(total - harmful, harmful)]
    assert len(rows["applied_ops"]) == 1 + total
    assert services[0].current_version("plant") == 1 + total
