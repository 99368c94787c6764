"""Bad input tried as a new user would: each is one line on stderr naming the field, exit code
2, and nothing changed (no file created, no data moved, no server bound)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import run_cli as run
from trifecta.core.settings import get_settings


def _one_line(err: str, field: str) -> None:
    assert err.startswith(f"trifecta: error: {field}: "), err
    assert err.count("\n") == 1 and "Traceback" not in err, err


SERVERS = [
    ["serve"],
    ["cognitive", "serve"],
    ["context", "serve"],
    ["env", "serve", "--env", "inference"],
    ["edge", "node", "--name", "n"],
]


@pytest.mark.parametrize("server", SERVERS, ids=" ".join)
@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_every_server_refuses_a_port_out_of_range(
    server: list[str], port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Uvicorn took 99999 as 34463 without a word; the shared `--port` refuses it before any
    model loads."""
    code, _, err = run([*server, "--port", port], capsys)
    assert code == 2
    _one_line(err, "port")


def test_a_malformed_config_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "trifecta.toml"  # the file the autouse fixture points TRIFECTA_CONFIG at
    config.write_text('phase = "pilot"\ndatabase_url = \n[context\n')
    get_settings.cache_clear()
    code, _, err = run(["capsule", "list"], capsys)
    assert code == 2
    _one_line(err, "trifecta.toml")
    assert "line 2" in err
    config.write_text('phase = "production"\n')  # well-formed, a bad value: names the setting
    get_settings.cache_clear()
    code, _, err = run(["capsule", "list"], capsys)
    assert code == 2
    _one_line(err, "phase")


UNREACHABLE = "postgresql+psycopg://u:secret@127.0.0.1:1/x"  # nothing listens on port 1


def test_an_unreachable_postgres_is_one_line_naming_the_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "ctx.db"
    cases = [
        (
            ["context", "migrate", "--from", UNREACHABLE, "--to", "sqlite:///o.db", "--no-switch"],
            "from",
        ),
        (["context", "migrate", "--from", "sqlite:///ctx.db", "--to", UNREACHABLE], "from"),
    ]
    for argv, field in cases:
        code, _, err = run(argv, capsys)
        assert code == 2
        _one_line(err, field)
        assert "secret" not in err  # the password never reaches a terminal
    assert not source.exists()  # a missing source used to become an empty ./ctx.db
    monkeypatch.setenv("TRIFECTA_SHARD_URLS", f'{{"inference": "{UNREACHABLE}"}}')
    get_settings.cache_clear()
    code, _, err = run(["capsule", "add", "--id", "t", "--domain", "grid"], capsys)
    assert code == 0, err
    code, _, err = run(["context", "shard", "move", "grid", "--to", "inference"], capsys)
    assert code == 2
    _one_line(err, "to")
    assert "cannot connect" in err and "secret" not in err
    monkeypatch.setenv("TRIFECTA_DATABASE_URL", UNREACHABLE)
    get_settings.cache_clear()
    code, _, err = run(["capsule", "list"], capsys)
    assert code == 2
    _one_line(err, "database_url")
    assert "secret" not in err


def test_migrate_from_a_source_that_does_not_exist_copies_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Once "0 rows copied, all verified" and exit 0, with an empty source file created."""
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "out.db"
    for source in ("sqlite:///ctx.db", f"sqlite:///{tmp_path / 'no' / 'such.db'}"):
        argv = ["context", "migrate", "--from", source, "--to", f"sqlite:///{target}"]
        code, _, err = run([*argv, "--no-switch"], capsys)
        assert code == 2
        _one_line(err, "from")
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")  # a file, but no context in it
    code, _, err = run(
        [
            "context",
            "migrate",
            "--from",
            f"sqlite:///{empty}",
            "--to",
            f"sqlite:///{target}",
            "--no-switch",
        ],
        capsys,
    )
    assert code == 2 and "holds no context tables" in err
    _one_line(err, "from")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]  # nothing created


def test_a_path_typo_in_shard_move_moves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Once the directory was created and live data moved there."""
    assert run(["capsule", "add", "--id", "t", "--domain", "grid"], capsys)[0] == 0
    typo = f"sqlite:///{tmp_path / 'dta' / 'grid.db'}"
    code, _, err = run(["context", "shard", "move", "grid", "--to", typo], capsys)
    assert code == 2
    _one_line(err, "to")
    assert not (tmp_path / "dta").exists()
    code, _, err = run(["context", "shard", "move", "grid", "--to", "sovereign"], capsys)
    assert code == 2  # a configured place, but reserved for sovereign capsules
    _one_line(err, "to")


def test_the_probe_from_the_cli_an_emptied_sovereign_domain_stays_sovereign(
    capsys: pytest.CaptureFixture[str],
) -> None:
    add = ["capsule", "add", "--id", "gov-1", "--kind", "sovereign", "--jurisdiction", "eu"]
    assert run([*add, "--domain", "sov-eu-grid"], capsys)[0] == 0
    assert run(["capsule", "remove", "gov-1"], capsys)[0] == 0
    twin = ["capsule", "add", "--id", "twin-x", "--kind", "digital_twin", "--domain", "sov-eu-grid"]
    code, _, err = run(twin, capsys)
    assert code == 2
    _one_line(err, "domain")
    assert "for good" in err
    code, out, _ = run(["capsule", "list", "--domain", "sov-eu-grid"], capsys)
    assert code == 0 and "twin-x" not in out
