"""Boolean (symbolic) evaluation: relations as sparse, bit-packed or dense Boolean arrays, each
equation's join executed pairwise in the contraction order opt_einsum picks, and recursive
groups of equations run to a fixpoint by semi-naive iteration.

Binary relations stay `scipy.sparse` while they are sparse and switch to bit-packed rows
(`bitset.BitMatrix`) once more than 1/32 of their pairs hold (where the packed form becomes
the smaller one). Joins of binary relations on one shared index are Boolean matrix products;
any other shape of join falls back to a dense einsum, bounded by `max_dense_elements`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeAlias

import numpy as np
import opt_einsum
import scipy.sparse as sp
from numpy.typing import NDArray

from trifecta.core.errors import InvalidInput
from trifecta.tensorlogic.bitset import BitMatrix, bool_matmul_bits
from trifecta.tensorlogic.program import Atom, Equation

BoolValue: TypeAlias = sp.csr_array | BitMatrix | NDArray[np.bool_]
Operand: TypeAlias = tuple[BoolValue, tuple[str, ...]]
DENSE_FRACTION = 1 / 32
PACK_MIN_CELLS = 1 << 16  # smaller relations stay sparse: packing would not pay for itself
MAX_DENSE_ELEMENTS = 1 << 28


def shape_of(value: BoolValue) -> tuple[int, ...]:
    return tuple(int(s) for s in value.shape)


def nnz(value: BoolValue) -> int:
    if isinstance(value, np.ndarray):
        return int(np.count_nonzero(value))
    return int(value.nnz)


def normalise(value: BoolValue) -> BoolValue:
    """The representation a binary relation of this density should have."""
    if isinstance(value, np.ndarray) and value.ndim == 2:
        value = sp.csr_array(value)
    if isinstance(value, sp.sparray):
        value = sp.csr_array(value, dtype=np.bool_)
        value.eliminate_zeros()
        n, m = value.shape
        dense = value.nnz > n * m * DENSE_FRACTION and n * m >= PACK_MIN_CELLS
        return BitMatrix.from_csr(value) if dense else value
    if isinstance(value, BitMatrix):
        n, m = value.shape
        sparse = value.nnz < n * m * DENSE_FRACTION / 2 or n * m < PACK_MIN_CELLS
        return value.to_csr() if sparse else value
    return np.asarray(value, np.bool_)


def to_dense(value: BoolValue) -> NDArray[np.bool_]:
    size = int(np.prod(shape_of(value)))
    if size > MAX_DENSE_ELEMENTS:
        raise InvalidInput(
            f"this join needs a dense array of {size} entries (limit {MAX_DENSE_ELEMENTS})",
            field="program",
        )
    if isinstance(value, BitMatrix):
        return np.asarray(value.to_csr().toarray(), np.bool_)
    if isinstance(value, sp.sparray):
        return np.asarray(value.toarray(), np.bool_)
    return value


def from_coords(coords: NDArray[np.int64], shape: tuple[int, ...]) -> BoolValue:
    if len(shape) == 2:
        data = np.ones(len(coords), np.bool_)
        return normalise(sp.csr_array((data, (coords[:, 0], coords[:, 1])), shape=shape))
    dense = np.zeros(shape, np.bool_)
    dense[tuple(coords.T)] = True
    return dense


def to_coords(value: BoolValue) -> NDArray[np.int64]:
    if isinstance(value, BitMatrix):
        value = value.to_csr()
    if isinstance(value, sp.sparray):
        coo = sp.coo_array(value)
        return np.stack([coo.row, coo.col], axis=1).astype(np.int64)
    return np.argwhere(value).astype(np.int64)


def _same_kind(a: BoolValue, b: BoolValue) -> tuple[BoolValue, BoolValue]:
    if isinstance(a, BitMatrix) or isinstance(b, BitMatrix):
        return _bits(a), _bits(b)
    return a, b


def _bits(value: BoolValue) -> BitMatrix:
    if isinstance(value, BitMatrix):
        return value
    return BitMatrix.from_csr(sp.csr_array(value, dtype=np.bool_))


def union(a: BoolValue, b: BoolValue) -> BoolValue:
    a, b = _same_kind(a, b)
    if isinstance(a, BitMatrix) and isinstance(b, BitMatrix):
        return normalise(a | b)
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a | b
    return normalise(sp.csr_array(a, dtype=np.bool_) + sp.csr_array(b, dtype=np.bool_))


def difference(a: BoolValue, b: BoolValue) -> BoolValue:
    """Pairs of `a` not in `b`."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a & ~b
    if isinstance(a, sp.sparray) and isinstance(b, sp.sparray):
        a_csr, b_csr = sp.csr_array(a, dtype=np.int8), sp.csr_array(b, dtype=np.int8)
        return normalise(a_csr - a_csr.multiply(b_csr) > 0)
    if isinstance(a, sp.sparray) and isinstance(b, BitMatrix):
        coo = sp.coo_array(a)
        words = b.bits[coo.row, coo.col >> 6]
        held = (words >> (coo.col & 63).astype(np.uint64)) & np.uint64(1)
        keep = held == 0
        data = np.ones(int(keep.sum()), np.bool_)
        return normalise(sp.csr_array((data, (coo.row[keep], coo.col[keep])), shape=a.shape))
    return normalise(_bits(a).andnot(_bits(b)))


