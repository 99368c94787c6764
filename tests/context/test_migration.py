"""Vertical scaling: `trifecta context migrate` copies SQLite to Postgres in verified batches,
keeps writers' updates, and resumes after it is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.context.conftest import ServiceFactory, register_capsules
from tests.context.test_shard_move import Writers, places, seed_memories, writer_services
from trifecta.context import tables
from trifecta.context.admin import ShardAdmin, migrate
from trifecta.context.copier import table_check
from trifecta.context.deltas import AddOp, Delta
from trifecta.context.merge import bullet_id_for
from trifecta.context.shards import ShardMap
from trifecta.context.store import ShardStore
from trifecta.core.db import create_db_engine, normalize_url, transaction

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_migrate_sqlite_to_postgres_under_concurrent_writes(
    make_service: ServiceFactory, sqlite_url: str, postgres_url: str
) -> None:
    service = make_service(sqlite_url)
    service.apply_delta(
        "twin-a", Delta(ops=[AddOp(op_id="c0", section="checks", content="Count.")])
    )
    service.apply_delta("twin-b", Delta(ops=[AddOp(op_id="g0", section="checks", content="Grid.")]))
    source = ShardStore(sqlite_url)
    seed_memories(source, "plant", 2500)
    seed_memories(source, "grid", 500, seed=1)
    writers = Writers(writer_services(make_service, sqlite_url, 3), bullet_id_for("checks", "c0"))
    threads = writers.start()
    time.sleep(0.3)
    admin = ShardAdmin(service, places=places(inference=postgres_url))
    report = migrate(sqlite_url, postgres_url, batch_size=250, switch=admin)
    time.sleep(0.3)
    writers.stop.set()
    for thread in threads:
        thread.join()
    assert writers.errors == []
    assert [d.domain for d in report.domains] == ["grid", "plant"]
    assert all(d.verified and d.switched and not d.source_deleted for d in report.domains)

    target = ShardStore(postgres_url)
    assert table_check(target, "plant", "memories")[0] == 2500 + writers.memories
    assert table_check(target, "plant", "applied_ops")[0] == 1 + writers.tags
    assert table_check(target, "grid", "memories")[0] == 500
    assert make_service(sqlite_url).playbook("twin-a").bullets[0].helpful == writers.tags
    assert ShardMap(sqlite_url).get("plant")[0] == normalize_url(postgres_url)  # type: ignore[index]


def progress_cursor(postgres_url: str) -> dict | None:
    engine = create_db_engine(postgres_url, pool_size=1)
    try:
        with transaction(engine) as session:
            return session.execute(select(tables.copy_progress.c.cursor)).scalar_one_or_none()
    except Exception:  # the table appears only once the migration created the schema
        return None
    finally:
        engine.dispose()


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    code = "import sys; from trifecta.cli import main; main(sys.argv[1:])"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_migrate_command_resumes_after_it_is_killed(
    sqlite_url: str, postgres_url: str, tmp_path: Path
) -> None:
    source = ShardStore(sqlite_url)
    seed_memories(source, "plant", 4000)
    env = {
        **os.environ,
        "TRIFECTA_DATABASE_URL": sqlite_url,
        "TRIFECTA_DATA_DIR": str(tmp_path),
        "TRIFECTA_SHARD_URLS": json.dumps({"inference": postgres_url}),  # the configured place
    }
    register_capsules(sqlite_url)
    args = ["context", "migrate", "--from", sqlite_url, "--to", postgres_url, "--batch-size", "20"]
    first = run_cli(args, env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        cursor = progress_cursor(postgres_url)
        if cursor and "memories" in cursor:
            break
        assert first.poll() is None, "the migration finished before it could be interrupted"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    copied_before = table_check(ShardStore(postgres_url), "plant", "memories")[0]
    assert 0 < copied_before < 4000

    second = run_cli([*args, "--json"], env)
    out, err = second.communicate(timeout=240)
    assert second.returncode == 0, err
    report = json.loads(out[out.index("{") :])
    domain = report["domains"][0]
    assert domain["resumed"] and domain["verified"]
    assert domain["copied_rows"] <= 4000 - copied_before + 20  # it did not start over
    checks = {c["table"]: c for c in domain["checks"]}
    assert checks["memories"]["target_rows"] == 4000
    assert checks["memories"]["source_checksum"] == checks["memories"]["target_checksum"]
    # The source is fenced; the shard map in the control database points at Postgres.
    assert ShardMap(sqlite_url).get("plant")[0] == normalize_url(postgres_url)  # type: ignore[index]


def test_migrate_refuses_bad_urls_with_one_line(sqlite_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "TRIFECTA_DATABASE_URL": sqlite_url, "TRIFECTA_DATA_DIR": str(tmp_path)}
    proc = run_cli(["context", "migrate", "--from", sqlite_url, "--to", "mysql://x@y/z"], env)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err.strip().splitlines() == [
        "trifecta: error: to: 'mysql://x@y/z' is not a configured place: name an environment "
        "that keeps context shards, or the database configured for it (shard_urls) (allowed: "
        "inference, local, sovereign, sovereign-us)"
    ]
    proc = run_cli(
        ["context", "migrate", "--from", sqlite_url, "--to", "mysql://x@y/z", "--no-switch"], env
    )
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err.strip().splitlines() == [
        "trifecta: error: to: unsupported driver 'mysql' (allowed: postgresql+psycopg, sqlite)"
    ]
