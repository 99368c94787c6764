"""Variables and constants: a name that is no symbol of its domain is a variable only when it
looks like one (1 to 3 lowercase letters); a misspelled constant is an error at its line and
column, in queries, equations and facts alike."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trifecta.tensorlogic.assets import programs_dir
from trifecta.tensorlogic.engine import evaluate
from trifecta.tensorlogic.names import is_variable_name
from trifecta.tensorlogic.program import ProgramError, compile_program, load_program, parse_query

FAMILY = (
    "domain Person {ann, bob, cal}\n"
    "tensor Parent[Person, Person]\n"
    "tensor Ancestor[Person, Person]\n"
    "Parent[ann, bob]; Parent[bob, cal]\n"
    "Ancestor[x, z] = step(Parent[x, z])\n"
    "Ancestor[x, z] = step(Ancestor[x, y] Parent[y, z])\n"
)


def _errors(text: str, tmp_path: Path | None = None) -> list[str]:
    with pytest.raises(ProgramError) as caught:
        compile_program(text, source="p.tl", base_dir=tmp_path)
    return caught.value.lines()


def test_a_misspelled_constant_in_a_query_is_an_error_at_its_column() -> None:
    assert _errors(FAMILY + "Ancestor[anne, z]?\n") == [
        "p.tl:7:10: 'anne' is not a symbol of domain Person (did you mean 'ann'?); "
        "a variable is 1 to 3 lowercase letters"
    ]


def test_a_misspelled_constant_in_an_equation_body_is_an_error() -> None:
    lines = _errors(FAMILY + "tensor Kid[Person]\nKid[z] = step(Parent[Bob, z])\n")
    assert lines == [
        "p.tl:8:22: 'Bob' is not a symbol of domain Person (did you mean 'bob'?); "
        "a variable is 1 to 3 lowercase letters"
    ]


def test_names_that_are_not_variables_are_all_reported() -> None:
    lines = _errors(FAMILY + "Ancestor[x1, z]?\nAncestor[ann, _y]?\nAncestor[person, z]?\n")
    assert [line.split(": ")[0] for line in lines] == ["p.tl:7:10", "p.tl:8:15", "p.tl:9:10"]
    assert all("a variable is 1 to 3 lowercase letters" in line for line in lines)


def test_facts_naming_an_undeclared_constant_are_errors(tmp_path: Path) -> None:
    (tmp_path / "parents.csv").write_text("ann,bob\nbob,dave\n")
    lines = _errors(
        FAMILY
        + "Parent[anne, cal]\n"
        + "example Ancestor[ann, eve] = 1\n"
        + 'facts Parent from "parents.csv"\n'
        + "domain Node 4\ntensor Edge[Node, Node]\nEdge[1, 4]\n",
        tmp_path,
    )
    assert lines == [
        "p.tl:7:8: 'anne' is not a symbol of domain Person (did you mean 'ann'?)",
        "p.tl:8:23: 'eve' is not a symbol of domain Person",
        "p.tl:9:7: parents.csv:2: 'dave' is not a symbol of domain Person",
        "p.tl:12:9: '4' is not a symbol of domain Node (its symbols are 0 .. 3)",
    ]


def test_open_domains_grow_from_facts_but_not_from_queries() -> None:
    text = (
        "domain Unit\ntensor Feeds[Unit, Unit]\nFeeds[intake, pump1]\n"
        "tensor Down[Unit, Unit]\nDown[x, z] = step(Feeds[x, z])\n"
    )
    program = compile_program(text + "Down[intake, z]?\n")
    assert program.domains["Unit"].symbols == ["intake", "pump1"]
    assert _errors(text + "Down[intkae, z]?\n") == [
        "p.tl:6:6: 'intkae' is not a symbol of domain Unit (did you mean 'intake'?); "
        "a variable is 1 to 3 lowercase letters"
    ]


def test_a_query_string_names_its_column_and_variables_still_bind() -> None:
    program = compile_program(FAMILY)
    with pytest.raises(ProgramError, match=r"^<query>:1:10: 'anne' is not a symbol"):
        parse_query(program, "Ancestor[anne, z]?")
    atom = parse_query(program, "Ancestor[ann, who]?")
    assert atom.args == (0, "who")
    answers = evaluate(program).boolean["Ancestor"]
    assert answers.toarray()[0].nonzero()[0].tolist() == [1, 2]  # type: ignore[union-attr]


def test_a_symbol_wins_over_a_variable_shaped_name() -> None:
    program = compile_program("domain L {a, b}\ntensor R[L, L]\nR[a, b]\nR[a, x]?\n", source="p.tl")
    assert program.queries[0].args == (0, "x")


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,7}", fullmatch=True))
def test_a_name_outside_the_domain_is_a_variable_exactly_when_it_looks_like_one(
    name: str,
) -> None:
    program = compile_program(FAMILY)
    if name in program.domains["Person"].index:
        return
    if is_variable_name(name):
        assert parse_query(program, f"Ancestor[ann, {name}]?").args == (0, name)
    else:
        with pytest.raises(ProgramError, match=f"'{name}' is not a symbol of domain Person"):
            parse_query(program, f"Ancestor[ann, {name}]?")


def test_every_shipped_program_and_example_keeps_compiling() -> None:
    examples = Path(__file__).resolve().parents[2] / "examples" / "tensorlogic"
    paths = sorted(programs_dir().glob("*.tl")) + sorted(examples.glob("*.tl"))
    assert len(paths) >= 6
    for path in paths:
        assert load_program(path).queries, path
