"""API keys: stored as argon2 hashes, found by key id, revoked at once here and within the
verification TTL in another process, dead with their capsule (and not revived by a new
capsule of the same id), and `trifecta keys create | list | revoke`."""

from __future__ import annotations

import time

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from tests.support import run_cli
from trifecta.core.db import get_engine
from trifecta.core.errors import InvalidInput, NotFound, Unauthenticated
from trifecta.core.settings import get_settings
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.keys import KeyStore, keys_table, split_token
from trifecta.fleet.registry import CapsuleRegistry

# Real argon2id, with parameters small enough for a test (the store defaults to RFC 9106's).
CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
TWIN = Capsule(id="keys-twin", name="Twin", kind="digital_twin", domain="keys-grid")


@pytest.fixture
def registry() -> CapsuleRegistry:
    registry = CapsuleRegistry(get_engine(get_settings().db_url))
    registry.add(TWIN)
    return registry


@pytest.fixture
def store(registry: CapsuleRegistry) -> KeyStore:
    return KeyStore(registry.engine, hasher=CHEAP)


def test_keys_are_stored_as_argon2_hashes_and_found_by_id(store: KeyStore) -> None:
    admin = store.create(admin=True, label="ops")
    twin = store.create(capsule_id=TWIN.id)
    key_id, secret = split_token(twin.token)
    assert twin.token.startswith("trf_") and key_id == twin.key.key_id and len(secret) >= 40
    with store.engine.connect() as conn:
        rows = {r.key_id: r for r in conn.execute(select(keys_table))}
    assert rows[key_id].secret_hash.startswith("$argon2id$")
    assert secret not in rows[key_id].secret_hash and twin.token not in str(rows)
    assert store.authenticate(admin.token).admin
    principal = store.authenticate(twin.token)
    assert principal.capsule_id == TWIN.id and not principal.admin
    assert [k.key_id for k in store.list()] == [admin.key.key_id, key_id]


@pytest.mark.parametrize(
    "token",
    [
        "",
        "Bearer x",
        "trf_notanid_secret",
        "trf_0123456789ab_secret",  # well formed, no such key
    ],
)
def test_malformed_or_unknown_tokens_are_refused(store: KeyStore, token: str) -> None:
    with pytest.raises(Unauthenticated) as refused:
        store.authenticate(token)
    assert refused.value.field == "authorization"


def test_a_wrong_secret_is_refused_even_right_after_the_right_one(store: KeyStore) -> None:
    twin = store.create(capsule_id=TWIN.id)
    store.authenticate(twin.token)  # now remembered for ttl_s
    with pytest.raises(Unauthenticated):
        store.authenticate(twin.token[:-2] + "xx")


def test_revocation_is_seen_at_once_here_and_within_the_ttl_elsewhere(store: KeyStore) -> None:
    other_process = KeyStore(store.engine, hasher=CHEAP, ttl_s=0.5)
    twin = store.create(capsule_id=TWIN.id)
    assert other_process.authenticate(twin.token).capsule_id == TWIN.id
    assert store.authenticate(twin.token).capsule_id == TWIN.id
    revoked_at = time.monotonic()
    assert store.revoke(twin.key.key_id).revoked_at is not None
    with pytest.raises(Unauthenticated):
        store.authenticate(twin.token)
    while True:  # the other store re-reads the row once its cache entry is ttl_s old
        try:
            other_process.authenticate(twin.token)
        except Unauthenticated:
            break
        assert time.monotonic() - revoked_at < 1.0, "revocation not seen within a second"
        time.sleep(0.02)
    assert [k.active for k in store.list()] == [False]
    assert store.list(active_only=True) == []


def test_a_removed_capsule_s_key_dies_and_stays_dead(
    store: KeyStore, registry: CapsuleRegistry
) -> None:
    twin = store.create(capsule_id=TWIN.id)
    assert store.authenticate(twin.token).capsule_id == TWIN.id
    registry.remove(TWIN.id)
    store._forget(twin.key.key_id)  # the TTL, elapsed
    with pytest.raises(Unauthenticated, match="removed"):
        store.authenticate(twin.token)
    time.sleep(1.1)  # SQLite stamps a capsule's creation to the second
    registry.add(TWIN)  # a new capsule of the same id is another tenant
    with pytest.raises(Unauthenticated, match="removed"):
        store.authenticate(twin.token)
    fresh = store.create(capsule_id=TWIN.id)
    assert store.authenticate(fresh.token).capsule_id == TWIN.id


def test_a_key_is_the_admin_s_or_one_existing_capsule_s(store: KeyStore) -> None:
    with pytest.raises(InvalidInput):
        store.create()
    with pytest.raises(InvalidInput):
        store.create(admin=True, capsule_id=TWIN.id)
    with pytest.raises(NotFound):
        store.create(capsule_id="nobody")
    with pytest.raises(NotFound):
        store.revoke("0123456789ab")


def test_keys_cli_create_list_revoke(
    registry: CapsuleRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["keys", "create", "--capsule", TWIN.id, "--label", "ci"], capsys)
    assert code == 0, err
    token = out.strip()
    key_id, _ = split_token(token)
    assert "not shown again" in err and key_id in err
    assert KeyStore(registry.engine).authenticate(token).capsule_id == TWIN.id
    code, out, _ = run_cli(["keys", "list"], capsys)
    assert code == 0 and key_id in out and TWIN.id in out and token not in out
    code, out, _ = run_cli(["keys", "revoke", key_id], capsys)
    assert code == 0 and f"revoked key {key_id}" in out
    with pytest.raises(Unauthenticated):
        KeyStore(registry.engine).authenticate(token)
    code, _, err = run_cli(["keys", "list", "--active"], capsys)
    assert code == 0


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["keys", "create"], "capsule"),
        (["keys", "create", "--admin", "--capsule", TWIN.id], "capsule"),
        (["keys", "create", "--capsule", "nobody"], "capsule"),
        (["keys", "revoke", "0123456789ab"], "key_id"),
    ],
)
def test_keys_cli_bad_input_is_one_line_exit_2(
    registry: CapsuleRegistry, capsys: pytest.CaptureFixture[str], argv: list[str], field: str
) -> None:
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and f"{field}:" in err
