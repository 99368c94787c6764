from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from trifecta.core.errors import InvalidInput
from trifecta.edge.packing import CorruptWeights, bits_per_weight, pack, packed_width, unpack

ternary = st.tuples(st.integers(1, 12), st.integers(1, 40)).flatmap(
    lambda shape: arrays(np.int8, shape, elements=st.integers(-1, 1))
)


@settings(max_examples=60, deadline=None)
@given(values=ternary, layout=st.sampled_from(["i2", "b3"]))
def test_pack_round_trip(values: np.ndarray, layout: str) -> None:
    packed = pack(values, layout)  # type: ignore[arg-type]
    assert packed.shape == (values.shape[0], packed_width(values.shape[1], layout))  # type: ignore[arg-type]
    assert np.array_equal(unpack(packed, values.shape[1], layout), values)  # type: ignore[arg-type]


def test_i2_byte_layout_by_hand() -> None:
    # codes w+1 = 0, 1, 2, 1 at bits 0-1, 2-3, 4-5, 6-7: 0 | 1<<2 | 2<<4 | 1<<6 = 0b01_10_01_00
    assert pack(np.array([[-1, 0, 1, 0]], np.int8), "i2").tolist() == [[0b01100100]]
    # five weights in base 3: codes 2, 0, 1, 1, 2 -> 2 + 0*3 + 1*9 + 1*27 + 2*81 = 200
    assert pack(np.array([[1, -1, 0, 0, 1]], np.int8), "b3").tolist() == [[200]]
    # padding is weight 0 (code 1): one weight 1 -> code 2, then three codes 1
    assert pack(np.array([[1]], np.int8), "i2").tolist() == [[2 | 1 << 2 | 1 << 4 | 1 << 6]]


def test_bits_per_weight() -> None:
    assert bits_per_weight("i2") == 2.0
    assert bits_per_weight("b3") == pytest.approx(1.6)


def test_bytes_no_packer_writes_are_refused() -> None:
    with pytest.raises(CorruptWeights, match="code is 3"):
        unpack(np.array([[0b11]], np.uint8), 4, "i2")
    with pytest.raises(CorruptWeights, match="above 242"):
        unpack(np.array([[250]], np.uint8), 5, "b3")
    with pytest.raises(CorruptWeights, match="padding"):
        unpack(np.array([[0b00000000]], np.uint8), 1, "i2")


def test_non_ternary_input_is_refused() -> None:
    with pytest.raises(InvalidInput, match="ternary"):
        pack(np.array([[2]], np.int8))
