"""Ternary weight layouts: 2 bits per weight (four to a byte) and base 3 (five to a byte).

Both store the code `w + 1` in {0, 1, 2} of each ternary weight `w`, row by row:

- `i2`: byte j of a row holds inputs 4j..4j+3; input 4j+i sits in bits 2i..2i+1.
  Rows are padded with zero weights (code 1) to a multiple of 4 inputs. 2 bits per weight.
- `b3`: byte j of a row holds inputs 5j..5j+4 as the base-3 number sum(code_i * 3^i)
  (at most 242). Padded to a multiple of 5 inputs. 8/5 = 1.6 bits per weight, close to the
  log2(3) = 1.585 bits a ternary weight carries.

Unpacking refuses bytes no packer writes (a 2-bit code of 3, a base-3 byte above 242), so a
corrupted matrix is an error rather than wrong weights.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import NDArray

from trifecta.core.errors import InvalidInput

Layout = Literal["i2", "b3"]
LAYOUTS: tuple[Layout, ...] = ("i2", "b3")
WEIGHTS_PER_BYTE: dict[Layout, int] = {"i2": 4, "b3": 5}
B3_MAX_BYTE = 3**5 - 1


class CorruptWeights(InvalidInput):
    """A packed matrix holds bytes that no packer writes."""


def bits_per_weight(layout: Layout) -> float:
    return 8.0 / WEIGHTS_PER_BYTE[layout]


def packed_width(in_features: int, layout: Layout) -> int:
    per_byte = WEIGHTS_PER_BYTE[layout]
    return -(-in_features // per_byte)


def _check_ternary(values: NDArray[np.integer]) -> None:
    if values.ndim != 2:
        raise InvalidInput(f"expected a 2-D matrix, got {values.ndim}-D", field="weights")
    if values.size and (values.min() < -1 or values.max() > 1):
        raise InvalidInput("weights must be ternary (-1, 0, +1)", field="weights")


def _codes(values: NDArray[np.integer], per_byte: int) -> NDArray[np.uint8]:
    """Codes w + 1, padded with code 1 (weight 0) to whole bytes, as (rows, bytes, per_byte)."""
    rows, cols = values.shape
    width = -(-cols // per_byte)
    codes = np.ones((rows, width * per_byte), dtype=np.uint8)
    codes[:, :cols] = values.astype(np.int16) + 1
    return codes.reshape(rows, width, per_byte)


def pack(values: NDArray[np.integer], layout: Layout = "i2") -> NDArray[np.uint8]:
    """Ternary matrix (rows, in_features) -> packed bytes (rows, packed_width)."""
    _check_ternary(values)
    if layout == "i2":
        codes = _codes(values, 4)
        shifts = np.array([0, 2, 4, 6], dtype=np.uint8)
        return np.bitwise_or.reduce(codes << shifts, axis=2).astype(np.uint8)
    if layout == "b3":
        codes = _codes(values, 5).astype(np.uint16)
        powers = np.array([1, 3, 9, 27, 81], dtype=np.uint16)
        return (codes * powers).sum(axis=2).astype(np.uint8)
    raise InvalidInput(f"unknown layout {layout!r}", field="layout", allowed=LAYOUTS)


def unpack(packed: NDArray[np.uint8], in_features: int, layout: Layout = "i2") -> NDArray[np.int8]:
    """Packed bytes -> ternary matrix (rows, in_features) as int8."""
    if packed.ndim != 2 or packed.dtype != np.uint8:
        raise CorruptWeights("packed weights must be a 2-D uint8 array", field="weights")
    if packed.shape[1] != packed_width(in_features, layout):
        raise CorruptWeights(
            f"packed width {packed.shape[1]} does not fit {in_features} inputs in layout {layout}",
            field="weights",
        )
    if layout == "i2":
        codes = (packed[:, :, None] >> np.array([0, 2, 4, 6], dtype=np.uint8)) & 3
    elif layout == "b3":
        if packed.size and packed.max() > B3_MAX_BYTE:
            raise CorruptWeights("a base-3 byte is above 242", field="weights")
        digits = packed[:, :, None].astype(np.int16) // np.array([1, 3, 9, 27, 81], dtype=np.int16)
        codes = (digits % 3).astype(np.uint8)
    else:
        raise InvalidInput(f"unknown layout {layout!r}", field="layout", allowed=LAYOUTS)
    if codes.size and codes.max() > 2:
        raise CorruptWeights("a 2-bit weight code is 3, which no packer writes", field="weights")
    flat = codes.reshape(packed.shape[0], -1)
    if (flat[:, in_features:] != 1).any():
        raise CorruptWeights("padding weights are not zero", field="weights")
    return flat[:, :in_features].astype(np.int8) - 1
