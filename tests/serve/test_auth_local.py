"""The embedded default: a local admin key written once, owner-only, on first start of
`trifecta serve`; `--insecure-local` only on loopback."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from tests.support import run_cli
from trifecta.core.auth import LOCAL_ADMIN
from trifecta.core.db import get_engine
from trifecta.core.errors import InvalidInput
from trifecta.fleet.keys import KeyStore
from trifecta.serve.auth import ensure_local_admin_key, is_loopback, loopback_only

CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def test_first_start_writes_an_owner_only_admin_key_once(tmp_path: Path) -> None:
    store = KeyStore(get_engine(f"sqlite:///{tmp_path / 'control.db'}"), hasher=CHEAP)
    path = ensure_local_admin_key(store, tmp_path / "data")
    assert path == tmp_path / "data" / "admin.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert store.authenticate(token).admin
    assert ensure_local_admin_key(store, tmp_path / "data") == path  # not replaced
    assert path.read_text().strip() == token and len(store.list()) == 1


def test_no_file_when_admin_keys_were_made_elsewhere(tmp_path: Path) -> None:
    store = KeyStore(get_engine(f"sqlite:///{tmp_path / 'control.db'}"), hasher=CHEAP)
    store.create(admin=True)
    assert ensure_local_admin_key(store, tmp_path) is None
    assert not (tmp_path / "admin.key").exists()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("example.org", False),
    ],
)
def test_insecure_local_only_on_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    if loopback:
        assert loopback_only(host).authenticate("anything") == LOCAL_ADMIN
    else:
        with pytest.raises(InvalidInput) as refused:
            loopback_only(host)
        assert refused.value.field == "host"


def test_serve_refuses_insecure_local_on_a_public_address(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run_cli(["serve", "--insecure-local", "--host", "0.0.0.0"], capsys)
    assert code == 2 and err.count("\n") == 1 and "host:" in err and "loopback" in err
