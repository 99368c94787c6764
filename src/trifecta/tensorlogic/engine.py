"""Evaluate a program: groups of mutually recursive tensors in dependency order, each group
Boolean (sparse / bit-packed, semi-naive fixpoint) when it is a set of `step` rules over
relations, real-valued (dense einsums) otherwise.

Two modes:
- `boolean` (deductive, exact): relations are sets; what `tl run` and the edge answer with.
- `embedding` (analogical): every object of a domain is a unit vector of `embed_dim`
  dimensions, a relation's facts are read back through its domains' embedding Gram matrices
  (`R~ = G_1 R G_2`: similar objects share facts) and `step` is the temperature sigmoid. With
  orthonormal embeddings (`embed_dim >= domain size`) and T -> 0 it gives the Boolean answer.
"""

from __future__ import annotations

import graphlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.sparse.csgraph import connected_components

from trifecta.core.errors import InvalidInput
from trifecta.tensorlogic import boolean, numeric
from trifecta.tensorlogic.bitset import BitMatrix
from trifecta.tensorlogic.boolean import BoolValue
from trifecta.tensorlogic.program import Atom, Index, Program

Mode = Literal["boolean", "embedding"]
Progress = Callable[[str, int, float], None]  # (tensor group, round, change or new pairs)


def groups(program: Program) -> list[list[str]]:
    """The tensors defined by equations, grouped by strongly connected component of the
    dependency graph, in an order where every group comes after what it reads."""
    names = sorted(program.tensors)
    at = {n: i for i, n in enumerate(names)}
    rows, cols = [], []
    for eq in program.equations:
        for atom in eq.body:
            rows.append(at[eq.lhs])
            cols.append(at[atom.tensor])
    graph = sp.csr_array((np.ones(len(rows)), (rows, cols)), shape=(len(names), len(names)))
    _, label = connected_components(graph, directed=True, connection="strong")
    defined = program.defined_by_equations()
    members: dict[int, list[str]] = {}
    for name in names:
        members.setdefault(int(label[at[name]]), []).append(name)
    sorter: graphlib.TopologicalSorter[int] = graphlib.TopologicalSorter()
    for comp in members:
        sorter.add(comp)
    for r, c in zip(rows, cols, strict=True):
        if label[r] != label[c]:
            sorter.add(int(label[r]), int(label[c]))
    order = list(sorter.static_order())
    return [members[c] for c in order if any(n in defined for n in members[c])]


def is_recursive(program: Program, group: list[str]) -> bool:
    return any(a.tensor in group for e in program.equations if e.lhs in group for a in e.body)


def boolean_tensors(program: Program) -> set[str]:
    """Tensors whose value is a set: relations (only `step` equations) and tensors without
    equations whose facts are all 1, unless learnable or given dense values."""
    out = set()
    for name, info in program.tensors.items():
        if info.learnable or name in program.dense:
            continue
        _, values = program.fact_arrays(name)
        if not np.all(values == 1.0):
            continue
        eqs = [e for e in program.equations if e.lhs == name]
        if all(e.nonlinearity == "step" for e in eqs):
            out.add(name)
    return out


def dense_base(
    program: Program, name: str, params: dict[str, NDArray[np.float64]] | None = None
) -> NDArray[np.float64]:
    if params and name in params:
        return np.asarray(params[name], np.float64)
    shape = program.shape(name)
    size = int(np.prod(shape))
    if size > boolean.MAX_DENSE_ELEMENTS:
        raise InvalidInput(f"{name} would be a dense array of {size} entries", field="program")
    out = np.array(program.dense[name], np.float64) if name in program.dense else np.zeros(shape)
    coords, values = program.fact_arrays(name)
    if len(coords):
        out[tuple(coords.T)] = values
    return out