def equal(a: BoolValue, b: BoolValue) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(to_dense(a), to_dense(b)))
    return _bits(a) == _bits(b)


# --- joins -------------------------------------------------------------------------------


def _select(value: BoolValue, atom: Atom) -> Operand:
    """An atom's value with its constants applied and repeated variables on the diagonal."""
    args = atom.args
    if isinstance(value, np.ndarray):
        index = tuple(a if isinstance(a, int) else slice(None) for a in args)
        dense = value[index]
        labels = [a for a in args if isinstance(a, str)]
        if len(set(labels)) != len(labels):  # R[x, x]: the diagonal
            letters = {v: chr(97 + i) for i, v in enumerate(dict.fromkeys(labels))}
            spec = "".join(letters[v] for v in labels) + "->" + "".join(letters.values())
            dense = np.einsum(spec, dense)
            labels = list(letters)
        return dense, tuple(labels)
    row, col = args
    if isinstance(value, BitMatrix):  # read only the bits needed
        m = value.shape[1]
        if isinstance(row, int):
            bits = np.unpackbits(value.bits[row].view(np.uint8), bitorder="little")[:m]
            line = bits.astype(np.bool_)
            return (np.asarray(line[col]), ()) if isinstance(col, int) else (line, (col,))
        if isinstance(col, int):
            held = (value.bits[:, col >> 6] >> np.uint64(col & 63)) & np.uint64(1)
            return held.astype(np.bool_), (str(row),)
        if row == col:
            ids = np.arange(min(value.shape), dtype=np.int64)
            held = (value.bits[ids, ids >> 6] >> (ids & 63).astype(np.uint64)) & np.uint64(1)
            return held.astype(np.bool_), (str(row),)
        return value, (str(row), str(col))
    csr = sp.csr_array(value)
    if isinstance(row, int) and isinstance(col, int):  # a ground condition: a scalar
        return np.asarray(bool(csr[row, col])), ()
    if isinstance(row, int):
        return np.asarray(csr[[row], :].toarray()[0], np.bool_), (str(col),)
    if isinstance(col, int):
        return np.asarray(csr[:, [col]].toarray()[:, 0], np.bool_), (str(row),)
    if row == col:
        return np.asarray(csr.diagonal(), np.bool_), (str(row),)
    return value, (str(args[0]), str(args[1]))


def _transpose(value: BoolValue) -> BoolValue:
    if isinstance(value, BitMatrix):
        return value.transpose()
    if isinstance(value, sp.sparray):
        return sp.csr_array(value.T)
    return value.T


