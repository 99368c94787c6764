"""The serving process's tuning for read tails (issue 17): torch on one thread in every
thread of the process (a learn runs on a pool thread, not the one that imported torch), the
operator's own `OMP_NUM_THREADS` kept, and a 1 ms GIL switch interval.

Each case runs in a fresh interpreter: torch's thread count and the switch interval are
process-wide."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, sys, threading
from trifecta.context.service import GIL_SWITCH_INTERVAL_S, tune_serving_process
tuned = tune_serving_process()
import torch
seen = {}
worker = threading.Thread(target=lambda: seen.update(pool=torch.get_num_threads()))
worker.start(); worker.join()
print(json.dumps({"main": torch.get_num_threads(), "pool": seen["pool"],
                  "switch": sys.getswitchinterval(), "wanted": GIL_SWITCH_INTERVAL_S,
                  "tuned": tuned}))
"""


def probe(omp: str | None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.slow
def test_torch_runs_on_one_thread_in_every_thread_and_the_switch_interval_is_short() -> None:
    got = probe(None)
    assert got["main"] == 1
    assert got["pool"] == 1  # a learn on the thread pool gets one thread too
    assert got["switch"] == pytest.approx(got["wanted"])
    assert got["switch"] < 0.005  # shorter than CPython's default
    assert got["tuned"] == {"torch_threads": "1", "switch_interval_s": str(got["switch"])}


@pytest.mark.slow
def test_an_operators_thread_count_is_kept() -> None:
    got = probe("2")
    assert got["main"] == 2
    assert got["pool"] == 2
