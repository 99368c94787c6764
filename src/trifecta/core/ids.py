"""Unique ids made without a system call each: 80 random bits drawn once a process, then a
counter, 32 hex digits like a UUID's. A `uuid4` reads the OS's random source every call, a
system call that hands the interpreter lock to another thread and waits to take it back:
on the request path, with 16 requests in flight, that cost about 1% of the loop's CPU.

A forked child draws a new prefix, so a parent and its children never share an id."""

from __future__ import annotations

import itertools
import os

_COUNTER_MASK = (1 << 48) - 1  # 12 hex digits: 2.8e14 ids before it wraps
_random = ""
_counter = itertools.count()


def _draw() -> None:
    global _random, _counter
    _random = os.urandom(10).hex()
    _counter = itertools.count()


_draw()
os.register_at_fork(after_in_child=_draw)


def unique_id(prefix: str = "") -> str:
    """`prefix` then 32 hex digits, unique across processes (`next` on the counter is atomic
    under the interpreter lock: no lock is taken)."""
    return f"{prefix}{_random}{next(_counter) & _COUNTER_MASK:012x}"
