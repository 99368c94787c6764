"""A parsed Tensor Logic module resolved into a `Program`: domains with their symbols, tensor
shapes, facts as coordinate arrays, equations whose indices are variables or constant ids.

Every semantic error is collected with its line and column (`ProgramError.diagnostics`), so
`tl check` reports them all. Size limits are checked here, before anything is allocated.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, Field

from trifecta.core.errors import InvalidInput
from trifecta.tensorlogic.names import is_variable_name, unknown_symbol
from trifecta.tensorlogic.syntax import (
    DenseStmt,
    Diagnostic,
    DomainDecl,
    EquationStmt,
    FactStmt,
    LoadStmt,
    Module,
    Nonlinearity,
    ParamStmt,
    Pos,
    QueryStmt,
    Ref,
    TensorDecl,
    parse,
)


class Limits(BaseModel):
    """What one program may declare (checked before anything is allocated)."""

    max_domain_size: int = Field(100_000, ge=1)
    max_tensors: int = Field(1_000, ge=1)
    max_equations: int = Field(1_000, ge=1)
    max_arity: int = Field(6, ge=1)
    max_facts: int = Field(50_000_000, ge=1)


class ProgramError(InvalidInput):
    """One or more errors in a program, each `file:line:col: message`."""

    def __init__(self, source: str, diagnostics: list[Diagnostic]):
        self.source = source
        self.diagnostics = sorted(diagnostics, key=lambda d: (d.pos.line, d.pos.col))
        super().__init__(self.diagnostics[0].render(source))

    def lines(self) -> list[str]:
        return [d.render(self.source) for d in self.diagnostics]


@dataclass
class Domain:
    name: str
    symbols: list[str]
    open: bool  # symbols are added by the facts that name them
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {s: i for i, s in enumerate(self.symbols)}

    @property
    def size(self) -> int:
        return len(self.symbols)

    def add(self, symbol: str) -> int:
        if symbol not in self.index:
            self.index[symbol] = len(self.symbols)
            self.symbols.append(symbol)
        return self.index[symbol]


@dataclass(frozen=True)
class TensorInfo:
    name: str
    domains: tuple[str, ...]
    learnable: bool
    pos: Pos


# An index of an atom: a variable's name, or the id of a constant symbol.
Index = str | int


@dataclass(frozen=True)
class Atom:
    tensor: str
    args: tuple[Index, ...]

    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(a for a in self.args if isinstance(a, str))

    def render(self, program: Program) -> str:
        domains = program.tensors[self.tensor].domains
        shown = [
            a if isinstance(a, str) else program.domains[d].symbols[a]
            for a, d in zip(self.args, domains, strict=True)
        ]
        return f"{self.tensor}[{', '.join(shown)}]"


@dataclass(frozen=True)
class Equation:
    """`lhs[lhs_vars] += coefficient * nonlinearity(product of body, temperature)`."""

    lhs: str
    lhs_vars: tuple[str, ...]
    body: tuple[Atom, ...]
    nonlinearity: Nonlinearity
    temperature: float
    coefficient: float
    var_domains: dict[str, str]
    pos: Pos


@dataclass
class Facts:
    """Sparse entries of one tensor: integer coordinates (n, arity) and values (n,)."""

    coords: list[tuple[int, ...]] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    arrays: list[tuple[NDArray[np.int64], NDArray[np.float64]]] = field(default_factory=list)

    def as_arrays(self, arity: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        parts_c = [np.asarray(self.coords, np.int64).reshape(-1, arity)]
        parts_v = [np.asarray(self.values, np.float64)]
        for c, v in self.arrays:
            parts_c.append(c)
            parts_v.append(v)
        return np.concatenate(parts_c), np.concatenate(parts_v)

    def __len__(self) -> int:
        return len(self.values) + sum(len(v) for _, v in self.arrays)


@dataclass
class Program:
    source: str
    domains: dict[str, Domain] = field(default_factory=dict)
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    facts: dict[str, Facts] = field(default_factory=dict)
    examples: dict[str, Facts] = field(default_factory=dict)
    dense: dict[str, NDArray[np.float64]] = field(default_factory=dict)
    equations: list[Equation] = field(default_factory=list)
    queries: list[Atom] = field(default_factory=list)
    params: dict[str, float] = field(default_factory=dict)

    def shape(self, tensor: str) -> tuple[int, ...]:
        return tuple(self.domains[d].size for d in self.tensors[tensor].domains)

    def add_facts(
        self, tensor: str, coords: NDArray[np.int64], values: NDArray[np.float64] | None = None
    ) -> None:
        """Bulk facts by integer coordinates (how benchmarks and services load large graphs)."""
        coords = np.asarray(coords, np.int64).reshape(len(coords), -1)
        vals = np.ones(len(coords)) if values is None else np.asarray(values, np.float64)
        self.facts.setdefault(tensor, Facts()).arrays.append((coords, vals))

    def fact_arrays(self, tensor: str) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        arity = len(self.tensors[tensor].domains)
        return self.facts.get(tensor, Facts()).as_arrays(arity)

    def example_arrays(self, tensor: str) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        arity = len(self.tensors[tensor].domains)
        return self.examples.get(tensor, Facts()).as_arrays(arity)

    def defined_by_equations(self) -> set[str]:
        return {e.lhs for e in self.equations}


def load_program(
    path: Path,
    *,
    facts_dir: Path | None = None,
    limits: Limits | None = None,
    load_files: bool = True,
) -> Program:
    if not path.is_file():
        raise InvalidInput(f"no such program file {str(path)!r}", field="program")
    base = facts_dir if facts_dir is not None else path.parent
    return compile_program(
        path.read_text(), source=str(path), base_dir=base, limits=limits, load_files=load_files
    )


def compile_program(
    text: str,
    *,
    source: str = "<program>",
    base_dir: Path | None = None,
    limits: Limits | None = None,
    load_files: bool = True,
) -> Program:
    """Parse and resolve; raises `ProgramError` with every error found. With `load_files`
    false the `facts/examples ... from` files are not read (an aggregator that must not
    see a site's data still gets every shape, provided the domains are declared closed)."""
    module = parse(text)
    resolver = _Resolver(source, base_dir or Path.cwd(), limits or Limits(), load_files)
    program = resolver.resolve(module)
    diagnostics = module.diagnostics + resolver.errors
    if diagnostics:
        raise ProgramError(source, diagnostics)
    return program


def parse_query(program: Program, text: str) -> Atom:
    """`Ancestor[ann, z]?` (the `?` optional) resolved against `program`."""
    source = "<query>"
    module = parse(text if text.rstrip().endswith("?") else text.rstrip() + "?")
    if module.diagnostics:
        raise ProgramError(source, module.diagnostics)
    queries = [s for s in module.statements if isinstance(s, QueryStmt)]
    if len(module.statements) != 1 or len(queries) != 1:
        raise ProgramError(source, [Diagnostic(Pos(1, 1), "expected one query, e.g. R[a, x]?")])
    # A query loads no file, so its resolver needs no base folder: `Path.cwd()` here was a
    # system call on every rule query of the request path.
    resolver = _Resolver(source, Path(), Limits(), load_files=False)
    resolver.program = program
    atom = resolver._atom(queries[0].ref, allow_vars=True)
    if atom is None or resolver.errors:
        raise ProgramError(source, resolver.errors)
    return atom


class _Resolver:
    def __init__(self, source: str, base_dir: Path, limits: Limits, load_files: bool):
        self.load_files = load_files
        self.program = Program(source)
        self.base_dir = base_dir
        self.limits = limits
        self.errors: list[Diagnostic] = []

    def error(self, pos: Pos, message: str) -> None:
        self.errors.append(Diagnostic(pos, message))

    def resolve(self, module: Module) -> Program:
        p = self.program
        # Declarations first, then facts (which may grow open domains), then rules.
        for st in module.statements:
            if isinstance(st, DomainDecl):
                self._domain(st)
            elif isinstance(st, TensorDecl):
                self._tensor(st)
            elif isinstance(st, ParamStmt):
                p.params[st.name] = st.value
        for st in module.statements:
            if isinstance(st, FactStmt):
                self._fact(st)
            elif isinstance(st, LoadStmt) and self.load_files:
                self._load(st)
        for st in module.statements:
            if isinstance(st, DenseStmt):
                self._dense(st)
        for domain in p.domains.values():
            if domain.size > self.limits.max_domain_size:
                pos = next(
                    s.pos
                    for s in module.statements
                    if isinstance(s, DomainDecl) and s.name == domain.name
                )
                self.error(
                    pos,
                    f"domain {domain.name} has {domain.size} symbols, over the limit of "
                    f"{self.limits.max_domain_size}",
                )
            elif domain.size == 0:
                pos = next(
                    s.pos
                    for s in module.statements
                    if isinstance(s, DomainDecl) and s.name == domain.name
                )
                self.error(pos, f"domain {domain.name} has no symbols (no list, size or facts)")
        for st in module.statements:
            if isinstance(st, EquationStmt):
                self._equation(st)
            elif isinstance(st, QueryStmt):
                atom = self._atom(st.ref, allow_vars=True)
                if atom is not None:
                    p.queries.append(atom)
        if len(p.equations) > self.limits.max_equations:
            self.error(
                Pos(1, 1),
                f"{len(p.equations)} equations, over the limit of {self.limits.max_equations}",
            )
        total = sum(len(f) for f in p.facts.values())
        if total > self.limits.max_facts:
            self.error(Pos(1, 1), f"{total} facts, over the limit of {self.limits.max_facts}")
        return p

    def _domain(self, st: DomainDecl) -> None:
        if st.name in self.program.domains:
            self.error(st.pos, f"domain {st.name} is declared twice")
            return
        if st.size is not None and st.size > self.limits.max_domain_size:
            self.error(
                st.pos,
                f"domain {st.name} has {st.size} symbols, over the limit of "
                f"{self.limits.max_domain_size}",
            )
            self.program.domains[st.name] = Domain(st.name, ["0"], open=False)
            return
        if st.symbols is not None:
            if len(set(st.symbols)) != len(st.symbols):
                self.error(st.pos, f"domain {st.name} lists a symbol twice")
            symbols = list(dict.fromkeys(st.symbols))
        else:
            symbols = [str(i) for i in range(st.size or 0)]
        self.program.domains[st.name] = Domain(
            st.name, symbols, open=st.symbols is None and st.size is None
        )

    def _tensor(self, st: TensorDecl) -> None:
        p = self.program
        if st.name in p.tensors:
            self.error(st.pos, f"tensor {st.name} is declared twice")
            return
        if len(p.tensors) >= self.limits.max_tensors:
            self.error(st.pos, f"more than {self.limits.max_tensors} tensors")
            return
        if len(st.domains) > self.limits.max_arity:
            self.error(
                st.pos,
                f"tensor {st.name} has {len(st.domains)} indices, over the limit of "
                f"{self.limits.max_arity}",
            )
            return
        for d in st.domains:
            if d not in p.domains:
                self.error(st.pos, f"unknown domain {d!r} in tensor {st.name}")
                return
        p.tensors[st.name] = TensorInfo(st.name, st.domains, st.learnable, st.pos)

    def _info(self, ref: Ref) -> TensorInfo | None:
        info = self.program.tensors.get(ref.tensor)
        if info is None:
            self.error(
                ref.pos,
                f"unknown tensor {ref.tensor!r} (declare it with `tensor {ref.tensor}[...]`)",
            )
            return None
        if len(ref.args) != len(info.domains):
            self.error(
                ref.pos,
                f"{ref.tensor} has {len(info.domains)} indices, not {len(ref.args)}",
            )
            return None
        return info

    def _constant(self, domain: Domain, text: str, is_int: bool, grow: bool) -> int | None:
        if text in domain.index:
            return domain.index[text]
        if grow and domain.open:
            return domain.add(text)
        if is_int and not domain.open and domain.symbols == [str(i) for i in range(domain.size)]:
            return None  # out of range, reported by the caller
        return None

    def _atom(self, ref: Ref, *, allow_vars: bool, grow: bool = False) -> Atom | None:
        info = self._info(ref)
        if info is None:
            return None
        args: list[Index] = []
        for arg, dname in zip(ref.args, info.domains, strict=True):
            domain = self.program.domains[dname]
            const = self._constant(domain, arg.text, arg.is_int, grow)
            if const is not None:
                args.append(const)
            elif allow_vars and not arg.is_int and is_variable_name(arg.text):
                args.append(arg.text)
            else:
                self.error(arg.pos, unknown_symbol(arg.text, domain, allow_vars and not arg.is_int))
                return None
        return Atom(ref.tensor, tuple(args))

    def _fact(self, st: FactStmt) -> None:
        atom = self._atom(st.ref, allow_vars=False, grow=True)
        if atom is None:
            return
        store = self.program.examples if st.example else self.program.facts
        facts = store.setdefault(atom.tensor, Facts())
        facts.coords.append(tuple(int(a) for a in atom.args))
        facts.values.append(st.value)

    def _load(self, st: LoadStmt) -> None:
        info = self.program.tensors.get(st.tensor)
        if info is None:
            self.error(st.pos, f"unknown tensor {st.tensor!r}")
            return
        path = self.base_dir / st.path
        if not path.is_file():
            self.error(st.pos, f"no such facts file {str(path)!r}")
            return
        domains = [self.program.domains[d] for d in info.domains]
        arity = len(domains)
        store = self.program.examples if st.example else self.program.facts
        facts = store.setdefault(st.tensor, Facts())
        with path.open(newline="") as handle:
            for row_no, row in enumerate(csv.reader(handle), start=1):
                if not row or row[0].startswith("#"):
                    continue
                if len(row) not in (arity, arity + 1):
                    self.error(
                        st.pos,
                        f"{path.name}:{row_no}: {len(row)} columns, expected {arity} or "
                        f"{arity + 1}",
                    )
                    return
                ids = []
                for text, domain in zip(row[:arity], domains, strict=True):
                    sym = text.strip()
                    const = self._constant(domain, sym, sym.isdigit(), grow=True)
                    if const is None:
                        self.error(
                            st.pos, f"{path.name}:{row_no}: {unknown_symbol(sym, domain, False)}"
                        )
                        return
                    ids.append(const)
                facts.coords.append(tuple(ids))
                try:
                    facts.values.append(float(row[arity]) if len(row) > arity else 1.0)
                except ValueError:
                    self.error(
                        st.pos, f"{path.name}:{row_no}: value {row[arity]!r} is not a number"
                    )
                    return

    def _dense(self, st: DenseStmt) -> None:
        info = self.program.tensors.get(st.tensor)
        if info is None:
            self.error(st.pos, f"unknown tensor {st.tensor!r}")
            return
        try:
            values = np.asarray(st.values, dtype=np.float64)
        except ValueError:
            self.error(st.pos, f"the values of {st.tensor} are not a rectangular array")
            return
        shape = self.program.shape(st.tensor)
        if values.shape != shape:
            self.error(
                st.pos, f"{st.tensor} has shape {shape}, the values have shape {values.shape}"
            )
            return
        self.program.dense[st.tensor] = values

    def _equation(self, st: EquationStmt) -> None:
        lhs = self._atom(st.lhs, allow_vars=True)
        if lhs is None:
            return
        if len(lhs.variables) != len(lhs.args) or len(set(lhs.args)) != len(lhs.args):
            self.error(st.lhs.pos, "the left side takes distinct index variables, not symbols")
            return
        if self.program.tensors[lhs.tensor].learnable:
            self.error(
                st.lhs.pos, f"{lhs.tensor} is learnable: it is fitted, not defined by equations"
            )
            return
        lhs_domains = self.program.tensors[lhs.tensor].domains
        for term in st.terms:
            var_domains = dict(zip(lhs.variables, lhs_domains, strict=True))
            body: list[Atom] = []
            for ref in term.product:
                atom = self._atom(ref, allow_vars=True)
                if atom is None:
                    break
                for arg, dname in zip(
                    atom.args, self.program.tensors[atom.tensor].domains, strict=True
                ):
                    if isinstance(arg, str) and var_domains.setdefault(arg, dname) != dname:
                        self.error(
                            ref.pos, f"index {arg} ranges over {var_domains[arg]} and {dname}"
                        )
                body.append(atom)
            else:
                temperature = self._temperature(term.temperature, term.pos)
                used = {v for a in body for v in a.variables}
                missing = [v for v in lhs.variables if v not in used]
                if missing:
                    self.error(
                        st.lhs.pos, f"index {missing[0]} of the left side is not on the right side"
                    )
                    continue
                self.program.equations.append(
                    Equation(
                        lhs.tensor,
                        lhs.variables,
                        tuple(body),
                        term.nonlinearity,
                        temperature,
                        term.coefficient,
                        var_domains,
                        term.pos,
                    )
                )

    def _temperature(self, value: float | str | None, pos: Pos) -> float:
        if value is None:
            return 1.0
        if isinstance(value, str):
            if value not in self.program.params:
                self.error(pos, f"unknown param {value!r} (declare it with `param {value} = 0.1`)")
                return 1.0
            value = self.program.params[value]
        if value <= 0:
            self.error(pos, f"a temperature must be positive, not {value}")
            return 1.0
        return float(value)
