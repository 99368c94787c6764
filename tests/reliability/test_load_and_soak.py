"""A bounded load and soak run of `trifecta serve` on loopback, driven by locust: mixed
capsules with their own keys send tasks (and feedback on some) on a fixed schedule for
SOAK_S seconds, while the server's resident memory is sampled.

Load: no 5xx and no dropped connection; every acknowledged learning write is in the learn
queue and learned from after the drain, every acknowledged task and feedback is in the
database; p50 / p99 are taken from each request's scheduled arrival.
Soak: the structures that grow with traffic are bounded (Prometheus series, the result
cache) and memory is close to flat over the second half: the memory the server owns (its
heaps and shared memory, RssAnon + RssShmem) grows by at most ANON_MB_PER_TASK per served
task and ANON_MB_SECOND_HALF in all. All resident memory (VmRSS) is printed, not bounded: it
adds file-backed pages, and those are clean, reclaimable and bounded by the files' size (the
model weights are memory-mapped safetensors, and a text with a token not seen before touches
another page of MiniLM's embedding table): +4 MB in one second half, +14 MB in a CI run
beside other jobs while owned memory grew 1.3 MB.
The server runs with small caps (SMALL_CAPS) so that the bounded caches known
to fill slowly, each engine's prefix KV cache and the result cache, are full by mid-run and
cannot account for second-half growth.
oneDNN's primitive cache and MKL's per-thread pools, which held 70 and 48 MB of what a
second half kept, are bounded by `trifecta serve` itself (core/heap.py). The bounds caught
the unbounded glibc arenas (0.32 MB per task here) that `cap_malloc_arenas` removed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.reliability.load import LoadRun, run_locust
from tests.reliability.servers import ServeProcess
from tests.reliability.traffic import CAPSULES, Audit, drained_audit

pytestmark = [pytest.mark.slow, pytest.mark.integration]
SOAK_S = 90.0
RATE = 2.0  # tasks per second, all capsules together (what a loaded 2-core CI box sustains)
USERS = 8
# Measured: anonymous +3.6 MB over a second half (slope 0.063 MB per task; glibc's trim
# every 10 s makes it a saw-tooth), all resident 0.07-0.11 MB per task, at load 1-5
# (RELIABILITY.md); all resident 0.19-0.53 before the embedder's fixed shapes and the
# native caps. The bounds are about twice the measured values (not flat yet: see there).
ANON_MB_PER_TASK = 0.1
ANON_MB_SECOND_HALF = 8.0
# Caps small enough that the bounded structures fill in the first half of the run: each
# serving engine's prefix KV cache (16,384 tokens by default) and the context service's
# in-process result cache (20,000 entries by default).
SMALL_CAPS = {
    "TRIFECTA_COGNITIVE_PREFIX_CACHE_TOKENS": "256",
    "TRIFECTA_CONTEXT_CACHE_ENTRIES": "64",
}


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A resident-memory figure of /proc/<pid>/status in MB (VmRSS: all; RssAnon: heaps and
    other anonymous memory; RssFile: pages of mapped files)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


def metric_series(url: str) -> int:
    """How many sample lines /metrics exposes (each label set is one series)."""
    text = httpx.get(url + "/metrics", timeout=30).text
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


@dataclass
class Soak:
    run: LoadRun
    audit: Audit
    rss: list[tuple[float, float]]  # (seconds since start, MB): all resident memory
    anon: list[tuple[float, float]]  # the same, anonymous memory only
    series_mid: int
    series_end: int
    context_cache: dict[str, int] = field(default_factory=dict)

    def slope_mb_per_task(self, samples: list[tuple[float, float]]) -> float:
        """Least-squares slope of memory over the second half of the run, per served task."""
        half = [(t, m) for t, m in samples if t >= samples[-1][0] / 2]
        t, m = np.array(half).T
        return float(np.polyfit(t, m, 1)[0]) / self.run.achieved_rate()

    @staticmethod
    def second_half_growth(samples: list[tuple[float, float]]) -> float:
        half = [m for t, m in samples if t >= samples[-1][0] / 2]
        return half[-1] - half[0]


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Soak]:
    work = tmp_path_factory.mktemp("soak")
    url = f"sqlite:///{work / 'control.db'}"
    server = ServeProcess(work / "data", url, env=SMALL_CAPS)
    server.start()
    try:
        keys = server.capsule_keys(CAPSULES)
        samples: list[tuple[float, float]] = []
        anon: list[tuple[float, float]] = []
        mid: list[int] = []
        done = threading.Event()

        def sample() -> None:
            started = time.monotonic()
            while not done.wait(1.0):
                elapsed = time.monotonic() - started
                samples.append((elapsed, rss_mb(server.pid)))
                owned = rss_mb(server.pid, "RssAnon") + rss_mb(server.pid, "RssShmem")
                anon.append((elapsed, owned))
                if not mid and elapsed >= SOAK_S / 2:
                    mid.append(metric_series(server.url))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        run = run_locust(server.url, keys, rate=RATE, seconds=SOAK_S, users=USERS, work=work)
        done.set()
        sampler.join()
        series_end = metric_series(server.url)
        admin = {"Authorization": f"Bearer {server.admin_key}"}
        health = httpx.get(server.url + "/context/health", headers=admin, timeout=30).json()
        audit = drained_audit(url, run.acks)
        yield Soak(run, audit, samples, anon, mid[0], series_end, health["cache_stats"])
    finally:
        server.stop()


def test_load_answers_every_request_and_loses_no_acknowledged_write(soak: Soak) -> None:
    run = soak.run
    latencies = run.latencies_ms()
    print(
        f"load: {len(run.of('task'))} tasks + {len(run.of('feedback'))} feedback in "
        f"{run.seconds:.0f} s, offered {run.rate:.1f}/s achieved {run.achieved_rate():.2f}/s, "
        f"p50 {np.percentile(latencies, 50):.0f} ms p99 {np.percentile(latencies, 99):.0f} ms "
        f"from scheduled arrival; statuses {dict(run.acks.statuses)}; audit {soak.audit}"
    )
    assert run.server_errors() == 0, dict(run.acks.statuses)
    assert len(run.acks.tasks) >= 0.5 * RATE * SOAK_S  # the load did run
    assert run.acks.feedback and run.acks.learned
    assert soak.audit.clean, soak.audit
    assert soak.audit.queue_rows == len(run.acks.learned)


def test_soak_memory_is_flat_and_traffic_adds_no_series(soak: Soak) -> None:
    anon, rss = soak.slope_mb_per_task(soak.anon), soak.slope_mb_per_task(soak.rss)
    print("soak RSS every 10 s:", [round(m) for t, m in soak.rss[::10]])
    print("soak RssAnon every 10 s:", [round(m) for t, m in soak.anon[::10]])
    print(
        f"soak: RSS {soak.rss[0][1]:.0f} -> {soak.rss[-1][1]:.0f} MB over "
        f"{soak.rss[-1][0]:.0f} s; second half: owned {anon:.3f} MB per task "
        f"({soak.second_half_growth(soak.anon):+.1f} MB), all {rss:.3f} MB per task "
        f"({soak.second_half_growth(soak.rss):+.1f} MB); /metrics series {soak.series_mid} "
        f"mid-run, {soak.series_end} at the end; context cache {soak.context_cache}"
    )
    assert anon <= ANON_MB_PER_TASK
    assert soak.second_half_growth(soak.anon) <= ANON_MB_SECOND_HALF
    # Label sets are per capsule kind, environment, layer, route: traffic adds no series.
    assert soak.series_end <= soak.series_mid * 1.05
    assert soak.context_cache["entries"] <= 64  # the result cache's bound (cache_entries)
