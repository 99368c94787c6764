"""Learning recovers a planted relation; federated averaging over site processes reaches the
central loss; the aggregator only ever receives parameter arrays."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from trifecta.tensorlogic.federated import FedAvg, Federation, FitRes, Site
from trifecta.tensorlogic.learn import Params, fit, initial_params, loss_at
from trifecta.tensorlogic.program import compile_program, load_program

N_X, N_Y = 14, 5


def planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A (x -> y, identity rows first so every R entry is observed), R* (y -> z), Q = A R*."""
    rng = np.random.default_rng(seed)
    a = np.zeros((N_X, N_Y), np.int64)
    a[np.arange(N_Y), np.arange(N_Y)] = 1
    a[N_Y:] = rng.random((N_X - N_Y, N_Y)) < 0.3
    a[N_Y + np.flatnonzero(a[N_Y:].sum(axis=1) == 0), 0] = 1  # no empty row: sigmoid(0) = 1/2
    r = (rng.random((N_Y, N_Y)) < 0.4).astype(np.int64)
    q = ((a @ r) > 0).astype(np.int64)
    return a, r, q


PROGRAM = f"""
domain X {N_X}
domain Y {N_Y}
tensor A[X, Y]
tensor R[Y, Y] learnable
tensor Q[X, Y]
Q[x, z] = sigmoid(A[x, y] R[y, z], 0.25)
"""


def facts_text(a: np.ndarray) -> str:
    return "".join(f"A[{x}, {y}]\n" for x, y in np.argwhere(a))


def test_learning_recovers_a_planted_relation() -> None:
    a, r, q = planted()
    examples = "".join(f"example Q[{x}, {z}] = {q[x, z]}\n" for x in range(N_X) for z in range(N_Y))
    program = compile_program(PROGRAM + facts_text(a) + examples)
    result = fit(program, steps=300, lr=0.1, seed=1)
    assert result.losses[-1] < 0.05 < result.losses[0]
    assert np.array_equal(result.params["R"] > 0, r > 0)


def write_partitions(tmp_path: Path, k: int) -> tuple[Path, list[Path], Path]:
    """The program (shared facts inline), K site directories each with its own examples, and
    a central directory with all of them."""
    a, _, q = planted(seed=2)
    path = tmp_path / "program.tl"
    path.write_text(PROGRAM + facts_text(a) + 'examples Q from "q.csv"\n')
    rows = [f"{x},{z},{q[x, z]}\n" for x in range(N_X) for z in range(N_Y)]
    order = np.random.default_rng(0).permutation(len(rows))
    sites = []
    for i, part in enumerate(np.array_split(order, k)):
        site = tmp_path / f"site{i}"
        site.mkdir()
        (site / "q.csv").write_text("".join(rows[j] for j in part))
        sites.append(site)
    central = tmp_path / "central"
    central.mkdir()
    (central / "q.csv").write_text("".join(rows))
    return path, sites, central


def central_sgd_loss(path: Path, central: Path, steps: int, lr: float) -> float:
    program = load_program(path, facts_dir=central)
    return fit(program, steps=steps, lr=lr, optimizer="sgd", seed=0).losses[-1]


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Federation, Path]]:
    """Two sites, started once for the tests below (a site process costs seconds to start)."""
    path, sites, central = write_partitions(tmp_path_factory.mktemp("fed"), 2)
    with Federation(path, sites) as fed:
        yield fed, central


@pytest.mark.slow
def test_federated_averaging_reaches_the_central_loss(federation: tuple[Federation, Path]) -> None:
    """One local step per round is the central gradient step (weighted by example counts):
    equal to 1e-9. Four local steps per round: within 5% of the central loss after as many
    total steps (the stated tolerance)."""
    fed, central = federation
    lr = 0.5
    central_loss = central_sgd_loss(fed.program_path, central, 40, lr)
    one_step = fed.fit(rounds=40, local_steps=1, lr=lr, seed=0)
    assert abs(one_step.losses[-1] - central_loss) < 1e-9
    four_steps = fed.fit(rounds=10, local_steps=4, lr=lr, seed=0)
    assert four_steps.losses[-1] < four_steps.losses[0] / 2
    assert abs(four_steps.losses[-1] - central_loss) <= 0.05 * central_loss
    central_program = load_program(fed.program_path, facts_dir=central)
    assert abs(loss_at(central_program, four_steps.params) - four_steps.losses[-1]) < 1e-9


class RecordingFedAvg(FedAvg):
    """The aggregator as the receiving side sees it: records everything handed to it."""

    def __init__(self, initial: Params, *, local_steps: int, lr: float):
        super().__init__(initial, local_steps=local_steps, lr=lr)
        self.received: list[object] = []

    def aggregate_fit(
        self, server_round: int, results: list[FitRes], failures: list[BaseException]
    ) -> Params:
        self.received.extend(results)
        self.received.extend(failures)
        return super().aggregate_fit(server_round, results, failures)


@pytest.mark.slow
def test_the_aggregator_only_receives_parameter_arrays(federation: tuple[Federation, Path]) -> None:
    fed, _ = federation
    assert fed.server_view.examples == {}  # the server itself never read a site's examples
    assert all(isinstance(site, Site) and site.process.pid != os.getpid() for site in fed.sites)
    strategy = RecordingFedAvg(initial_params(fed.server_view, 0), local_steps=2, lr=0.5)
    fed.fit(rounds=3, strategy=strategy)
    assert len(strategy.received) == 3 * 2
    site_sizes = {
        (fed.program_path.parent / f"site{i}" / "q.csv").read_text().count("\n") for i in range(2)
    }
    for item in strategy.received:
        assert type(item) is FitRes
        assert [f.name for f in dataclasses.fields(item)] == ["parameters", "num_examples"]
        assert set(item.parameters) == {"R"}
        assert type(item.parameters["R"]) is np.ndarray and item.parameters["R"].dtype == np.float64
        assert item.parameters["R"].shape == (N_Y, N_Y)
        assert item.num_examples in site_sizes
