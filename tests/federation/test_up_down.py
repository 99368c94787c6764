"""`trifecta up`, `status`, `down` as a user runs them: environments as processes on loopback
that find each other from their seeds (A2A cards), one killed and seen down by the others and
by `status`, then all stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ENVS = ("edge", "edge-eu")  # the lightest sites: an edge mesh each, no language models


def _trifecta(data: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trifecta.cli", *args],
        env=os.environ | {"TRIFECTA_DATA_DIR": str(data), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _rows(shown: str) -> dict[str, str]:
    """`trifecta status`'s table rows by environment name."""
    return {line.split("│")[1].strip(): line for line in shown.splitlines() if "│" in line}


def _edge_eu_sees_edge(shown: str) -> bool:
    row = _rows(shown).get("edge-eu", "││")
    return "edge " in row.split("│")[-2] + " "


def _status_until(data: Path, wanted: Callable[[str], bool], deadline_s: float = 60) -> str:
    deadline = time.monotonic() + deadline_s
    while True:
        shown = _trifecta(data, "status").stdout
        if wanted(shown) or time.monotonic() > deadline:
            return shown
        time.sleep(1)


def test_up_status_down(tmp_path: Path) -> None:
    started = _trifecta(tmp_path, "up", *(a for env in ENVS for a in ("--env", env)))
    assert started.returncode == 0, started.stderr[-2000:]
    state = json.loads((tmp_path / "federation" / "up.json").read_text())
    assert [e["name"] for e in state["environments"]] == list(ENVS)
    assert oct((tmp_path / "federation" / "up.json").stat().st_mode)[-3:] == "600"
    try:
        # Discovery refreshes on an interval: wait until each edge site has seen the other.
        shown = _status_until(tmp_path, _edge_eu_sees_edge)
        rows = _rows(shown)
        assert "up" in rows["edge"] and "edge-eu" in rows["edge"].split("│")[-2]
        assert "up" in rows["edge-eu"] and "edge " in rows["edge-eu"].split("│")[-2] + " "
        victim = next(e for e in state["environments"] if e["name"] == "edge-eu")
        os.killpg(victim["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            after = _trifecta(tmp_path, "status")
            if after.returncode == 1 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert after.returncode == 1 and "cannot be reached" in after.stdout
    finally:
        stopped = _trifecta(tmp_path, "down")
    assert stopped.returncode == 0 and "edge" in stopped.stdout
    assert not (tmp_path / "federation" / "up.json").exists()
    none = _trifecta(tmp_path, "status")
    assert none.returncode == 2 and "trifecta up" in none.stderr
