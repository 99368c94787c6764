"""The kernel choice follows the CPU's features, and every path degrades to `portable`."""

from __future__ import annotations

import numpy as np
import pytest

from trifecta.core.errors import Unavailable
from trifecta.edge.kernels import KERNELS, select_kernel
from trifecta.edge.kernels import registry as registry_module


def _cpu_with(monkeypatch: pytest.MonkeyPatch, features: set[str]) -> None:
    """Answer feature queries as a CPU with exactly `features` would."""

    def missing(required: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(f for f in required if f not in features)

    monkeypatch.setattr(registry_module, "missing_features", missing)


@pytest.mark.parametrize(
    ("features", "chosen"),
    [
        ({"avx2", "avx512f", "avx512bw", "avx512vnni"}, "vnni"),
        ({"avx2", "fma"}, "avx2"),  # an AVX2-only x86 (e.g. AMD Zen 2/3, Intel Haswell)
        ({"neon"}, "portable"),  # no x86 SIMD at all
        (set(), "portable"),
    ],
)
def test_selection_by_cpu_features(
    monkeypatch: pytest.MonkeyPatch, features: set[str], chosen: str
) -> None:
    _cpu_with(monkeypatch, features)
    assert select_kernel().name == chosen
    assert select_kernel("auto").name == chosen


def test_a_kernel_the_cpu_lacks_is_refused_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _cpu_with(monkeypatch, set())
    assert KERNELS["avx2"].unavailable_reason() == "this CPU lacks avx2"
    with pytest.raises(Unavailable, match="lacks avx2"):
        KERNELS["avx2"].prepare(np.zeros((16, 16), np.int8))
