"""Edge compilation: the IREE host module equals numpy; the riscv32 module is produced and
embeds a 32-bit RISC-V ELF."""

from __future__ import annotations

import numpy as np
import pytest

from trifecta.tensorlogic import numeric
from trifecta.tensorlogic.mlir import HostModule, compile_equations, program_mlir
from trifecta.tensorlogic.program import compile_program

iree_compiler = pytest.importorskip("iree.compiler", reason="IREE (the npu extra) is not installed")

PROGRAM = """
domain A 6
domain B 3
tensor R[A, A]
tensor S[A, B]
tensor T[A, B]
tensor U[A]
T[x, y] = step(R[x, z] S[z, y])
T[x, y] = 0.5 * sigmoid(R[x, z] R[z, w] S[w, y], 0.7)
U[x] = relu(R[x, z] S[z, y])
U[x] = S[x, y]
"""


@pytest.mark.slow
def test_host_module_equals_numpy() -> None:
    program = compile_program(PROGRAM)
    compiled = compile_equations(program, "host")
    module = HostModule(compiled)
    rng = np.random.default_rng(0)
    values = {n: rng.standard_normal(program.shape(n)).astype(np.float32) for n in program.tensors}
    for function, eq in zip(compiled.functions, program.equations, strict=True):
        got = module.run(function, *[values[a.tensor] for a in eq.body])
        expected = numeric.term(eq, lambda n: values[n].astype(np.float64), None)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_riscv32_module_embeds_a_32_bit_risc_v_elf() -> None:
    program = compile_program(PROGRAM)
    compiled = compile_equations(program, "riscv32", [0])
    elf = compiled.vmfb.find(b"\x7fELF")
    assert elf >= 0, "no embedded ELF in the module"
    assert compiled.vmfb[elf + 4] == 1  # ELFCLASS32
    assert int.from_bytes(compiled.vmfb[elf + 18 : elf + 20], "little") == 0xF3  # EM_RISCV


def test_lowering_is_linalg_generic_with_reductions_for_summed_indices() -> None:
    text = program_mlir(compile_program(PROGRAM), [0])
    assert "func.func @eq0_T(%a0: tensor<6x6xf32>, %a1: tensor<6x3xf32>) -> tensor<6x3xf32>" in text
    assert 'iterator_types = ["parallel", "parallel", "reduction"]' in text
    assert "arith.cmpf ogt" in text
