"""Boolean evaluation equals an independent Datalog engine (clingo) on random graphs; the
bit-packed kernels equal scipy; embedding mode at T -> 0 equals the Boolean answer."""

from __future__ import annotations

from collections.abc import Sequence

import clingo
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from trifecta.tensorlogic.bitset import BitMatrix, bool_matmul_bits
from trifecta.tensorlogic.engine import evaluate
from trifecta.tensorlogic.program import Program, compile_program

TC = """
Path[x, z] = step(Edge[x, z])
Path[x, z] = step(Path[x, y] Edge[y, z])
"""
SG = """
SG[x, y] = step(Edge[p, x] Edge[p, y])
SG[x, y] = step(Edge[a, x] SG[a, b] Edge[b, y])
"""
# mutual recursion, a unary relation, a constant, a three-way join (dense path)
MULTI = """
Odd[x, y] = step(Edge[x, y]) + step(Even[x, z] Edge[z, y])
Even[x, y] = step(Odd[x, z] Edge[z, y])
Reach[y] = step(Src[x] Odd[x, y]) + step(Src[x] Even[x, y])
FromZero[y] = step(Odd[0, y])
Loop[x] = step(Odd[x, x])
Tri[x, y, z] = step(Edge[x, y] Edge[y, z] Edge[z, x])
Guarded[x] = step(Src[x] Edge[0, 0])
Any[x] = step(Src[x] Edge[a, b])
"""
ASP = {
    "tc": "path(X,Z) :- edge(X,Z). path(X,Z) :- path(X,Y), edge(Y,Z).",
    "sg": "sg(X,Y) :- edge(P,X), edge(P,Y). sg(X,Y) :- edge(A,X), sg(A,B), edge(B,Y).",
    "multi": (
        "odd(X,Y) :- edge(X,Y). odd(X,Y) :- even(X,Z), edge(Z,Y). even(X,Y) :- odd(X,Z), edge(Z,Y)."
        "reach(Y) :- src(X), odd(X,Y). reach(Y) :- src(X), even(X,Y). fromzero(Y) :- odd(0,Y)."
        "loop(X) :- odd(X,X). tri(X,Y,Z) :- edge(X,Y), edge(Y,Z), edge(Z,X)."
        "guarded(X) :- src(X), edge(0,0). any(X) :- src(X), edge(A,B)."
    ),
}


def clingo_atoms(
    rules: str, edges: list[tuple[int, int]], sources: list[int]
) -> dict[str, set[tuple[int, ...]]]:
    facts = "".join(f"edge({a},{b})." for a, b in edges) + "".join(f"src({s})." for s in sources)
    ctl = clingo.Control(["--warn=none"])
    ctl.add("base", [], facts + rules)
    ctl.ground([("base", [])])
    out: dict[str, set[tuple[int, ...]]] = {}
    with ctl.solve(yield_=True) as handle:
        for model in handle:
            for atom in model.symbols(atoms=True):
                out.setdefault(atom.name, set()).add(tuple(a.number for a in atom.arguments))
    return out


def graph_program(
    n: int, rules: str, edges: list[tuple[int, int]], sources: Sequence[int] = ()
) -> Program:
    decls = (
        f"domain Node {n}\n"
        + "".join(f"tensor {t}[Node, Node]\n" for t in ("Edge", "Path", "SG", "Odd", "Even"))
        + "".join(
            f"tensor {t}[Node]\n" for t in ("Src", "Reach", "FromZero", "Loop", "Guarded", "Any")
        )
        + "tensor Tri[Node, Node, Node]\n"
    )
    program = compile_program(decls + rules)
    if edges:
        program.add_facts("Edge", np.array(edges, np.int64))
    if sources:
        program.add_facts("Src", np.array(sources, np.int64).reshape(-1, 1))
    return program


def ours(program: Program, tensor: str) -> set[tuple[int, ...]]:
    result = evaluate(program)
    return set(map(tuple, np.argwhere(result.dense(tensor) > 0).tolist()))


