"""The language: the parser round-trips, errors name their line and column, limits hold."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trifecta.tensorlogic.printer import render
from trifecta.tensorlogic.program import Limits, ProgramError, compile_program, load_program
from trifecta.tensorlogic.syntax import (
    KEYWORDS,
    NONLINEARITIES,
    Arg,
    DenseStmt,
    DomainDecl,
    EquationStmt,
    FactStmt,
    LoadStmt,
    ParamStmt,
    Pos,
    QueryStmt,
    Ref,
    TensorDecl,
    Term,
    parse,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "tensorlogic"
P = Pos(1, 1)


def strip(node: object) -> object:
    """A syntax tree without positions (they differ between the original and the reparse)."""
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        fields = [f.name for f in dataclasses.fields(node) if f.name != "pos"]
        return (type(node).__name__, *(strip(getattr(node, f)) for f in fields))
    if isinstance(node, tuple | list):
        return tuple(strip(x) for x in node)
    return node


names = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,6}", fullmatch=True).filter(
    lambda s: s not in KEYWORDS
)
numbers = st.floats(-1e6, 1e6, allow_nan=False).map(lambda x: float(repr(x)))
args = st.one_of(
    names.map(lambda s: Arg(s, False, P)), st.integers(0, 999).map(lambda i: Arg(str(i), True, P))
)
refs = st.builds(Ref, names, st.lists(args, min_size=1, max_size=3).map(tuple), st.just(P))
terms = st.builds(
    Term,
    st.lists(refs, min_size=1, max_size=3).map(tuple),
    st.sampled_from([*NONLINEARITIES, "none"]),
    st.one_of(st.none(), numbers.filter(lambda x: x > 0), names),
    numbers,
    st.just(P),
).map(lambda t: t if t.nonlinearity != "none" else dataclasses.replace(t, temperature=None))
dense = st.recursive(
    numbers, lambda inner: st.lists(inner, min_size=1, max_size=3).map(tuple), max_leaves=8
)
statements = st.one_of(
    st.builds(
        DomainDecl, names, st.lists(names, min_size=1, max_size=4).map(tuple), st.none(), st.just(P)
    ),
    st.builds(
        DomainDecl, names, st.none(), st.one_of(st.none(), st.integers(0, 10**6)), st.just(P)
    ),
    st.builds(
        TensorDecl,
        names,
        st.lists(names, min_size=1, max_size=3).map(tuple),
        st.booleans(),
        st.just(P),
    ),
    st.builds(FactStmt, refs, numbers, st.booleans()),
    st.builds(DenseStmt, names, dense.filter(lambda v: isinstance(v, tuple)), st.just(P)),
    st.builds(
        LoadStmt,
        names,
        st.from_regex(r"[a-z_/]{1,12}\.csv", fullmatch=True),
        st.booleans(),
        st.just(P),
    ),
    st.builds(EquationStmt, refs, st.lists(terms, min_size=1, max_size=3).map(tuple)),
    st.builds(QueryStmt, refs),
    st.builds(ParamStmt, names, numbers, st.just(P)),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(statements, max_size=8))
def test_render_then_parse_gives_the_same_tree(program: list[object]) -> None:
    module = parse(render(program))  # type: ignore[arg-type]
    assert module.diagnostics == []
    assert strip(module.statements) == strip(program)


def _errors(text: str) -> list[str]:
    with pytest.raises(ProgramError) as caught:
        compile_program(text, source="p.tl")
    return caught.value.lines()


def test_syntax_errors_name_line_and_column_and_all_are_reported() -> None:
    lines = _errors(
        "domain A {a, b}\n"
        "tensor R[A, A]\n"
        "R[a, b]\n"
        "Q[x] = step(R[x, y]\n"  # unclosed call
        "R[x, y] = foo(R[x, y])\n"  # unknown function
        "R[a, $]\n"  # stray character
    )
    assert lines == [
        "p.tl:4:20: expected ',' or ')', found the end of the statement",
        "p.tl:5:11: unknown function 'foo' (known: step, sigmoid, relu)",
        "p.tl:6:6: unexpected character '$'",
        "p.tl:6:7: expected an index or a symbol, found ']'",
    ]


def test_semantic_errors_name_line_and_column() -> None:
    lines = _errors(
        "domain P {ann, bob}\n"
        "domain Q 3\n"
        "tensor Parent[P, P]\n"
        "Parent[ann, cal]\n"
        "Anc[x, z] = step(Parent[x, z])\n"
        "tensor S[P, Q]\n"
        "S[x, y] = step(Parent[x, y])\n"
        "Parent[x, z] = step(Parent[x, y] Parent[y, q], T)\n"
    )
    assert lines == [
        "p.tl:4:13: 'cal' is not a symbol of domain P",
        "p.tl:5:1: unknown tensor 'Anc' (declare it with `tensor Anc[...]`)",
        "p.tl:7:16: index y ranges over Q and P",
        "p.tl:8:1: index z of the left side is not on the right side",
        "p.tl:8:16: unknown param 'T' (declare it with `param T = 0.1`)",
    ]


def test_size_limits_are_one_clear_error() -> None:
    with pytest.raises(ProgramError) as caught:
        compile_program(
            "domain Node 200000\n", source="big.tl", limits=Limits(max_domain_size=100_000)
        )
    assert (
        caught.value.one_line()
        == "big.tl:1:8: domain Node has 200000 symbols, over the limit of 100000"
    )
    rules = "domain A {a}\ntensor R[A]\n" + "R[x] = step(R[x])\n" * 3
    with pytest.raises(ProgramError, match="3 equations, over the limit of 2"):
        compile_program(rules, limits=Limits(max_equations=2))


def test_facts_inline_dense_and_from_csv(tmp_path: Path) -> None:
    (tmp_path / "edges.csv").write_text("# src,dst\nu1,u2\nu2,u3,0.5\n")
    program = compile_program(
        'domain Unit\ntensor Feeds[Unit, Unit]\nfacts Feeds from "edges.csv"\nFeeds[u3, u1]\n'
        "domain I 2\ntensor X[I, I]\nX = [[1, 2], [3, 4.5]]\nexample Feeds[u1, u3] = 1\n",
        base_dir=tmp_path,
    )
    assert program.domains["Unit"].symbols == ["u1", "u2", "u3"]
    coords, values = program.fact_arrays("Feeds")
    assert coords.tolist() == [[0, 1], [1, 2], [2, 0]]
    assert values.tolist() == [1.0, 0.5, 1.0]
    assert program.dense["X"].tolist() == [[1.0, 2.0], [3.0, 4.5]]
    assert program.example_arrays("Feeds")[0].tolist() == [[0, 2]]


def test_shipped_examples_compile() -> None:
    paths = sorted(EXAMPLES.glob("*.tl"))
    assert len(paths) >= 3
    for path in paths:
        program = load_program(path)
        assert program.equations and program.queries, path.name
