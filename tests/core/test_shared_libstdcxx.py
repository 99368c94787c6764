"""The context index's usearch extension must not slow torch's C++ down.

usearch carries a static libstdc++; loaded first, it made every C++ stream write in torch
throw and unwind, and the embedder's TorchScript trace ran for minutes. A fresh process
imports the index first (as `trifecta serve` and the context service do) and must embed
with the compiled engine at once.
"""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import time
import trifecta.context.vector_index  # usearch's extension loads here, before torch
import torch
torch.set_num_threads(1)
from trifecta.core.embeddings import get_embedder
embedder = get_embedder()
started = time.process_time()
vector = embedder.embed(["a first query after the index"])[0]
print(embedder.engine_in_use, round(time.process_time() - started, 2), len(vector))
"""


def test_the_first_embedding_after_the_index_loads_is_not_slowed() -> None:
    # Without the fix the trace alone spends minutes of CPU unwinding; with it, about a second.
    run = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=240, check=True
    )
    engine, cpu_seconds, dims = run.stdout.split()[-3:]
    assert int(dims) == 384
    assert engine in ("fused", "torchscript", "eager")
    assert float(cpu_seconds) < 20.0, f"first embedding took {cpu_seconds} s of CPU ({engine})"
