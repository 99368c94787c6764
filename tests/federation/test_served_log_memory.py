"""An environment's served log is bounded by count and small per record: a long-lived server
keeps up to 100,000 of them (found by the soak, benchmarks/soak.py)."""

from __future__ import annotations

import tracemalloc

from trifecta.federation.receiver import ServedLog
from trifecta.federation.services import ServedRecord

CAPSULES = [f"dt-energy-{i:04d}" for i in range(6)]


def record(i: int) -> ServedRecord:
    return ServedRecord(
        environment="inference",
        service="cognitive",
        method="generate",
        capsule_id=CAPSULES[i % len(CAPSULES)],
        capsule_kind="digital_twin",
        ok=i % 7 != 0,
        detail="" if i % 7 else "refused: outside the places it allows",
    )


def test_records_read_back_as_added_oldest_dropped_first() -> None:
    log = ServedLog(limit=5)
    added = [record(i) for i in range(8)]
    for r in added:
        log.add(r)
    assert log.records() == added[3:]
    assert (log.served, log.refused) == (6, 2)  # counts every record, kept or not


def test_a_kept_record_costs_a_fraction_of_the_model() -> None:
    records = [record(i) for i in range(20_000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        log = ServedLog(limit=20_000)
        for r in records:
            log.add(r)
        per_record = (tracemalloc.get_traced_memory()[0] - before) / len(records)
    finally:
        tracemalloc.stop()
    assert per_record < 200  # bytes; the pydantic model itself is about 1,100
    assert len(log.records()) == 20_000
