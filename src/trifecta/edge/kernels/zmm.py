"""512-bit integer vectors for numba, emitted as LLVM vector IR through `numba.extending.intrinsic`.

Numba has no vector type of its own, so this module registers one (`Zmm`, an LLVM
`<16 x i32>`) and the handful of operations the VNNI kernel needs: loads, a 4-byte broadcast,
bitwise and / logical shift, add, arithmetic shift, and `vpdpbusd` (AVX-512 VNNI: per 32-bit
lane, the sum of four unsigned-byte x signed-byte products added to the accumulator). Values
of type `Zmm` live in registers once LLVM has optimised the kernel, exactly as hand-written
intrinsics code would. Only call these on a CPU with AVX-512 VNNI (`cpu.has_vnni()`).

Arrays are addressed by element offset into a contiguous 1-D array; bounds are the caller's
contract (the kernels derive every offset from the array shapes).
"""

from __future__ import annotations

from typing import Any

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic as _numba_intrinsic
from numba.extending import models, register_model

LANES = 16
_I32 = ir.IntType(32)
_VECTOR = ir.VectorType(_I32, LANES)


class ZmmType(types.Type):
    def __init__(self) -> None:
        super().__init__(name="Zmm")


Zmm = ZmmType()


@register_model(ZmmType)
class _ZmmModel(models.PrimitiveModel):
    def __init__(self, dmm: Any, fe_type: Any):
        super().__init__(dmm, fe_type, _VECTOR)


def intrinsic(definition: Any) -> Any:
    """`numba.extending.intrinsic`, typed `Any` for mypy: intrinsics are called from jitted
    code with a signature numba derives, not the Python one."""
    return _numba_intrinsic(definition)


def _address(context: Any, builder: Any, array_type: Any, array: Any, offset: Any) -> Any:
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [offset])


@intrinsic
def zmm_zero(typingctx: Any) -> Any:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return ir.Constant(_VECTOR, [0] * LANES)

    return Zmm(), codegen


@intrinsic
def zmm_splat(typingctx: Any, value: Any) -> Any:
    """Every lane set to the 32-bit integer `value`."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        scalar = context.cast(builder, args[0], signature.args[0], types.int32)
        lane0 = builder.insert_element(
            ir.Constant(_VECTOR, ir.Undefined), scalar, ir.Constant(_I32, 0)
        )
        return builder.shuffle_vector(
            lane0, ir.Constant(_VECTOR, ir.Undefined), ir.Constant(_VECTOR, [0] * LANES)
        )

    return Zmm(value), codegen


@intrinsic
def zmm_load(typingctx: Any, array: Any, offset: Any) -> Any:
    """64 bytes of `array` starting at element `offset` (no alignment required)."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        address = _address(context, builder, signature.args[0], args[0], args[1])
        return builder.load(builder.bitcast(address, _VECTOR.as_pointer()), align=1)

    return Zmm(array, offset), codegen


@intrinsic
def zmm_broadcast4(typingctx: Any, array: Any, offset: Any) -> Any:
    """The 4 bytes of a byte array at `offset`, repeated in every 32-bit lane."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        address = _address(context, builder, signature.args[0], args[0], args[1])
        word = builder.load(builder.bitcast(address, _I32.as_pointer()), align=1)
        lane0 = builder.insert_element(
            ir.Constant(_VECTOR, ir.Undefined), word, ir.Constant(_I32, 0)
        )
        return builder.shuffle_vector(
            lane0, ir.Constant(_VECTOR, ir.Undefined), ir.Constant(_VECTOR, [0] * LANES)
        )

    return Zmm(array, offset), codegen


@intrinsic
def zmm_store(typingctx: Any, array: Any, offset: Any, vector: Any) -> Any:
    """Write the 16 lanes into an int32 array at element `offset`."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        address = _address(context, builder, signature.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(address, _VECTOR.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(array, offset, vector), codegen


def _binary(operation: str) -> Any:
    @intrinsic
    def vector_op(typingctx: Any, a: Any, b: Any) -> Any:
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return getattr(builder, operation)(args[0], args[1])

        return Zmm(a, b), codegen

    return vector_op


zmm_and = _binary("and_")
zmm_add = _binary("add")
zmm_sub = _binary("sub")


def _shift(operation: str) -> Any:
    @intrinsic
    def shift(typingctx: Any, a: Any, count: Any) -> Any:
        """Shift every 32-bit lane by a compile-time-constant or scalar count."""

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            scalar = context.cast(builder, args[1], signature.args[1], types.int32)
            lane0 = builder.insert_element(
                ir.Constant(_VECTOR, ir.Undefined), scalar, ir.Constant(_I32, 0)
            )
            counts = builder.shuffle_vector(
                lane0, ir.Constant(_VECTOR, ir.Undefined), ir.Constant(_VECTOR, [0] * LANES)
            )
            return getattr(builder, operation)(args[0], counts)

        return Zmm(a, count), codegen

    return shift


zmm_srl = _shift("lshr")  # logical: used to move 2-bit fields down before masking
zmm_sra = _shift("ashr")  # arithmetic: exact division of signed multiples of 4^s


@intrinsic
def zmm_dpbusd(typingctx: Any, accumulator: Any, unsigned_bytes: Any, signed_bytes: Any) -> Any:
    """AVX-512 VNNI `vpdpbusd`: acc[i] += sum_j u8(a[4i+j]) * s8(b[4i+j]), no saturation."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        function_type = ir.FunctionType(_VECTOR, [_VECTOR, _VECTOR, _VECTOR])
        function = cgutils.get_or_insert_function(
            builder.module, function_type, "llvm.x86.avx512.vpdpbusd.512"
        )
        return builder.call(function, list(args))

    return Zmm(accumulator, unsigned_bytes, signed_bytes), codegen


def _prefetch_intrinsic(locality: int) -> Any:
    @intrinsic
    def prefetch_line(typingctx: Any, array: Any, offset: Any) -> Any:
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            address = _address(context, builder, signature.args[0], args[0], args[1])
            pointer = ir.PointerType(ir.IntType(8))
            function = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(ir.VoidType(), [pointer, _I32, _I32, _I32]),
                "llvm.prefetch.p0",
            )
            flags = [ir.Constant(_I32, value) for value in (0, locality, 1)]  # read, data
            builder.call(function, [builder.bitcast(address, pointer), *flags])
            return context.get_dummy_value()

        return types.void(array, offset), codegen

    return prefetch_line


# Ask the CPU to start loading the cache line at element `offset` of `array` (LLVM
# `llvm.prefetch`: a hint that never faults, even past the end of the array). The kernels
# prefetch their weight stream a few KB ahead: with the cache cold, a kernel that does tens
# of operations per 64-byte block otherwise keeps too few lines in flight to run at memory
# speed (the out-of-order window ends before the next misses are issued). Into L2 (locality
# 2, `prefetcht1` on x86) rather than L1: the line is read once, microseconds later, and an L1
# prefetch holds one of the few L1 miss buffers for the whole trip from DRAM (flushed 4096
# GEMV, `vnni`: about 6% faster than locality 3 at the same distance; locality 0,
# `prefetchnta`, was 2x slower). `prefetch_to_l1` (locality 3) is there for the benchmark's
# memory floor, which reads with whichever is faster.
prefetch = _prefetch_intrinsic(2)
prefetch_to_l1 = _prefetch_intrinsic(3)
