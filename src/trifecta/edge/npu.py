"""The edge model's BitLinear layers compiled with IREE, for the host and for the Coral NPU.

Each ternary layer becomes one function of an MLIR module (linalg on tensors) that does the
whole BitLinear: per-token absmax int8 quantisation of float32 activations, the ternary
product with the layer's *packed* 2-bit weights held as a constant and unpacked inside the
kernel (so the deployable module carries 2 bits per weight), and the float32 rescaling.
It returns the int32 accumulations and the float32 output.

Two targets:
- `host`: IREE's `llvm-cpu` backend for this machine. The tests run this module with
  `iree.runtime` and check every layer against the reference (accumulations bit for bit).
- `riscv32`: the same module cross-compiled for a 32-bit RISC-V core with the M and F
  extensions (`riscv32`, `+m,+f`, ABI ilp32f), the scalar core of the Coral NPU. This one is
  only compiled here (no RISC-V machine or simulator runs it): what is verified is that IREE
  produces the artifact, its size, and that it holds the riscv32 executable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from trifecta.core.errors import InvalidInput, Unavailable
from trifecta.edge.artifact import EdgeArtifact, TernaryMatrix
from trifecta.edge.assets import asset_dir

Target = Literal["host", "riscv32"]
TARGETS: tuple[Target, ...] = ("host", "riscv32")
# Keep the weight unpacking inside the kernels: with IREE's default constant evaluation the
# compiler would unpack the 2-bit constants at build time and ship 8 bits per weight.
COMMON_FLAGS = ["--iree-opt-const-eval=false", "--iree-opt-const-expr-hoisting=false"]
TARGET_FLAGS: dict[Target, list[str]] = {
    "host": ["--iree-llvmcpu-target-cpu=host"],
    "riscv32": [
        "--iree-llvmcpu-target-triple=riscv32-pc-linux-elf",
        "--iree-llvmcpu-target-cpu=generic-rv32",
        "--iree-llvmcpu-target-cpu-features=+m,+f",
        "--iree-llvmcpu-target-abi=ilp32f",
    ],
}


def function_name(layer: str) -> str:
    return layer.replace(".", "_")


def _layer_mlir(name: str, matrix: TernaryMatrix) -> str:
    """One BitLinear as an MLIR function: x (B, K) f32 -> (acc (B, N) i32, y (B, N) f32)."""
    n, k = matrix.shape
    i2 = matrix.relayout("i2")
    width = i2.packed.shape[1]
    weights = "0x" + i2.packed.tobytes().hex().upper()
    scale = float(np.float32(matrix.scale))
    text = (asset_dir() / "bitlinear.mlir").read_text()
    template = Template("\n".join(line for line in text.splitlines() if not line.startswith("//")))
    return template.substitute(
        function=function_name(name), k=k, n=n, width=width, weights=weights, scale=f"{scale:.9e}"
    )


def model_mlir(artifact: EdgeArtifact, layers: list[str] | None = None) -> str:
    """An MLIR module with one function per ternary layer (all of them by default)."""
    names = layers if layers is not None else sorted(artifact.ternary)
    unknown = sorted(set(names) - set(artifact.ternary))
    if unknown:
        raise InvalidInput(
            f"no layer {unknown[0]!r}", field="layers", allowed=sorted(artifact.ternary)
        )
    maps = """
#rows_k = affine_map<(r, c) -> (r, c)>
#rows = affine_map<(r, c) -> (r)>
#vec = affine_map<(r) -> (r)>
#packed_byte = affine_map<(r, c) -> (r, c floordiv 4)>
#mk = affine_map<(m, n, k) -> (m, k)>
#nk = affine_map<(m, n, k) -> (n, k)>
#mn = affine_map<(m, n, k) -> (m, n)>
"""
    body = "\n".join(_layer_mlir(name, artifact.ternary[name]) for name in names)
    return maps + f"module {{{body}\n}}\n"


def compile_module(mlir: str, target: Target) -> bytes:
    """IREE-compile a module for `target` (an IREE VM flatbuffer, `.vmfb`)."""
    if target not in TARGETS:
        raise InvalidInput(f"unknown target {target!r}", field="target", allowed=TARGETS)
    try:
        import iree.compiler as iree_compiler
    except ImportError as exc:  # the `npu` extra is optional
        raise Unavailable(
            "IREE is not installed (pip install 'trifecta[npu]')", field="target"
        ) from exc
    result: bytes = iree_compiler.compile_str(
        mlir, target_backends=["llvm-cpu"], extra_args=COMMON_FLAGS + TARGET_FLAGS[target]
    )
    return result


@dataclass(frozen=True)
class CompiledModel:
    target: Target
    vmfb: bytes
    layers: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.vmfb)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.vmfb)
        return path


def compile_model(
    artifact: EdgeArtifact, target: Target, layers: list[str] | None = None
) -> CompiledModel:
    names = layers if layers is not None else sorted(artifact.ternary)
    return CompiledModel(target, compile_module(model_mlir(artifact, names), target), tuple(names))


class HostModule:
    """A host-compiled module loaded in `iree.runtime` (local-task driver)."""

    def __init__(self, compiled: CompiledModel):
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

    def bitlinear(
        self, layer: str, x: NDArray[np.float32]
    ) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
        acc, y = self._module[function_name(layer)](np.ascontiguousarray(x, np.float32))
        return np.asarray(acc), np.asarray(y)
