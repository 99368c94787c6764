"""`core.ids`: ids unique within a process, across threads, and across a fork."""

from __future__ import annotations

import os
import re
import threading

from trifecta.cognitive.serving.requests import CollectingSink, EngineRequest, SamplingParams
from trifecta.core.ids import unique_id
from trifecta.orchestrator.loop import new_request_id


def test_ids_are_32_hex_digits_after_their_prefix_and_never_repeat_across_threads() -> None:
    found: list[list[str]] = [[] for _ in range(8)]

    def draw(out: list[str]) -> None:
        out.extend(unique_id() for _ in range(5_000))

    threads = [threading.Thread(target=draw, args=(out,)) for out in found]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for out in found for i in out]
    assert len(set(ids)) == len(ids) == 40_000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert re.fullmatch(r"req-[0-9a-f]{32}", new_request_id())


def test_engine_requests_get_distinct_ids_without_being_given_one() -> None:
    made = [EngineRequest([1, 2], SamplingParams(), CollectingSink()) for _ in range(100)]
    assert len({r.request_id for r in made}) == 100


def test_a_forked_child_draws_a_new_prefix() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then out without the test runner's cleanup
        os.write(write, unique_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    mine = unique_id()
    assert re.fullmatch(r"[0-9a-f]{32}", child)
    assert child[:20] != mine[:20]  # the random part differs, not just the counter
