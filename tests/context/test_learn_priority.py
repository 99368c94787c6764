"""The learning worker's CPU priority: its own thread only, at the configured nice value."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from trifecta.context.learn_worker import background_priority
from trifecta.context.settings import ContextSettings

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice is Linux's")


def _nice_in_thread(nice: int) -> int:
    """The nice value a fresh thread reports after `background_priority(nice)`."""
    seen: list[int] = []

    def body() -> None:
        background_priority(nice)
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    return seen[0]


def test_the_worker_thread_takes_the_nice_value_and_the_process_keeps_its_own() -> None:
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert _nice_in_thread(min(19, before + 7)) == min(19, before + 7)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


def test_nice_zero_leaves_the_thread_at_the_process_priority() -> None:
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert _nice_in_thread(0) == before


def test_the_setting_is_bounded_to_linux_nice_values() -> None:
    assert ContextSettings(learn_nice=0).learn_nice == 0
    with pytest.raises(ValueError, match="learn_nice"):
        ContextSettings(learn_nice=20)
