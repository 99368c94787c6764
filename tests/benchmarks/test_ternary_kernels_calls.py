"""The kernel benchmark calls each kernel as the registry binds it: its untimed warm-up
call on a small matrix goes through the same entry with the same trailing arguments (a
kernel signature change once broke the benchmark and no test saw it)."""

from __future__ import annotations

import numpy as np
import pytest
from benchmarks.ternary_kernels import _kernel_warm

from trifecta.edge.kernels import KERNELS, available_kernels

RUNNABLE = [name for name, reason in available_kernels().items() if reason is None]


@pytest.mark.parametrize("name", RUNNABLE)
@pytest.mark.parametrize("batch", [1, 8])
def test_the_benchmark_warm_up_call_runs_every_kernel(name: str, batch: int) -> None:
    kernel = KERNELS[name].prepare(np.ones((256, 256), np.int8))
    warm = _kernel_warm(kernel, batch, threads=1)
    warm()  # raises TypeError when the benchmark's call no longer fits the kernel
    bound, view = kernel.bind(np.ones((batch, 256), np.int8), 1)
    bound()
    assert np.all(view == 256)  # every weight and input 1: each output is the row length