def embeddings(program: Program, dim: int, seed: int) -> dict[str, NDArray[np.float64]]:
    """One unit vector per object of each domain: orthonormal when `dim` allows it."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, domain in program.domains.items():
        n = domain.size
        raw = rng.standard_normal((max(n, dim), dim))
        if dim >= n:
            q, _ = np.linalg.qr(raw)
            out[name] = q[:n, :dim]
        else:
            out[name] = raw[:n] / np.linalg.norm(raw[:n], axis=1, keepdims=True)
    return out


def _pairs(value: BoolValue, args: tuple[Index, ...], limit: int | None) -> NDArray[np.int64]:
    """The pairs of a binary relation matching the query's constants, without unpacking more
    of a packed relation than the query needs (a 20k-node closure is 400M pairs)."""
    row, col = args
    if isinstance(value, np.ndarray):
        value = boolean.normalise(value)
    if isinstance(value, BitMatrix):
        n, m = value.shape
        if isinstance(row, int) and isinstance(col, int):
            held = (int(value.bits[row, col >> 6]) >> (col & 63)) & 1
            return np.array([[row, col]] * held, np.int64).reshape(-1, 2)
        if isinstance(col, int):
            bits = (value.bits[:, col >> 6] >> np.uint64(col & 63)) & np.uint64(1)
            rows = np.flatnonzero(bits)
            return np.stack([rows, np.full(len(rows), col)], axis=1).astype(np.int64)
        starts = [row] if isinstance(row, int) else range(0, n, 256)
        found: list[NDArray[np.int64]] = []
        for start in starts:
            stop = start + 1 if isinstance(row, int) else min(start + 256, n)
            block = BitMatrix(value.bits[start:stop], (stop - start, m)).to_csr()
            coords = boolean.to_coords(block)
            coords[:, 0] += start
            found.append(coords)
            if limit is not None and sum(len(f) for f in found) >= limit:
                break
        return np.concatenate(found) if found else np.zeros((0, 2), np.int64)
    csr = sp.csr_array(value)
    if isinstance(row, int):
        coords = boolean.to_coords(csr[[row], :])
        coords[:, 0] = row
    else:
        coords = boolean.to_coords(csr)
    return coords[coords[:, 1] == col] if isinstance(col, int) else coords


@dataclass
class Result:
    program: Program
    mode: Mode
    boolean: dict[str, BoolValue] = field(default_factory=dict)
    numeric: dict[str, NDArray[np.float64]] = field(default_factory=dict)
    rounds: dict[str, int] = field(default_factory=dict)

    def dense(self, name: str) -> NDArray[np.float64]:
        if name in self.numeric:
            return self.numeric[name]
        return boolean.to_dense(self.boolean[name]).astype(np.float64)

    def count(self, name: str) -> int:
        if name in self.boolean:
            return boolean.nnz(self.boolean[name])
        return int(np.count_nonzero(self.numeric[name]))

    def answers(self, query: Atom, limit: int | None = None) -> list[tuple[tuple[str, ...], float]]:
        """The entries of a query: bindings of its variables (as symbols) with their value,
        largest value first; zero entries are left out."""
        info = self.program.tensors[query.tensor]
        domains = [self.program.domains[d] for d in info.domains]
        if query.tensor in self.boolean and len(info.domains) == 2:
            coords = _pairs(self.boolean[query.tensor], query.args, limit)
            values = np.ones(len(coords))
        else:
            table = self.dense(query.tensor)
            coords = np.argwhere(table != 0)
            values = table[tuple(coords.T)] if len(coords) else np.zeros(0)
        keep = np.ones(len(coords), np.bool_)
        for pos, arg in enumerate(query.args):
            if isinstance(arg, int):
                keep &= coords[:, pos] == arg
        free = [i for i, a in enumerate(query.args) if isinstance(a, str)]
        rows = coords[keep]
        vals = values[keep]
        order: list[int] = (
            np.lexsort((*(rows[:, i] for i in reversed(free)), -vals)).tolist() if len(rows) else []
        )
        out = []
        for k in order[:limit]:
            symbols = tuple(domains[i].symbols[int(rows[k, i])] for i in free)
            out.append((symbols, float(vals[k])))
        return out

    def value(self, query: Atom) -> float:
        """The value at a query whose indices are all constants."""
        index = tuple(int(a) for a in query.args)
        if query.tensor in self.boolean and len(index) == 2:
            return float(len(_pairs(self.boolean[query.tensor], index, None)) > 0)
        return float(self.dense(query.tensor)[index])


def evaluate(
    program: Program,
    *,
    mode: Mode = "boolean",
    temperature: float = 0.01,
    embed_dim: int = 64,
    seed: int = 0,
    params: dict[str, NDArray[np.float64]] | None = None,
    on_progress: Progress | None = None,
) -> Result:
    """Every tensor's value. `params` overrides learnable tensors with fitted values."""
    if temperature <= 0:
        raise InvalidInput("must be positive", field="temperature")
    result = Result(program, mode)
    sets = boolean_tensors(program) if mode == "boolean" else set()
    gram: dict[str, NDArray[np.float64]] = {}
    if mode == "embedding":
        gram = {d: e @ e.T for d, e in embeddings(program, embed_dim, seed).items()}
    base: dict[str, NDArray[np.float64]] = {}
    for name in program.tensors:
        if name in sets:
            coords, _ = program.fact_arrays(name)
            result.boolean[name] = boolean.from_coords(coords, program.shape(name))
        else:
            value = dense_base(program, name, params)
            fitted = params is not None and name in params
            if mode == "embedding" and not fitted and name not in program.dense:
                # read the facts back through the embeddings: similar objects share them
                for axis, d in enumerate(program.tensors[name].domains):
                    value = np.moveaxis(np.tensordot(gram[d], value, axes=([1], [axis])), 0, axis)
                value = np.clip(value, 0.0, 1.0)
            base[name] = value
            result.numeric[name] = value
    step_t = temperature if mode == "embedding" else None
    for group in groups(program):
        recursive = is_recursive(program, group)
        label = ",".join(group)
        eqs = [e for e in program.equations if e.lhs in group]
        reads = {a.tensor for e in eqs for a in e.body}
        if not all(n in sets for n in group) or not reads <= sets:
            for name in group:  # a relation reading real values is evaluated as reals
                if name in sets:
                    sets.discard(name)
                    base[name] = result.numeric[name] = result.dense(name)
                    del result.boolean[name]
        if all(n in sets for n in group):
            if recursive:

                def report(r: int, new: int, label: str = label) -> None:
                    if on_progress is not None:
                        on_progress(label, r, float(new))

                rounds = boolean.fixpoint(group, eqs, result.boolean, on_iteration=report)
            else:
                for eq in eqs:
                    result.boolean[eq.lhs] = boolean.union(
                        result.boolean[eq.lhs],
                        boolean.evaluate_body(eq, result.boolean.__getitem__),
                    )
                rounds = 1
        else:

            def lookup_report(r: int, change: float, label: str = label) -> None:
                if on_progress is not None:
                    on_progress(label, r, change)

            for eq in program.equations:
                for atom in eq.body if eq.lhs in group else ():
                    if atom.tensor not in result.numeric:  # a relation read as 0/1 values
                        result.numeric[atom.tensor] = result.dense(atom.tensor)
            rounds = numeric.run_group(
                program,
                group,
                result.numeric,
                base,
                step_temperature=step_t,
                recursive=recursive,
                on_iteration=lookup_report,
            )
        for name in group:
            result.rounds[name] = rounds
    return result
