from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import bindparam, column, select, table, text

from trifecta.core.db import RowRead, ensure_schema, get_engine, normalize_url, transaction
from trifecta.core.errors import InvalidInput
from trifecta.core.settings import get_settings


def test_normalize_url_accepts_both_backends() -> None:
    assert normalize_url("postgresql://u:p@h/d") == "postgresql+psycopg://u:p@h/d"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(InvalidInput) as err:
        normalize_url("mysql://u@h/d")
    assert err.value.field == "database_url"


def test_sqlite_runs_in_wal_mode(sqlite_url: str) -> None:
    engine = get_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_migrations_run_once_on_first_use_on_both_backends(db_url: str) -> None:
    engine = get_engine(db_url)
    ensure_schema(engine, "trifecta.fleet")
    ensure_schema(engine, "trifecta.fleet")  # idempotent
    with transaction(engine) as session:
        version = session.execute(text("select version_num from alembic_version_fleet")).scalar()
        assert version == "fleet_0003"  # capsules, API keys, then domain tenancies
        assert session.execute(text("select count(*) from capsules")).scalar() == 0


def test_default_database_lives_in_the_data_directory(isolated_settings: Path) -> None:
    settings = get_settings()
    assert settings.data_dir == isolated_settings
    assert settings.db_url == f"sqlite:///{isolated_settings / 'trifecta.db'}"


def test_settings_read_toml_then_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "trifecta.toml").write_text('phase = "pilot"\nredis_url = "redis://toml"\n')
    get_settings.cache_clear()
    assert get_settings().phase == "pilot" and get_settings().redis_url == "redis://toml"
    monkeypatch.setenv("TRIFECTA_PHASE", "full")
    get_settings.cache_clear()
    assert get_settings().phase == "full"


def test_row_read_reads_one_row_and_sees_other_writers(db_url: str) -> None:
    """`RowRead` answers the row as any session would, None when there is none, and a write
    committed elsewhere by the next read (no transaction held open between reads)."""
    engine = get_engine(db_url)
    with transaction(engine) as session:
        session.execute(text("create table kv (k varchar(8) primary key, v integer, w text)"))
        session.execute(text("insert into kv values ('a', 1, null)"))
    kv = table("kv", column("k"), column("v"), column("w"))
    read = RowRead(engine, select(kv.c.v, kv.c.w).where(kv.c.k == bindparam("key")))
    assert read.read(key="a") == (1, None)
    assert read.read(key="b") is None
    with transaction(engine) as session:
        session.execute(text("update kv set v = 2, w = 'moved' where k = 'a'"))
    assert read.read(key="a") == (2, "moved")
