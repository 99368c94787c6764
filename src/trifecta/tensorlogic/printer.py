"""Syntax trees back to program text (`parse(render(m))` gives `m` back: the round trip the
parser is tested on, and how tools write programs they build)."""

from __future__ import annotations

from trifecta.tensorlogic.syntax import (
    DenseStmt,
    DomainDecl,
    EquationStmt,
    FactStmt,
    LoadStmt,
    ParamStmt,
    QueryStmt,
    Ref,
    Statement,
    TensorDecl,
    Term,
)


def _number(value: float) -> str:
    return repr(float(value))


def render_ref(ref: Ref) -> str:
    return f"{ref.tensor}[{', '.join(a.text for a in ref.args)}]"


def render_term(term: Term) -> str:
    product = " ".join(render_ref(r) for r in term.product)
    if term.nonlinearity != "none":
        temperature = (
            ""
            if term.temperature is None
            else (
                f", {term.temperature}"
                if isinstance(term.temperature, str)
                else f", {_number(term.temperature)}"
            )
        )
        product = f"{term.nonlinearity}({product}{temperature})"
    return product if term.coefficient == 1.0 else f"{_number(term.coefficient)} * {product}"


def _dense(value: object) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_dense(v) for v in value) + "]"
    assert isinstance(value, float)
    return _number(value)


def render_statement(st: Statement) -> str:
    if isinstance(st, DomainDecl):
        if st.symbols is not None:
            return f"domain {st.name} {{{', '.join(st.symbols)}}}"
        return f"domain {st.name}" + (f" {st.size}" if st.size is not None else "")
    if isinstance(st, TensorDecl):
        return f"tensor {st.name}[{', '.join(st.domains)}]" + (" learnable" if st.learnable else "")
    if isinstance(st, ParamStmt):
        return f"param {st.name} = {_number(st.value)}"
    if isinstance(st, LoadStmt):
        return f'{"examples" if st.example else "facts"} {st.tensor} from "{st.path}"'
    if isinstance(st, FactStmt):
        if st.example:
            return f"example {render_ref(st.ref)} = {_number(st.value)}"
        return render_ref(st.ref) + ("" if st.value == 1.0 else f" = {_number(st.value)}")
    if isinstance(st, DenseStmt):
        return f"{st.tensor} = {_dense(st.values)}"
    if isinstance(st, EquationStmt):
        return f"{render_ref(st.lhs)} = " + " + ".join(render_term(t) for t in st.terms)
    assert isinstance(st, QueryStmt)
    return render_ref(st.ref) + "?"


def render(statements: list[Statement]) -> str:
    return "\n".join(render_statement(s) for s in statements) + "\n"