def _as_matrix(value: BoolValue, labels: tuple[str, ...], col: str) -> sp.csr_array | BitMatrix:
    """A 1-D or 2-D operand as a matrix whose last axis is `col`."""
    if len(labels) == 1:
        return sp.csr_array(np.asarray(value, np.bool_).reshape(1, -1))
    mat = value if labels[1] == col else _transpose(value)
    return sp.csr_array(mat) if isinstance(mat, np.ndarray) else mat


def matmul(a: sp.csr_array | BitMatrix, b: sp.csr_array | BitMatrix) -> BoolValue:
    """Boolean `a @ b`, sparse while the product stays sparse, packed otherwise."""
    n, m = a.shape[0], b.shape[1]
    if isinstance(a, sp.sparray) and isinstance(b, sp.sparray):
        estimate = int(_col_counts(a) @ np.diff(b.indptr).astype(np.int64))
        if estimate <= n * m * DENSE_FRACTION or n * m < PACK_MIN_CELLS:
            return normalise(sp.csr_array(a @ b, dtype=np.bool_))
    return normalise(bool_matmul_bits(a, b))


def _col_counts(matrix: sp.csr_array) -> NDArray[np.int64]:
    return np.bincount(matrix.indices, minlength=matrix.shape[1]).astype(np.int64)


def _dense_pair(a: Operand, b: Operand, out: tuple[str, ...]) -> BoolValue:
    letters = {v: opt_einsum.get_symbol(i) for i, v in enumerate(dict.fromkeys(a[1] + b[1]))}
    spec = (
        "".join(letters[v] for v in a[1])
        + ","
        + "".join(letters[v] for v in b[1])
        + "->"
        + "".join(letters[v] for v in out)
    )
    counts = opt_einsum.contract(
        spec, to_dense(a[0]).astype(np.float32), to_dense(b[0]).astype(np.float32)
    )
    return normalise(np.asarray(counts > 0))


def _pair(a: Operand, b: Operand, keep: set[str]) -> Operand:
    (va, la), (vb, lb) = a, b
    shared = [v for v in la if v in lb]
    summed = [v for v in shared if v not in keep]
    rest_a = tuple(v for v in la if v not in shared)
    rest_b = tuple(v for v in lb if v not in shared)
    if len(summed) == 1 and len(shared) == 1 and len(la) <= 2 and len(lb) <= 2:
        s = summed[0]
        left = _as_matrix(va, la, s)
        right = _transpose(_as_matrix(vb, lb, s))
        product = matmul(left, right)
        out_labels = rest_a + rest_b
        if len(out_labels) == 2:
            return product, out_labels
        dense = to_dense(product)
        return (dense.ravel() if out_labels else dense.reshape(())), out_labels
    if not summed and set(la) == set(lb) and len(la) == 2:
        vb2 = vb if lb == la else _transpose(vb)
        x, y = _same_kind(va, vb2)
        if isinstance(x, BitMatrix) and isinstance(y, BitMatrix):
            return normalise(x & y), la
        return normalise(
            sp.csr_array(x, dtype=np.bool_).multiply(sp.csr_array(y, dtype=np.bool_))
        ), la
    out = tuple(dict.fromkeys(v for v in la + lb if v in keep))
    return _dense_pair(a, b, out), out


def _project(value: BoolValue, labels: tuple[str, ...], drop: set[str]) -> Operand:
    if not drop:
        return value, labels
    axes = tuple(i for i, v in enumerate(labels) if v in drop)
    if isinstance(value, sp.sparray | BitMatrix):
        csr = value.to_csr() if isinstance(value, BitMatrix) else value
        if len(axes) == 2:  # both indices summed out: is the relation non-empty
            return np.asarray(csr.nnz > 0), ()
        counts = np.diff(csr.indptr) if axes == (1,) else _col_counts(csr)
        kept = np.asarray(counts > 0)
        return kept.astype(np.bool_), tuple(v for v in labels if v not in drop)
    return np.asarray(value.any(axis=axes)), tuple(v for v in labels if v not in drop)


