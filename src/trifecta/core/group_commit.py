"""Group commit: writes that callers hand in one at a time, committed several to a transaction
(as databases batch their log flushes).

The learn queue's submit (`context.learn_queue`) and the request log's save
(`orchestrator.records`) both pay one on every request. A write's end wakes every waiting
caller (`notify_all`); waking each caller alone, once, by its own signal was measured and not
kept (docs/orchestrator.md, "The group commits' wake-ups").
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
MAX_GROUP = 64  # items one transaction takes; the rest go in the next


@dataclass
class _Pending(Generic[T, R]):
    item: T
    result: R | None = None
    error: BaseException | None = None
    done: bool = False


class GroupCommit(Generic[T, R]):
    """Writes that callers hand in one at a time, committed several to a transaction (group
    commit, as databases batch their log flushes). The first caller that finds its item
    waiting and no write running writes every waiting item with one call of `write`; the
    others wait for the write that holds theirs. `write` returns, per item and in order,
    its result or the exception that caller should raise; a `write` that raises, or returns
    a result too many or too few, fails every caller of its group. A caller alone pays one
    write, as before; written by hand: no library does this for a synchronous SQLAlchemy
    engine."""

    def __init__(self, write: Callable[[list[T]], Sequence[R | BaseException]]):
        self._write = write
        self._waiting: list[_Pending[T, R]] = []
        self._busy = False
        self._cond = threading.Condition()
        self.writes = self.items = 0

    def submit(self, item: T) -> R:
        mine: _Pending[T, R] = _Pending(item)
        with self._cond:
            self._waiting.append(mine)
        while True:
            with self._cond:
                while not mine.done and self._busy:
                    self._cond.wait()
                if mine.done:
                    break
                self._busy = True
                group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
                self.writes += 1
                self.items += len(group)
            try:
                results: Sequence[R | BaseException] = self._write([p.item for p in group])
                # checked here: a mismatch found while settling would leave the group busy
                if len(results) != len(group):
                    raise RuntimeError(
                        f"write returned {len(results)} results for {len(group)} items"
                    )
            except BaseException as exc:  # the transaction failed: every caller in it fails
                results = [exc] * len(group)
            with self._cond:
                for pending, result in zip(group, results, strict=True):
                    if isinstance(result, BaseException):
                        pending.error = result
                    else:
                        pending.result = result
                    pending.done = True
                self._busy = False
                self._cond.notify_all()
        if mine.error is not None:
            raise mine.error
        assert mine.result is not None
        return mine.result
