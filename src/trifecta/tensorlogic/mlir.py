"""Edge compilation: each equation lowered to MLIR (`linalg.generic` on tensors) and compiled
with IREE, for the host (run here with `iree.runtime`) or for `riscv32` (the scalar core of
the Coral NPU; compiled only, as the edge layer does for its BitLinear kernels).

An equation becomes one function taking its body tensors (dense f32, static shapes from the
domains) and returning the left-hand side: a `linalg.generic` whose loops are the equation's
variables (left-hand-side ones parallel, the others reductions) multiplying the operands and
summing into the result, then an element-wise `linalg.generic` for the nonlinearity and the
coefficient. The IREE target flags are the edge layer's (this package may not import it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from trifecta.core.errors import InvalidInput, Unavailable
from trifecta.tensorlogic.program import Equation, Program

Target = Literal["host", "riscv32"]
TARGETS: tuple[Target, ...] = ("host", "riscv32")
TARGET_FLAGS: dict[Target, list[str]] = {
    "host": ["--iree-llvmcpu-target-cpu=host"],
    "riscv32": [
        "--iree-llvmcpu-target-triple=riscv32-pc-linux-elf",
        "--iree-llvmcpu-target-cpu=generic-rv32",
        "--iree-llvmcpu-target-cpu-features=+m,+f",
        "--iree-llvmcpu-target-abi=ilp32f",
    ],
}


def function_name(index: int, eq: Equation) -> str:
    return f"eq{index}_{eq.lhs}"


def _tensor_type(shape: tuple[int, ...]) -> str:
    return "tensor<" + "x".join(str(s) for s in shape) + "xf32>"


def _f32(value: float) -> str:
    return f"{float(np.float32(value)):.9e}"


def _nonlinearity(eq: Equation) -> list[str]:
    """The body of the element-wise generic: `%v` in, `%r` out."""
    lines = [f"%nz = arith.constant {_f32(0.0)} : f32", f"%n1 = arith.constant {_f32(1.0)} : f32"]
    if eq.nonlinearity == "step":
        lines += ["%c = arith.cmpf ogt, %v, %nz : f32", "%y = arith.select %c, %n1, %nz : f32"]
    elif eq.nonlinearity == "sigmoid":
        lines += [
            f"%t = arith.constant {_f32(eq.temperature)} : f32",
            "%x = arith.divf %v, %t : f32",
            "%n = arith.negf %x : f32",
            "%e = math.exp %n : f32",
            "%d = arith.addf %n1, %e : f32",
            "%y = arith.divf %n1, %d : f32",
        ]
    elif eq.nonlinearity == "relu":
        lines += ["%y = arith.maximumf %v, %nz : f32"]
    else:
        lines += ["%y = arith.addf %v, %nz : f32"]
    lines += [f"%k = arith.constant {_f32(eq.coefficient)} : f32", "%r = arith.mulf %y, %k : f32"]
    return lines


def equation_mlir(program: Program, index: int, eq: Equation) -> str:
    """One equation as an MLIR function (see the module docstring)."""
    for atom in eq.body:
        if any(isinstance(a, int) for a in atom.args):
            raise InvalidInput(
                f"equation at line {eq.pos.line}: constant indices are not lowered to MLIR",
                field="program",
            )
    loops = list(eq.lhs_vars) + [
        v for v in dict.fromkeys(x for a in eq.body for x in a.variables) if v not in eq.lhs_vars
    ]
    dim = {v: f"d{i}" for i, v in enumerate(loops)}
    domain = "(" + ", ".join(dim[v] for v in loops) + ")"
    maps = [f"affine_map<{domain} -> ({', '.join(dim[v] for v in a.variables)})>" for a in eq.body]
    out_map = f"affine_map<{domain} -> ({', '.join(dim[v] for v in eq.lhs_vars)})>"
    iterators = ", ".join('"parallel"' if v in eq.lhs_vars else '"reduction"' for v in loops)
    in_types = [_tensor_type(program.shape(a.tensor)) for a in eq.body]
    out_type = _tensor_type(program.shape(eq.lhs))
    rank = len(eq.lhs_vars)
    ident = "(" + ", ".join(f"e{i}" for i in range(rank)) + ")"
    elementwise = f"affine_map<{ident} -> {ident}>"
    args = ", ".join(f"%a{i}: {t}" for i, t in enumerate(in_types))
    block_args = ", ".join(f"%x{i}: f32" for i in range(len(eq.body)))
    body = []
    acc = "%x0"
    for i in range(1, len(eq.body)):
        body.append(f"%p{i} = arith.mulf {acc}, %x{i} : f32")
        acc = f"%p{i}"
    body += [f"%s = arith.addf %acc, {acc} : f32", "linalg.yield %s : f32"]
    nonlin = [*_nonlinearity(eq), "linalg.yield %r : f32"]
    indent = "\n        "
    all_maps = ", ".join([*maps, out_map])
    operands = ", ".join(f"%a{i}" for i in range(len(eq.body)))
    parallel = ", ".join(['"parallel"'] * rank)
    pointwise = f"indexing_maps = [{elementwise}, {elementwise}], iterator_types = [{parallel}]"
    return f"""
  func.func @{function_name(index, eq)}({args}) -> {out_type} {{
    %zero = arith.constant {_f32(0.0)} : f32
    %init = tensor.empty() : {out_type}
    %acc0 = linalg.fill ins(%zero : f32) outs(%init : {out_type}) -> {out_type}
    %sum = linalg.generic {{indexing_maps = [{all_maps}], iterator_types = [{iterators}]}}
        ins({operands} : {", ".join(in_types)}) outs(%acc0 : {out_type}) {{
      ^bb0({block_args}, %acc: f32):
        {indent.join(body)}
    }} -> {out_type}
    %init2 = tensor.empty() : {out_type}
    %out = linalg.generic {{{pointwise}}}
        ins(%sum : {out_type}) outs(%init2 : {out_type}) {{
      ^bb0(%v: f32, %o: f32):
        {indent.join(nonlin)}
    }} -> {out_type}
    return %out : {out_type}
  }}"""


def program_mlir(program: Program, equations: list[int] | None = None) -> str:
    """An MLIR module with one function per equation (all of them by default)."""
    picked = equations if equations is not None else list(range(len(program.equations)))
    for i in picked:
        if not 0 <= i < len(program.equations):
            raise InvalidInput(f"no equation {i}", field="equations")
    body = "".join(equation_mlir(program, i, program.equations[i]) for i in picked)
    return f"module {{{body}\n}}\n"


@dataclass(frozen=True)
class CompiledProgram:
    target: Target
    vmfb: bytes
    functions: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.vmfb)


def compile_equations(
    program: Program, target: Target, equations: list[int] | None = None
) -> CompiledProgram:
    if target not in TARGETS:
        raise InvalidInput(f"unknown target {target!r}", field="target", allowed=TARGETS)
    try:
        import iree.compiler as iree_compiler
    except ImportError as exc:  # the `npu` extra is optional
        raise Unavailable(
            "IREE is not installed (pip install 'trifecta[npu]')", field="target"
        ) from exc
    picked = equations if equations is not None else list(range(len(program.equations)))
    vmfb: bytes = iree_compiler.compile_str(
        program_mlir(program, picked), target_backends=["llvm-cpu"], extra_args=TARGET_FLAGS[target]
    )
    names = tuple(function_name(i, program.equations[i]) for i in picked)
    return CompiledProgram(target, vmfb, names)


class HostModule:
    """A host-compiled program loaded in `iree.runtime` (local-task driver)."""

    def __init__(self, compiled: CompiledProgram):
        if compiled.target != "host":
            raise InvalidInput(
                f"only host modules run here, not {compiled.target}",
                field="target",
                allowed=["host"],
            )
        import iree.runtime as iree_runtime

        self._context = iree_runtime.SystemContext(config=iree_runtime.Config("local-task"))
        self._context.add_vm_module(
            iree_runtime.VmModule.copy_buffer(self._context.instance, compiled.vmfb)
        )
        self._module: Any = self._context.modules.module

    def run(self, function: str, *operands: NDArray[np.float32]) -> NDArray[np.float32]:
        result = self._module[function](*(np.ascontiguousarray(o, np.float32) for o in operands))
        return np.asarray(result)
