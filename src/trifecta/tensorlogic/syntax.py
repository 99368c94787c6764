"""The Tensor Logic language: tokens, syntax tree and a hand-written recursive-descent parser.

Hand-written rather than generated so that every error names its line and column in the
user's terms and the parser recovers at the end of the statement, which lets `tl check`
report every error of a file in one pass. The grammar is in docs/tensorlogic.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

Nonlinearity = Literal["step", "sigmoid", "relu", "none"]
NONLINEARITIES: tuple[str, ...] = ("step", "sigmoid", "relu")
KEYWORDS = ("domain", "tensor", "facts", "examples", "example", "param", "learnable", "from")


@dataclass(frozen=True)
class Pos:
    line: int
    col: int


@dataclass(frozen=True)
class Diagnostic:
    pos: Pos
    message: str

    def render(self, source: str) -> str:
        return f"{source}:{self.pos.line}:{self.pos.col}: {self.message}"


class ParseError(Exception):
    def __init__(self, pos: Pos, message: str):
        super().__init__(message)
        self.diagnostic = Diagnostic(pos, message)


# --- syntax tree -------------------------------------------------------------------------


@dataclass(frozen=True)
class Arg:
    """One index position of a tensor reference: a name (variable or symbol, resolved
    later against the position's domain) or an integer literal (always a constant)."""

    text: str
    is_int: bool
    pos: Pos


@dataclass(frozen=True)
class Ref:
    tensor: str
    args: tuple[Arg, ...]
    pos: Pos


@dataclass(frozen=True)
class Term:
    """`coefficient * nonlinearity(product, temperature)`: one summand of an equation."""

    product: tuple[Ref, ...]
    nonlinearity: Nonlinearity
    temperature: float | str | None  # a number or the name of a `param`
    coefficient: float
    pos: Pos


@dataclass(frozen=True)
class DomainDecl:
    name: str
    symbols: tuple[str, ...] | None  # None: integer domain of `size`, or open
    size: int | None
    pos: Pos


@dataclass(frozen=True)
class TensorDecl:
    name: str
    domains: tuple[str, ...]
    learnable: bool
    pos: Pos


@dataclass(frozen=True)
class FactStmt:
    ref: Ref
    value: float
    example: bool  # `example R[a,b] = v`: a training example, not a fact


@dataclass(frozen=True)
class DenseStmt:
    tensor: str
    values: tuple[object, ...]  # nested tuples of floats, one level per index
    pos: Pos


@dataclass(frozen=True)
class LoadStmt:
    tensor: str
    path: str
    example: bool
    pos: Pos


@dataclass(frozen=True)
class EquationStmt:
    lhs: Ref
    terms: tuple[Term, ...]


@dataclass(frozen=True)
class QueryStmt:
    ref: Ref


@dataclass(frozen=True)
class ParamStmt:
    name: str
    value: float
    pos: Pos


Statement = (
    DomainDecl | TensorDecl | FactStmt | DenseStmt | LoadStmt | EquationStmt | QueryStmt | ParamStmt
)


@dataclass
class Module:
    statements: list[Statement] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)


