"""256-bit integer vectors for numba (AVX2), emitted as LLVM vector IR like `zmm.py`.

`Ymm` is an LLVM `<8 x i32>`; operations that work on other lane widths bitcast it (free in
the generated code). The AVX2 kernel needs: loads, a 4-byte broadcast, logical and
arithmetic shifts of 32-bit lanes, bitwise and, 16- and 32-bit adds, and the two int8
dot-product steps of AVX2: `vpmaddubsw` (unsigned byte x signed byte, adjacent pairs
summed into 16-bit lanes with signed saturation) and `vpmaddwd` (16-bit x 16-bit, adjacent
pairs summed into 32-bit lanes).
Only call these on a CPU with AVX2 (the registry checks `avx2` before it runs the kernel).
"""

from __future__ import annotations

from typing import Any

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import models, register_model

from trifecta.edge.kernels.zmm import intrinsic

LANES = 8
_I32 = ir.IntType(32)
_VECTOR = ir.VectorType(_I32, LANES)
_SHORTS = ir.VectorType(ir.IntType(16), 16)
_BYTES = ir.VectorType(ir.IntType(8), 32)


class YmmType(types.Type):
    def __init__(self) -> None:
        super().__init__(name="Ymm")


Ymm = YmmType()


@register_model(YmmType)
class _YmmModel(models.PrimitiveModel):
    def __init__(self, dmm: Any, fe_type: Any):
        super().__init__(dmm, fe_type, _VECTOR)


def _address(context: Any, builder: Any, array_type: Any, array: Any, offset: Any) -> Any:
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [offset])


def _splat(builder: Any, scalar: Any) -> Any:
    lane0 = builder.insert_element(ir.Constant(_VECTOR, ir.Undefined), scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(
        lane0, ir.Constant(_VECTOR, ir.Undefined), ir.Constant(_VECTOR, [0] * LANES)
    )


@intrinsic
def ymm_zero(typingctx: Any) -> Any:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return ir.Constant(_VECTOR, [0] * LANES)

    return Ymm(), codegen


@intrinsic
def ymm_splat(typingctx: Any, value: Any) -> Any:
    """Every 32-bit lane set to `value`."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return _splat(builder, context.cast(builder, args[0], signature.args[0], types.int32))

    return Ymm(value), codegen


@intrinsic
def ymm_load(typingctx: Any, array: Any, offset: Any) -> Any:
    """32 bytes of `array` from element `offset` (no alignment required)."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        address = _address(context, builder, signature.args[0], args[0], args[1])
        return builder.load(builder.bitcast(address, _VECTOR.as_pointer()), align=1)

    return Ymm(array, offset), codegen


@intrinsic
def ymm_broadcast4(typingctx: Any, array: Any, offset: Any) -> Any:
    """The 4 bytes of a byte array at `offset`, repeated in every 32-bit lane."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        address = _address(context, builder, signature.args[0], args[0], args[1])
        return _splat(builder, builder.load(builder.bitcast(address, _I32.as_pointer()), align=1))

    return Ymm(array, offset), codegen


@intrinsic
def ymm_store(typingctx: Any, array: Any, offset: Any, vector: Any) -> Any:
    """Write the 8 lanes into an int32 array at element `offset`."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        address = _address(context, builder, signature.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(address, _VECTOR.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(array, offset, vector), codegen


def _lanewise(operation: str, lanes: ir.VectorType) -> Any:
    @intrinsic
    def vector_op(typingctx: Any, a: Any, b: Any) -> Any:
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            left, right = (builder.bitcast(arg, lanes) for arg in args)
            return builder.bitcast(getattr(builder, operation)(left, right), _VECTOR)

        return Ymm(a, b), codegen

    return vector_op


ymm_and = _lanewise("and_", _VECTOR)
ymm_add = _lanewise("add", _VECTOR)
ymm_sub = _lanewise("sub", _VECTOR)
ymm_add16 = _lanewise("add", _SHORTS)  # sixteen 16-bit lanes, wrapping


def _shift(operation: str) -> Any:
    @intrinsic
    def shift(typingctx: Any, a: Any, count: Any) -> Any:
        """Shift every 32-bit lane right by `count`."""

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            scalar = context.cast(builder, args[1], signature.args[1], types.int32)
            return getattr(builder, operation)(args[0], _splat(builder, scalar))

        return Ymm(a, count), codegen

    return shift


ymm_srl = _shift("lshr")  # logical: moves 2-bit fields down before masking
ymm_sra = _shift("ashr")  # arithmetic: exact division of signed multiples of 4


def _x86(name: str, operand: ir.VectorType, result: ir.VectorType) -> Any:
    @intrinsic
    def instruction(typingctx: Any, a: Any, b: Any) -> Any:
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            function = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(result, [operand, operand]), name
            )
            left, right = (builder.bitcast(arg, operand) for arg in args)
            return builder.bitcast(builder.call(function, [left, right]), _VECTOR)

        return Ymm(a, b), codegen

    return instruction


# vpmaddubsw: i16[i] = sat16(u8(a[2i]) * s8(b[2i]) + u8(a[2i+1]) * s8(b[2i+1]))
ymm_maddubs = _x86("llvm.x86.avx2.pmadd.ub.sw", _BYTES, _SHORTS)
# vpmaddwd: i32[i] = s16(a[2i]) * s16(b[2i]) + s16(a[2i+1]) * s16(b[2i+1])
ymm_madd16 = _x86("llvm.x86.avx2.pmadd.wd", _SHORTS, ir.VectorType(_I32, 8))
