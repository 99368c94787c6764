"""Ternary-weight x int8-activation kernels (torch-free: numpy and numba only)."""

from trifecta.edge.kernels.registry import (
    KERNELS,
    KernelSpec,
    PreparedTernary,
    available_kernels,
    select_kernel,
)

__all__ = ["KERNELS", "KernelSpec", "PreparedTernary", "available_kernels", "select_kernel"]
