"""One model load at a time in a process.

`transformers`' `from_pretrained` (which sentence-transformers also goes through) builds a model
with torch's init functions swapped for no-ops process-wide, not per thread. A load on one
thread beside a load on another (a learning worker starting its encoder while the serving
layer loads the tiers) can leave a weight the checkpoint does not store, such as a tied output
head, neither tied nor initialised. Every loader in the project takes this lock.
"""

from __future__ import annotations

import threading

MODEL_LOAD_LOCK = threading.RLock()
