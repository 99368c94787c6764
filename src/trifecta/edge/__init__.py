"""The edge layer: BitNet b1.58 ternary models, a torch-free runtime with kernels at the memory
floor, IREE artifacts for the Coral NPU, and the MCP-synced edge mesh (see docs/edge.md).

Kept import-free: `trifecta.edge.runtime`, `node`, `mesh` and `kernels` never import torch;
only `bitlinear`, `model` and `train` do.
"""