def join(operands: Sequence[Operand], out: tuple[str, ...]) -> BoolValue:
    """The Boolean einsum of `operands` onto `out` (variables absent from `out` summed out
    with OR), pairwise in opt_einsum's greedy contraction order."""
    ops = list(operands)
    counts: dict[str, int] = {}
    for _, labels in ops:
        for v in set(labels):
            counts[v] = counts.get(v, 0) + 1
    ops = [_project(v, ls, {x for x in ls if counts[x] == 1 and x not in out}) for v, ls in ops]
    if len(ops) > 1:
        letters = {
            v: opt_einsum.get_symbol(i)
            for i, v in enumerate(dict.fromkeys(x for _, ls in ops for x in ls))
        }
        spec = (
            ",".join("".join(letters[x] for x in ls) for _, ls in ops)
            + "->"
            + "".join(letters[x] for x in out)
        )
        path, _ = opt_einsum.contract_path(
            spec, *[shape_of(v) for v, _ in ops], shapes=True, optimize="greedy"
        )
        for step in path:
            picked = [ops[i] for i in step]
            for i in sorted(step, reverse=True):
                ops.pop(i)
            keep = set(out).union(*(set(ls) for _, ls in ops))
            a = picked[0]
            for b in picked[1:]:
                a = _pair(a, b, keep)
            ops.append(a)
    value, labels = ops[0]
    value, labels = _project(value, labels, {x for x in labels if x not in out})
    if labels != out:
        if len(out) == 2:
            value = _transpose(value)
        else:
            value = np.transpose(to_dense(value), [labels.index(v) for v in out])
    return normalise(value)


def evaluate_body(
    equation: Equation,
    lookup: Callable[[str], BoolValue],
    replace: dict[int, BoolValue] | None = None,
) -> BoolValue:
    """One equation's join; `replace` substitutes the value of the body atom at a position
    (the semi-naive delta)."""
    operands = []
    for i, atom in enumerate(equation.body):
        value = replace[i] if replace and i in replace else lookup(atom.tensor)
        operands.append(_select(value, atom))
    return join(operands, equation.lhs_vars)


def fixpoint(
    group: list[str],
    equations: list[Equation],
    values: dict[str, BoolValue],
    *,
    on_iteration: Callable[[int, int], None] | None = None,
) -> int:
    """Semi-naive evaluation of a recursive group in place: each round joins only the pairs
    derived in the previous round (one body atom at a time) with the full relations.
    Returns the number of rounds."""
    members = set(group)
    delta: dict[str, BoolValue] = {}
    for eq in equations:  # round 0: the equations with no recursive atom
        if not any(a.tensor in members for a in eq.body):
            values[eq.lhs] = union(values[eq.lhs], evaluate_body(eq, values.__getitem__))
    delta = {name: values[name] for name in group}
    rounds = 0
    while any(nnz(d) for d in delta.values()):
        rounds += 1
        derived: dict[str, BoolValue] = {}
        for eq in equations:
            for i, atom in enumerate(eq.body):
                if atom.tensor not in members or nnz(delta[atom.tensor]) == 0:
                    continue
                part = evaluate_body(eq, values.__getitem__, {i: delta[atom.tensor]})
                derived[eq.lhs] = union(derived[eq.lhs], part) if eq.lhs in derived else part
        delta = {}
        for name in group:
            new = (
                difference(derived[name], values[name])
                if name in derived
                else _empty_like(values[name])
            )
            values[name] = union(values[name], new)
            delta[name] = new
        if on_iteration is not None:
            on_iteration(rounds, sum(nnz(d) for d in delta.values()))
    return rounds


def _empty_like(value: BoolValue) -> BoolValue:
    shape = shape_of(value)
    if len(shape) == 2:
        return sp.csr_array(shape, dtype=np.bool_)
    return np.zeros(shape, np.bool_)