graphs = st.integers(1, 24).flatmap(
    lambda n: st.tuples(
        st.just(n),
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=3 * n),
    )
)


@settings(max_examples=25, deadline=None)
@given(graphs)
def test_transitive_closure_equals_clingo(graph: tuple[int, list[tuple[int, int]]]) -> None:
    n, edges = graph
    assert ours(graph_program(n, TC, edges), "Path") == clingo_atoms(ASP["tc"], edges, []).get(
        "path", set()
    )


@settings(max_examples=25, deadline=None)
@given(graphs)
def test_same_generation_equals_clingo(graph: tuple[int, list[tuple[int, int]]]) -> None:
    n, edges = graph
    assert ours(graph_program(n, SG, edges), "SG") == clingo_atoms(ASP["sg"], edges, []).get(
        "sg", set()
    )


@settings(max_examples=20, deadline=None)
@given(graphs, st.data())
def test_multi_rule_program_equals_clingo(
    graph: tuple[int, list[tuple[int, int]]], data: st.DataObject
) -> None:
    n, edges = graph
    sources = data.draw(st.lists(st.integers(0, n - 1), max_size=3))
    program = graph_program(n, MULTI, edges, sources)
    result = evaluate(program)
    expected = clingo_atoms(ASP["multi"], edges, sources)
    for tensor, predicate in [
        ("Odd", "odd"),
        ("Even", "even"),
        ("Reach", "reach"),
        ("FromZero", "fromzero"),
        ("Loop", "loop"),
        ("Tri", "tri"),
        ("Guarded", "guarded"),
        ("Any", "any"),
    ]:
        got = set(map(tuple, np.argwhere(result.dense(tensor) > 0).tolist()))
        assert got == expected.get(predicate, set()), tensor


@pytest.mark.parametrize(("n", "p"), [(400, 0.004), (400, 0.03)])
def test_closure_of_a_larger_graph_equals_dense_matrix_powers(n: int, p: float) -> None:
    """Large enough that the closure is bit-packed and the delta joins take the transposed
    path; checked against reachability by repeated dense matrix products."""
    rng = np.random.default_rng(3)
    adjacency = (rng.random((n, n)) < p).astype(np.float32)
    program = graph_program(n, TC, [(int(a), int(b)) for a, b in np.argwhere(adjacency)])
    reach = adjacency > 0
    while True:
        grown = reach | ((reach.astype(np.float32) @ adjacency) > 0)
        if np.array_equal(grown, reach):
            break
        reach = grown
    assert ours(program, "Path") == set(map(tuple, np.argwhere(reach).tolist()))


