"""The key store's renewal ahead of expiry: a key in steady use is answered from memory and
its row re-read off the caller's thread, while a revocation is still seen within the key's
`ttl_s` plus one check (here or in another process) and a renewal never revives it."""

from __future__ import annotations

import threading
import time

import pytest
from argon2 import PasswordHasher

from trifecta.core.auth import (
    LOCAL_ADMIN,
    AllowLocal,
    Principal,
    StaticKeys,
    remembered_principal,
)
from trifecta.core.db import get_engine
from trifecta.core.errors import Unauthenticated
from trifecta.core.settings import get_settings
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.keys import KeyStore
from trifecta.fleet.registry import CapsuleRegistry

CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
TWIN = Capsule(id="renew-twin", name="Twin", kind="digital_twin", domain="renew-grid")
TTL_S = 0.4


@pytest.fixture
def store() -> KeyStore:
    registry = CapsuleRegistry(get_engine(get_settings().db_url))
    registry.add(TWIN)
    return KeyStore(registry.engine, hasher=CHEAP, ttl_s=TTL_S)


def record_row_reads(
    store: KeyStore, monkeypatch: pytest.MonkeyPatch, delay_s: float = 0.0
) -> list[str]:
    """Wrap the store's row read: the names of the threads that read, in order."""
    readers: list[str] = []
    original = store._check_row

    def check_row(key_id: str) -> tuple[Principal, str]:
        readers.append(threading.current_thread().name)
        time.sleep(delay_s)
        return original(key_id)

    monkeypatch.setattr(store, "_check_row", check_row)
    return readers


def test_a_key_in_steady_use_is_renewed_off_the_callers_thread(
    store: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = store.create(capsule_id=TWIN.id).token
    readers = record_row_reads(store, monkeypatch)
    assert store.remembered(token) is None  # never checked: the caller must read the row
    assert store.authenticate(token).capsule_id == TWIN.id
    deadline = time.monotonic() + 3 * TTL_S
    while time.monotonic() < deadline:  # well past the ttl, never a blocking read
        principal = store.remembered(token)
        assert principal is not None and principal.capsule_id == TWIN.id
        time.sleep(0.01)
    caller = threading.current_thread().name
    assert readers[0] == caller  # the first check only
    assert len(readers) >= 3 and all(name != caller for name in readers[1:])
    assert store.renewals >= 2


def test_a_revocation_elsewhere_is_seen_within_the_ttl_and_one_check(store: KeyStore) -> None:
    other_process = KeyStore(store.engine, hasher=CHEAP, ttl_s=TTL_S)
    created = store.create(capsule_id=TWIN.id)
    assert other_process.authenticate(created.token).capsule_id == TWIN.id
    time.sleep(TTL_S * 0.8)
    assert other_process.remembered(created.token) is not None  # starts a renewal
    revoked_at = time.monotonic()
    store.revoke(created.key.key_id)
    while other_process.remembered(created.token) is not None:
        assert time.monotonic() - revoked_at < TTL_S + 0.5, "revocation not seen in time"
        time.sleep(0.01)
    with pytest.raises(Unauthenticated):
        other_process.authenticate(created.token)


def test_a_renewal_in_flight_does_not_revive_a_key_revoked_here(
    store: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = store.create(capsule_id=TWIN.id)
    store.authenticate(created.token)
    readers = record_row_reads(store, monkeypatch, delay_s=0.2)
    time.sleep(TTL_S * 0.8)
    assert store.remembered(created.token) is not None  # the renewal reads a live row...
    wait_until = time.monotonic() + 1.0
    while not readers:
        assert time.monotonic() < wait_until
        time.sleep(0.005)
    store.revoke(created.key.key_id)  # ...and the revocation lands before it finishes
    time.sleep(0.3)
    assert store.remembered(created.token) is None
    with pytest.raises(Unauthenticated):
        store.authenticate(created.token)


def test_a_wrong_secret_for_a_remembered_key_is_refused_from_memory(store: KeyStore) -> None:
    created = store.create(capsule_id=TWIN.id)
    store.authenticate(created.token)
    forged = created.token[:-4] + ("aaaa" if not created.token.endswith("aaaa") else "bbbb")
    with pytest.raises(Unauthenticated):
        store.remembered(forged)


def test_remembered_principal_answers_without_io_or_defers() -> None:
    twin = Principal(key_id="t", capsule_id=TWIN.id)
    assert remembered_principal(AllowLocal(), None) == LOCAL_ADMIN
    assert remembered_principal(StaticKeys({"s3cret": twin}), "Bearer s3cret") == twin
    with pytest.raises(Unauthenticated):
        remembered_principal(StaticKeys({"s3cret": twin}), "Bearer other")

    class Remote:  # an authenticator that always needs I/O
        def authenticate(self, token: str) -> Principal:
            return twin

    assert remembered_principal(Remote(), "Bearer anything") is None
