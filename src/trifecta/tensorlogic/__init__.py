"""Tensor Logic: rules as tensor equations compiled to einsums (see docs/tensorlogic.md).

Boolean (symbolic, exact) evaluation with sparse and bit-packed joins and semi-naive
fixpoints; embedding (analogical) mode with a temperature; learnable tensors fitted with
PyTorch, also by federated averaging over one process per data partition; equations
lowered to MLIR and compiled with IREE for the host and the Coral NPU's RISC-V core; a rule
query service for the product loop.

Kept import-light: torch is imported only by `learn` (and inside the sites of
`federated`), IREE only inside `mlir`'s functions.
"""