# --- lexer -------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""(?P<ws>[ \t\r]+)
      | (?P<comment>(\#|//)[^\n]*)
      | (?P<newline>\n)
      | (?P<number>-?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<string>"[^"\n]*")
      | (?P<punct>[\[\](){},=?+*;])
      | (?P<bad>.)""",
    re.X,
)


@dataclass(frozen=True)
class Token:
    kind: str  # number name string punct end (end of statement) eof
    text: str
    pos: Pos


def tokenize(text: str) -> tuple[list[Token], list[Diagnostic]]:
    """Tokens with positions; `;` and newlines outside `[...]` / `{...}` end a statement."""
    tokens: list[Token] = []
    errors: list[Diagnostic] = []
    depth, line, line_start = 0, 1, 0
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup or "bad"
        value = match.group()
        pos = Pos(line, match.start() - line_start + 1)
        if kind == "newline":
            if depth == 0:
                tokens.append(Token("end", "\\n", pos))
            line, line_start = line + 1, match.end()
        elif kind == "bad":
            errors.append(Diagnostic(pos, f"unexpected character {value!r}"))
        elif kind == "punct" and value == ";":
            tokens.append(Token("end", ";", pos))
        elif kind not in ("ws", "comment"):
            if value in "[{":  # dense literals and domain lists may span lines
                depth += 1
            elif value in "]}":
                depth = max(0, depth - 1)
            tokens.append(Token(kind, value, pos))
    tokens.append(Token("end", "", Pos(line, len(text) - line_start + 1)))
    tokens.append(Token("eof", "", Pos(line, len(text) - line_start + 1)))
    return tokens, errors


# --- parser ------------------------------------------------------------------------------


class Parser:
    def __init__(self, text: str):
        self.tokens, lex_errors = tokenize(text)
        self.module = Module(diagnostics=lex_errors)
        self.at = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.at]

    def _next(self) -> Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def _is(self, text: str) -> bool:
        return self.tok.kind in ("punct", "name") and self.tok.text == text

    def _expect(self, text: str, what: str | None = None) -> Token:
        if not self._is(text):
            raise ParseError(
                self.tok.pos, f"expected {what or repr(text)}, found {_shown(self.tok)}"
            )
        return self._next()

    def _name(self, what: str) -> Token:
        if self.tok.kind != "name":
            raise ParseError(self.tok.pos, f"expected {what}, found {_shown(self.tok)}")
        return self._next()

    def _number(self, what: str) -> float:
        if self.tok.kind != "number":
            raise ParseError(self.tok.pos, f"expected {what}, found {_shown(self.tok)}")
        return float(self._next().text)

    def parse(self) -> Module:
        while self.tok.kind != "eof":
            if self.tok.kind == "end":
                self._next()
                continue
            try:
                self.module.statements.append(self._statement())
                if self.tok.kind != "end":
                    raise ParseError(
                        self.tok.pos, f"expected the end of the statement, found {_shown(self.tok)}"
                    )
            except ParseError as exc:
                self.module.diagnostics.append(exc.diagnostic)
                while self.tok.kind not in ("end", "eof"):  # recover at the next statement
                    self._next()
        self.module.diagnostics.sort(key=lambda d: (d.pos.line, d.pos.col))
        return self.module

    def _statement(self) -> Statement:
        head = self.tok
        if head.kind != "name":
            raise ParseError(head.pos, f"expected a statement, found {_shown(head)}")
        after = self.tokens[self.at + 1]
        if head.text == "domain" and after.kind == "name":
            return self._domain()
        if head.text == "tensor" and after.kind == "name":
            return self._tensor()
        if head.text == "param" and after.kind == "name":
            self._next()
            name = self._name("a parameter name")
            self._expect("=")
            return ParamStmt(name.text, self._number("a number"), name.pos)
        if head.text in ("facts", "examples") and after.kind == "name":
            self._next()
            name = self._name("a tensor name")
            self._expect("from")
            if self.tok.kind != "string":
                raise ParseError(
                    self.tok.pos, f"expected a quoted file name, found {_shown(self.tok)}"
                )
            path = self._next().text.strip('"')
            return LoadStmt(name.text, path, head.text == "examples", name.pos)
        if head.text == "example" and after.kind == "name":
            self._next()
            ref = self._ref()
            self._expect("=")
            return FactStmt(ref, self._number("the example's value"), example=True)
        if after.kind == "punct" and after.text == "=":
            name = self._next()
            self._next()
            values = self._dense_value()
            if not isinstance(values, tuple):
                raise ParseError(name.pos, f"the values of {name.text} are a list: [...]")
            return DenseStmt(name.text, values, name.pos)
        lhs = self._ref()
        if self._is("?"):
            self._next()
            return QueryStmt(lhs)
        if not self._is("="):
            return FactStmt(lhs, 1.0, example=False)
        self._next()
        if self.tok.kind == "number" and self.tokens[self.at + 1].kind == "end":
            return FactStmt(lhs, float(self._next().text), example=False)
        terms = [self._term()]
        while self._is("+"):
            self._next()
            terms.append(self._term())
        return EquationStmt(lhs, tuple(terms))

    def _domain(self) -> DomainDecl:
        self._next()
        name = self._name("a domain name")
        if self._is("{"):
            self._next()
            symbols = [self._name("a symbol").text]
            while self._is(","):
                self._next()
                symbols.append(self._name("a symbol").text)
            self._expect("}", "',' or '}'")
            return DomainDecl(name.text, tuple(symbols), None, name.pos)
        if self.tok.kind == "number":
            token = self._next()
            if not token.text.isdigit():
                raise ParseError(token.pos, f"a domain size is a whole number, not {token.text}")
            return DomainDecl(name.text, None, int(token.text), name.pos)
        return DomainDecl(name.text, None, None, name.pos)

    def _tensor(self) -> TensorDecl:
        self._next()
        name = self._name("a tensor name")
        self._expect("[", "'[' and the index domains")
        domains = [self._name("a domain name").text]
        while self._is(","):
            self._next()
            domains.append(self._name("a domain name").text)
        self._expect("]", "',' or ']'")
        learnable = False
        if self._is("learnable"):
            self._next()
            learnable = True
        return TensorDecl(name.text, tuple(domains), learnable, name.pos)

    def _ref(self) -> Ref:
        name = self._name("a tensor name")
        self._expect("[", "'['")
        args = [self._arg()]
        while self._is(","):
            self._next()
            args.append(self._arg())
        self._expect("]", "',' or ']'")
        return Ref(name.text, tuple(args), name.pos)

    def _arg(self) -> Arg:
        token = self.tok
        if token.kind == "name":
            self._next()
            return Arg(token.text, False, token.pos)
        if token.kind == "number" and token.text.isdigit():
            self._next()
            return Arg(token.text, True, token.pos)
        raise ParseError(token.pos, f"expected an index or a symbol, found {_shown(token)}")

    def _term(self) -> Term:
        pos = self.tok.pos
        coefficient = 1.0
        if self.tok.kind == "number":
            coefficient = float(self._next().text)
            if self._is("*"):
                self._next()
        if self.tok.kind == "name" and self.tokens[self.at + 1].text == "(":
            func = self._next()
            if func.text not in NONLINEARITIES:
                raise ParseError(
                    func.pos,
                    f"unknown function {func.text!r} (known: {', '.join(NONLINEARITIES)})",
                )
            self._next()
            product = self._product()
            temperature: float | str | None = None
            if self._is(","):
                self._next()
                if self.tok.kind == "number":
                    temperature = float(self._next().text)
                else:
                    temperature = self._name("a temperature (number or param)").text
            self._expect(")", "',' or ')'")
            nonlinearity: Nonlinearity = func.text  # type: ignore[assignment]  # checked above
            return Term(product, nonlinearity, temperature, coefficient, pos)
        return Term(self._product(), "none", None, coefficient, pos)

    def _product(self) -> tuple[Ref, ...]:
        refs = [self._ref()]
        while self.tok.kind == "name" or self._is("*"):
            if self._is("*"):
                self._next()
            refs.append(self._ref())
        return tuple(refs)

    def _dense_value(self) -> object:
        if self.tok.kind == "number":
            return float(self._next().text)
        self._expect("[", "a number or '['")
        items = [self._dense_value()]
        while self._is(","):
            self._next()
            items.append(self._dense_value())
        self._expect("]", "',' or ']'")
        return tuple(items)


def _shown(token: Token) -> str:
    if token.kind == "end":
        return "the end of the statement" if token.text != ";" else "';'"
    if token.kind == "eof":
        return "the end of the file"
    return repr(token.text)


def parse(text: str) -> Module:
    """The statements of `text` and every syntax error found (the parser recovers at the
    end of each statement)."""
    return Parser(text).parse()
