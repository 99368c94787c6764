"""Every kernel equals the reference bit for bit, over random shapes and batches."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trifecta.core.errors import InvalidInput
from trifecta.edge.kernels import KERNELS, available_kernels, select_kernel
from trifecta.edge.kernels.reference import quantize_activations, reference_matmul

RUNNABLE = [name for name, reason in available_kernels().items() if reason is None]


def _case(seed: int, rows: int, cols: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    values = rng.integers(-1, 2, (rows, cols)).astype(np.int8)
    x_q = rng.integers(-128, 128, (batch, cols)).astype(np.int8)
    return values, x_q


def test_skipped_kernels_say_why() -> None:
    for name, reason in available_kernels().items():
        assert reason is None or "lacks" in reason, name
    assert select_kernel().name in RUNNABLE
    with pytest.raises(InvalidInput, match="unknown kernel"):
        select_kernel("nope")


@pytest.mark.parametrize("name", list(KERNELS))
@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 70),
    cols=st.integers(1, 150),
    batch=st.integers(1, 9),
)
def test_kernel_matches_reference(name: str, seed: int, rows: int, cols: int, batch: int) -> None:
    if name not in RUNNABLE:
        pytest.skip(f"{name}: {available_kernels()[name]}")
    values, x_q = _case(seed, rows, cols, batch)
    prepared = KERNELS[name].prepare(values)
    assert np.array_equal(prepared.matmul(x_q), reference_matmul(values, x_q))


@pytest.mark.parametrize("name", RUNNABLE)
def test_kernel_extremes_and_parallel_path(name: str) -> None:
    """Saturated activations (-128 and 127) against all-+1 / all--1 rows, on a matrix big
    enough for the multi-threaded path."""
    rows, cols = 512, 640
    values, x_q = _case(7, rows, cols, 5)
    values[0], values[1] = 1, -1
    x_q[0], x_q[1] = -128, 127
    prepared = KERNELS[name].prepare(values)
    expected = reference_matmul(values, x_q)
    assert expected[0, 0] == -128 * cols
    assert np.array_equal(prepared.matmul(x_q, threads=2), expected)
    assert np.array_equal(prepared.matmul(x_q, threads=1), expected)
    for token in (0, 1):  # the one-token (GEMV) path at the same extremes
        one = x_q[token : token + 1]
        assert np.array_equal(prepared.matmul(one, threads=1), expected[token : token + 1])


@pytest.mark.parametrize("name", RUNNABLE)
def test_prepared_stream_starts_on_a_cache_line(name: str) -> None:
    """A 64-byte block that straddled two cache lines would cost two line reads per load."""
    for rows, cols in ((16, 16), (100, 300), (512, 640)):
        prepared = KERNELS[name].prepare(_case(1, rows, cols, 1)[0])
        assert prepared.stream.ctypes.data % 64 == 0


def test_activation_quantisation_by_hand() -> None:
    x = np.array([[0.5, -1.0, 0.25, 0.0]], np.float32)
    x_q, multiplier = quantize_activations(x)
    # gamma = 1.0, so x * 127 rounded half to even: 63.5 -> 64, -127, 31.75 -> 32, 0
    assert x_q.tolist() == [[64, -127, 32, 0]]
    assert multiplier.tolist() == [[127.0]]


def test_wrong_activation_shape_is_refused() -> None:
    prepared = KERNELS["portable"].prepare(np.zeros((4, 8), np.int8))
    with pytest.raises(InvalidInput, match="activations"):
        prepared.matmul(np.zeros((1, 9), np.int8))


@pytest.mark.parametrize("name", [n for n in RUNNABLE if KERNELS[n].takes_prefetch_distance])
def test_prefetch_distance_is_an_argument_and_only_a_hint(name: str) -> None:
    """The kernels outside `vnni.py` take its prefetch distance as their last argument
    (numba's on-disk cache is keyed on the kernel's own file, so a constant imported from
    `vnni.py` went stale in their caches when it changed there); any distance gives the
    exact products."""
    values, x_q = _case(3, 64, 128, 5)
    prepared = KERNELS[name].prepare(values)
    expected = reference_matmul(values, x_q)
    x = np.zeros((5, prepared.padded_cols), np.int8)
    x[:, : prepared.cols] = x_q
    for entry in (prepared.spec.serial, prepared.spec.parallel):
        for ahead in (0, 64, 4096, 1 << 20):
            out = np.empty(5 * prepared.padded_rows, np.int32)
            entry(
                prepared.stream,
                x.reshape(-1),
                out,
                5,
                prepared.padded_rows,
                prepared.padded_cols,
                ahead,
            )
            got = out.reshape(5, prepared.padded_rows)[:, : prepared.rows]
            assert np.array_equal(got, expected), (entry, ahead)
