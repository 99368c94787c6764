"""IREE: the host module equals the reference; the riscv32 (Coral NPU core) module is produced.

What is verified by execution: the host `llvm-cpu` module, run with `iree.runtime`, for one
block's four layers (every layer shape of the model). What is only compiled: the riscv32
module; the test checks it is a VM flatbuffer holding a RISC-V ELF of 32-bit class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trifecta.core.errors import InvalidInput
from trifecta.edge.artifact import EdgeArtifact
from trifecta.edge.kernels.reference import quantize_activations, reference_matmul

pytest.importorskip("iree.compiler", reason="IREE is the optional `npu` extra")
pytestmark = pytest.mark.slow

BLOCK0 = ["blocks.0.qkv", "blocks.0.out", "blocks.0.up", "blocks.0.down"]


def test_host_module_equals_the_reference(small_artifact: EdgeArtifact) -> None:
    from trifecta.edge.npu import HostModule, compile_model

    compiled = compile_model(small_artifact, "host", BLOCK0)
    module = HostModule(compiled)
    rng = np.random.default_rng(0)
    for name in BLOCK0:
        matrix = small_artifact.ternary[name]
        x = (rng.standard_normal((3, matrix.in_features)) * 4).astype(np.float32)
        acc, y = module.bitlinear(name, x)
        x_q, multiplier = quantize_activations(x)
        expected = reference_matmul(matrix.values(), x_q)
        assert np.array_equal(acc, expected), name
        assert np.array_equal(
            y, expected.astype(np.float32) * (np.float32(matrix.scale) / multiplier)
        ), name


def test_riscv32_module_is_produced_with_packed_weights(
    small_artifact: EdgeArtifact, tmp_path: Path
) -> None:
    from trifecta.edge.npu import compile_model

    compiled = compile_model(small_artifact, "riscv32", ["blocks.0.up"])
    path = compiled.save(tmp_path / "edge-riscv32.vmfb")
    data = path.read_bytes()
    assert compiled.size == len(data) > 0
    elf = data.find(b"\x7fELF")
    assert elf >= 0, "no embedded ELF in the module"
    assert data[elf + 4] == 1  # ELFCLASS32
    assert int.from_bytes(data[elf + 18 : elf + 20], "little") == 0xF3  # EM_RISCV
    # the 2-bit constant survives compilation (IREE's constant evaluation is off)
    packed = small_artifact.ternary["blocks.0.up"].relayout("i2").packed.tobytes()
    assert packed in data


def test_unknown_target_and_layer_are_refused(small_artifact: EdgeArtifact) -> None:
    from trifecta.edge.npu import compile_model, model_mlir

    with pytest.raises(InvalidInput, match="unknown target"):
        compile_model(small_artifact, "tpu", BLOCK0)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="no layer"):
        model_mlir(small_artifact, ["blocks.9.qkv"])
