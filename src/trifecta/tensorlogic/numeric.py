"""Real-valued evaluation of equations: dense einsums through opt_einsum on numpy arrays or
torch tensors (the same code serves evaluation, embedding mode and learning).

A term is `coefficient * f(einsum(body), T)` with f one of step, sigmoid (`1/(1+e^(-x/T))`),
relu or the identity. Several equations with one left-hand side are summed, except for a
tensor all of whose equations apply `step`: that one is a relation and its terms combine by
noisy-OR, `1 - prod(1 - v)`, which is exactly OR on 0/1 values and differentiable between.
In embedding mode `step` becomes the temperature sigmoid `sigmoid((x - 1/2) / T)`: for the
integer counts a Boolean join produces it tends to step(x) as T -> 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import opt_einsum

from trifecta.tensorlogic.program import Equation, Program

# numpy arrays or torch tensors; the functions below work on either.
Array = Any


def is_relation(program: Program, tensor: str) -> bool:
    """Defined only by `step` equations (so its value is Boolean in Boolean mode)."""
    eqs = [e for e in program.equations if e.lhs == tensor]
    return bool(eqs) and all(e.nonlinearity == "step" for e in eqs)


def _is_numpy(x: Array) -> bool:
    return isinstance(x, np.ndarray | np.generic)


def _sigmoid(x: Array) -> Array:
    if _is_numpy(x):
        # split by sign so that large |x| neither overflows nor loses the tiny tail
        out = np.empty_like(x, dtype=np.float64)
        pos = x >= 0
        out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
        ex = np.exp(x[~pos])
        out[~pos] = ex / (1.0 + ex)
        return out
    import torch

    return torch.sigmoid(x)


def nonlinearity(eq: Equation, x: Array, step_temperature: float | None) -> Array:
    if eq.nonlinearity == "step":
        if step_temperature is None:
            return (x > 0).astype(np.float64) if _is_numpy(x) else (x > 0).to(x.dtype)
        return _sigmoid((x - 0.5) / step_temperature)
    if eq.nonlinearity == "sigmoid":
        return _sigmoid(x / eq.temperature)
    if eq.nonlinearity == "relu":
        return np.maximum(x, 0.0) if _is_numpy(x) else x.clamp(min=0.0)
    return x


def einsum_spec(eq: Equation) -> str:
    letters: dict[str, str] = {}
    for atom in eq.body:
        for v in atom.variables:
            letters.setdefault(v, opt_einsum.get_symbol(len(letters)))
    inputs = ",".join("".join(letters[v] for v in a.variables) for a in eq.body)
    return inputs + "->" + "".join(letters[v] for v in eq.lhs_vars)


def term(eq: Equation, lookup: Callable[[str], Array], step_temperature: float | None) -> Array:
    operands = []
    for atom in eq.body:
        value = lookup(atom.tensor)
        if any(isinstance(a, int) for a in atom.args):
            value = value[tuple(a if isinstance(a, int) else slice(None) for a in atom.args)]
        operands.append(value)
    joined = opt_einsum.contract(einsum_spec(eq), *operands)
    return eq.coefficient * nonlinearity(eq, joined, step_temperature)


def combine(relation: bool, base: Array, parts: list[Array]) -> Array:
    if not relation:
        total = base
        for part in parts:
            total = total + part
        return total
    missing = 1.0 - base
    for part in parts:
        missing = missing * (1.0 - part)
    return 1.0 - missing


def run_group(
    program: Program,
    group: list[str],
    values: dict[str, Array],
    base: dict[str, Array],
    *,
    step_temperature: float | None,
    recursive: bool,
    max_rounds: int = 200,
    tol: float = 1e-9,
    on_iteration: Callable[[int, float], None] | None = None,
) -> int:
    """Evaluate one group of mutually recursive tensors in place (to convergence when
    recursive: naive iteration from their facts). Returns the number of rounds."""
    equations = [e for e in program.equations if e.lhs in group]
    relation = {name: is_relation(program, name) for name in group}
    rounds = 0
    while True:
        rounds += 1
        new = {}
        for name in group:
            parts = [
                term(e, values.__getitem__, step_temperature) for e in equations if e.lhs == name
            ]
            new[name] = combine(relation[name], base[name], parts)
        change = max(_max_abs(new[n] - values[n]) for n in group)
        values.update(new)
        if on_iteration is not None:
            on_iteration(rounds, change)
        if not recursive or change <= tol or rounds >= max_rounds:
            return rounds


def _max_abs(x: Array) -> float:
    if _is_numpy(x):
        return float(np.max(np.abs(x))) if x.size else 0.0
    return float(x.detach().abs().max()) if x.numel() else 0.0
