"""A linear program under construction for HiGHS (`scipy.optimize.milp`), and the replica
pools every fleet program shares: integer replicas per shape, capacity per pool group,
devices per environment."""

from __future__ import annotations

import math
import os
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from trifecta.fleet.pools import PoolShape
from trifecta.fleet.topology import Topology

GroupTerms = dict[tuple[str, str, str], list[tuple[int, float]]]


@dataclass
class Program:
    """A linear program under construction: columns with bounds and costs, sparse rows."""

    cost: list[float] = field(default_factory=list)
    lower: list[float] = field(default_factory=list)
    upper: list[float] = field(default_factory=list)
    integer: list[int] = field(default_factory=list)
    entries: list[tuple[int, int, float]] = field(default_factory=list)
    row_lower: list[float] = field(default_factory=list)
    row_upper: list[float] = field(default_factory=list)

    def column(self, cost: float, lower: float, upper: float, *, integer: bool) -> int:
        self.cost.append(cost)
        self.lower.append(lower)
        self.upper.append(upper)
        self.integer.append(1 if integer else 0)
        return len(self.cost) - 1

    def row(self, terms: Sequence[tuple[int, float]], lower: float, upper: float) -> int:
        index = len(self.row_lower)
        self.entries.extend((index, col, coef) for col, coef in terms if coef != 0)
        self.row_lower.append(lower)
        self.row_upper.append(upper)
        return index

    def solve(
        self,
        *,
        integer: Sequence[int] | None = None,
        at_least: dict[int, float] | None = None,
        time_limit: float,
        mip_rel_gap: float,
    ) -> Any:
        """Solve with HiGHS. `integer` overrides which columns are integral (default: as
        declared, `()` for the LP relaxation); `at_least` raises columns' lower bounds."""
        rows, cols, values = zip(*self.entries, strict=True) if self.entries else ((), (), ())
        matrix = coo_array((values, (rows, cols)), shape=(len(self.row_lower), len(self.cost)))
        lower, upper = np.asarray(self.lower), np.asarray(self.upper)
        for col, value in (at_least or {}).items():
            lower[col] = min(max(lower[col], value), upper[col])
        integrality = np.asarray(
            self.integer if integer is None else integer or [0] * len(self.cost)
        )
        with _native_stdout_silenced():
            return milp(
                c=np.asarray(self.cost),
                integrality=integrality,
                bounds=Bounds(lower, upper),
                constraints=LinearConstraint(
                    matrix.tocsr(), np.asarray(self.row_lower), np.asarray(self.row_upper)
                ),
                options={"time_limit": max(time_limit, 0.1), "mip_rel_gap": mip_rel_gap},
            )

    def solve_from(self, start: np.ndarray, *, time_limit: float, mip_rel_gap: float) -> Solved:
        """Solve with HiGHS (highspy) from a known feasible solution `start`, which becomes
        the incumbent: the result costs no more than `start` whenever HiGHS accepts it.
        scipy's `milp` takes no start, hence highspy here."""
        import highspy

        matrix = self._matrix().tocsc()
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = len(self.cost), len(self.row_lower)
        lp.col_cost_ = np.asarray(self.cost, dtype=float)
        lp.col_lower_ = np.asarray(self.lower, dtype=float)
        lp.col_upper_ = np.asarray(self.upper, dtype=float)
        lp.row_lower_ = np.asarray(self.row_lower, dtype=float)
        lp.row_upper_ = np.asarray(self.row_upper, dtype=float)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = lp.num_col_, lp.num_row_
        lp.a_matrix_.start_ = matrix.indptr
        lp.a_matrix_.index_ = matrix.indices
        lp.a_matrix_.value_ = matrix.data
        kinds = (highspy.HighsVarType.kContinuous, highspy.HighsVarType.kInteger)
        lp.integrality_ = [kinds[flag] for flag in self.integer]
        highs = highspy.Highs()
        highs.setOptionValue("output_flag", False)
        highs.setOptionValue("time_limit", max(time_limit, 0.1))
        highs.setOptionValue("mip_rel_gap", mip_rel_gap)
        with _native_stdout_silenced():
            highs.passModel(lp)
            given = highspy.HighsSolution()
            given.col_value = np.asarray(start, dtype=float)
            given.value_valid = True
            highs.setSolution(given)
            highs.run()
        status = highs.getModelStatus()
        solution = highs.getSolution()
        info = highs.getInfo()
        if status == highspy.HighsModelStatus.kInfeasible:
            return Solved(None, math.inf, 2, math.inf)
        if not solution.value_valid:
            return Solved(None, math.inf, 1, -math.inf)
        x = np.asarray(solution.col_value, dtype=float)
        optimal = status == highspy.HighsModelStatus.kOptimal
        return Solved(x, float(np.dot(self.cost, x)), 0 if optimal else 1, info.mip_dual_bound)

    def _matrix(self) -> coo_array:
        rows, cols, values = zip(*self.entries, strict=True) if self.entries else ((), (), ())
        return coo_array((values, (rows, cols)), shape=(len(self.row_lower), len(self.cost)))


@dataclass
class Solved:
    """What `Program.solve_from` found, named as `scipy.optimize.milp`'s result is."""

    x: np.ndarray | None
    fun: float
    status: int  # scipy's codes: 0 optimal, 1 a limit reached, 2 infeasible
    mip_dual_bound: float


_stdout_lock = threading.Lock()


@contextmanager
def _native_stdout_silenced() -> Iterator[None]:
    """HiGHS 1.12 prints a debugging line to the C-level stdout when it repairs a solution
    (ERGO-Code/HiGHS#2783), whatever its output options say; `trifecta plan --json` must
    print only JSON, so file descriptor 1 points at /dev/null while the solver runs."""
    with _stdout_lock:
        sys.stdout.flush()
        saved = os.dup(1)
        try:
            with open(os.devnull, "w") as sink:
                os.dup2(sink.fileno(), 1)
                try:
                    yield
                finally:
                    os.dup2(saved, 1)
        finally:
            os.close(saved)


def add_pools(
    program: Program,
    shapes: Sequence[PoolShape],
    topology: Topology,
    group_terms: GroupTerms,
    all_requests: float,
) -> tuple[dict[int, int], dict[tuple[str, str], int]]:
    """Integer replica columns for every shape some load may use, priced per hour; one row
    per pool group (capacity covers the load terms already in `group_terms`) and one per
    (environment, accelerator) (devices). Returns (shape index -> column, device rows)."""
    replicas: dict[int, int] = {}
    device_terms: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for s, shape in enumerate(shapes):
        if shape.group not in group_terms:
            continue  # nobody may use it
        if shape.accelerator is None:  # CPU replicas: as many as the whole fleet could need
            upper = math.ceil(all_requests / shape.capacity) + 1
        else:
            upper = topology.environment(shape.environment).devices(shape.accelerator) // shape.tp
        r = program.column(shape.price, 0, upper, integer=True)
        replicas[s] = r
        group_terms[shape.group].append((r, shape.capacity))
        if shape.accelerator is not None:
            device_terms[(shape.environment, shape.accelerator)].append((r, float(shape.tp)))
    for terms in group_terms.values():
        program.row(terms, 0.0, math.inf)
    device_rows = {
        (env, acc): program.row(terms, -math.inf, topology.environment(env).devices(acc))
        for (env, acc), terms in device_terms.items()
    }
    return replicas, device_rows
