"""The served log and the hop log keep what their settings say (issue 16): the oldest
records go first, the served and refused counts cover every record, and the bounds reach
the logs a stack makes. They were fixed at 100,000 and 50,000."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.federation.test_mock_bridge import TWIN, _bridge, _offload
from trifecta.core.heap_report import tracked_sizes
from trifecta.core.settings import Settings, get_settings
from trifecta.federation.receiver import ServedLog
from trifecta.federation.services import ServedRecord


@pytest.fixture
def small_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TRIFECTA_SERVED_LOG_RECORDS", "4")
    monkeypatch.setenv("TRIFECTA_HOP_LOG_HOPS", "3")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_the_defaults_keep_a_megabyte_at_most() -> None:
    defaults = Settings()
    assert defaults.served_log_records == 2_000  # about 104 bytes a record
    assert defaults.hop_log_hops == 2_000  # about 120 bytes a hop


@pytest.mark.usefixtures("small_logs")
def test_the_settings_bound_both_logs_of_a_bridge() -> None:
    bridge, _mesh, inner = _bridge()
    for _ in range(10):
        _offload(bridge, TWIN, "edge")
    assert len(bridge.hops) == 3 and bridge.entries == 3 and bridge.bound == 3
    log = inner.hosts["edge"].log
    assert len(log.records()) == 4 and (log.entries, log.bound) == (4, 4)
    assert log.served == 10  # the count covers every record, kept or not
    sizes = tracked_sizes()
    for name in ("federation hop log (hops)", "federation served log (records)"):
        assert sizes[name]["entries"] <= sizes[name]["bound"], name


@pytest.mark.usefixtures("small_logs")
def test_an_empty_log_is_still_the_log_it_was_given() -> None:
    log = ServedLog()
    assert log.bound == 4 and log.entries == 0
    assert (log or ServedLog()) is log  # no __len__: an empty log stays truthy
    log.add(
        ServedRecord(
            environment="edge", service="edge", method="offload", capsule_id="twin",
            capsule_kind="digital_twin", ok=True, detail="",
        )
    )  # fmt: skip
    assert log.entries == 1