@settings(max_examples=20, deadline=None)
@given(
    st.integers(1, 130),
    st.integers(1, 130),
    st.integers(1, 130),
    st.floats(0.0, 0.5),
    st.integers(0, 2**32 - 1),
)
def test_bit_packed_product_equals_scipy(n: int, k: int, m: int, density: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = sp.csr_array(rng.random((n, k)) < density)
    b = sp.csr_array(rng.random((k, m)) < density * 0.5)
    expected = (a.astype(np.int32) @ b.astype(np.int32)).toarray() > 0
    packed_a, packed_b = BitMatrix.from_csr(a), BitMatrix.from_csr(b)
    assert np.array_equal(packed_a.transpose().to_csr().toarray(), a.toarray().T)
    for left, right in [(a, b), (packed_a, b), (a, packed_b), (packed_a, packed_b)]:
        assert np.array_equal(bool_matmul_bits(left, right).to_csr().toarray(), expected)


@settings(max_examples=10, deadline=None)
@given(graphs)
def test_embedding_mode_at_zero_temperature_equals_boolean(
    graph: tuple[int, list[tuple[int, int]]],
) -> None:
    n, edges = graph
    program = graph_program(n, TC + SG, edges)
    exact = evaluate(program)
    soft = evaluate(program, mode="embedding", temperature=1e-4, embed_dim=max(n, 1))
    for tensor in ("Path", "SG"):
        assert np.allclose(soft.dense(tensor), exact.dense(tensor), atol=1e-9), tensor


def test_embedding_mode_is_analogical_at_higher_temperature() -> None:
    """With fewer dimensions than objects and T > 0 the answers are graded (similar objects
    share facts) and the Boolean answers keep the higher scores."""
    n = 12
    ring = [(i, (i + 1) % n) for i in range(n)] + [(i, (i + 3) % n) for i in range(n)]
    program = compile_program(
        f"domain Node {n}\ntensor Edge[Node, Node]\ntensor Two[Node, Node]\n"
        "Two[x, z] = step(Edge[x, y] Edge[y, z])\n"
    )
    program.add_facts("Edge", np.array(ring))
    exact = evaluate(program).dense("Two")
    soft = evaluate(program, mode="embedding", temperature=0.2, embed_dim=6, seed=1).dense("Two")
    assert soft.min() > 0.0 and soft.max() < 1.0
    assert soft[exact > 0].mean() > soft[exact == 0].mean() + 0.05


def test_queries_on_a_packed_relation_read_only_what_they_need() -> None:
    from trifecta.tensorlogic.bitset import BitMatrix
    from trifecta.tensorlogic.program import parse_query

    rng = np.random.default_rng(0)
    program = graph_program(400, TC, [tuple(e) for e in rng.integers(0, 400, (1200, 2)).tolist()])
    result = evaluate(program)
    assert isinstance(result.boolean["Path"], BitMatrix)
    dense = result.dense("Path")
    for text in ("Path[3, z]", "Path[x, 7]", "Path[x, z]"):
        atom = parse_query(program, text)
        index = tuple(a if isinstance(a, int) else slice(None) for a in atom.args)
        assert len(result.answers(atom)) == int(np.count_nonzero(dense[index]))
        assert len(result.answers(atom, limit=5)) == 5
    for a, b in [(3, 7), (5, 5), (0, 399)]:
        assert result.value(parse_query(program, f"Path[{a}, {b}]")) == dense[a, b]
    small = graph_program(5, TC, [(0, 1), (1, 2)])
    small_result = evaluate(small)
    for a, b, held in [(0, 2, 1.0), (2, 0, 0.0), (0, 0, 0.0)]:
        assert small_result.value(parse_query(small, f"Path[{a}, {b}]")) == held
        assert len(small_result.answers(parse_query(small, f"Path[{a}, {b}]"))) == held
    assert len(small_result.answers(parse_query(small, "Path[x, 2]"))) == 2


def test_a_query_is_parsed_without_reading_the_working_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A query loads no file: parsing one makes no `getcwd` system call (the request path
    # parses every rule query), and answers as before.
    from pathlib import Path

    from trifecta.tensorlogic.program import parse_query

    small = graph_program(5, TC, [(0, 1), (1, 2)])

    def no_cwd() -> Path:
        raise AssertionError("parse_query read the working folder")

    monkeypatch.setattr(Path, "cwd", staticmethod(no_cwd))
    assert evaluate(small).value(parse_query(small, "Path[0, 2]")) == 1.0


def test_constants_and_diagonals_read_from_a_packed_relation() -> None:
    rules = TC + (
        "FromZero[y] = step(Path[0, y])\nReach[x] = step(Path[x, 7])\n"
        "Loop[x] = step(Path[x, x])\nSrc[x] = step(Path[x, 3] Path[5, 5])\n"
    )
    rng = np.random.default_rng(1)
    program = graph_program(
        400, rules, [tuple(e) for e in rng.integers(0, 400, (1000, 2)).tolist()]
    )
    result = evaluate(program)
    path = result.dense("Path")
    assert np.array_equal(result.dense("FromZero"), path[0])
    assert np.array_equal(result.dense("Reach"), path[:, 7])
    assert np.array_equal(result.dense("Loop"), np.diag(path))
    assert np.array_equal(result.dense("Src"), path[:, 3] * path[5, 5])
