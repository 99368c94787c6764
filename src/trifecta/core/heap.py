"""Keep the garbage collector's full collections off the request path of a long-lived server.

A serving process holds a few hundred thousand long-lived objects (torch, transformers, the
models, the app) before it takes its first request. Python's full (generation 2) collections
walk all of them: measured in `benchmarks/serving.py`, one took 250-400 ms, stalling every
request in the batch at once, and that, not scheduling, was the quiet capsules' p99.
`gc.freeze()` (Python 3.7+) moves everything alive at start-up to a permanent generation that
collections skip; objects created while serving are still collected as usual.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect once, then exempt every surviving object from future collections; returns how
    many objects were frozen. Call when the server is loaded, before it takes requests."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
