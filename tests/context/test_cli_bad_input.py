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
