"""Gradients aggregated across clusters: one program trained on K data partitions, each
partition's update computed in its own process where its files are, combined by federated
averaging (FedAvg: the mean of the sites' parameters weighted by their example counts).

The strategy interface is modelled on Flower's `flwr.server.strategy.Strategy`
(`initialize_parameters`, `configure_fit`, `aggregate_fit`); Flower itself is not used
because it does not install beside this project's pinned dependencies (it requires newer
certifi / older protobuf than `constraints.txt` holds), so this small version stands in.

What crosses a process boundary: to a site, the program's path, its own facts directory
and the global parameters (`FitIns`); back, only `FitRes` (parameter arrays and an example
count) and `EvaluateRes` (a loss and a count). A site's facts and examples are read inside
its process and never sent. The sites here are local processes; `ray_sites` gives the same
federation sites that are Ray actors pinned to their partitions' nodes.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Protocol

import numpy as np

from trifecta.core.errors import InvalidInput, Unavailable
from trifecta.tensorlogic.learn import Params, initial_params
from trifecta.tensorlogic.program import Program, load_program


@dataclass(frozen=True)
class FitIns:
    parameters: Params
    steps: int
    lr: float


@dataclass(frozen=True)
class FitRes:
    parameters: Params
    num_examples: int


@dataclass(frozen=True)
class EvaluateIns:
    parameters: Params


@dataclass(frozen=True)
class EvaluateRes:
    loss: float
    num_examples: int


class Strategy(Protocol):
    def initialize_parameters(self) -> Params: ...

    def configure_fit(self, server_round: int, parameters: Params) -> FitIns: ...

    def aggregate_fit(
        self, server_round: int, results: list[FitRes], failures: list[BaseException]
    ) -> Params: ...


class FedAvg:
    """Federated averaging (McMahan et al., 2017): local SGD, then the example-weighted mean."""

    def __init__(self, initial: Params, *, local_steps: int = 1, lr: float = 0.1):
        self.initial = initial
        self.local_steps = local_steps
        self.lr = lr

    def initialize_parameters(self) -> Params:
        return {k: v.copy() for k, v in self.initial.items()}

    def configure_fit(self, server_round: int, parameters: Params) -> FitIns:
        return FitIns(parameters, self.local_steps, self.lr)

    def aggregate_fit(
        self, server_round: int, results: list[FitRes], failures: list[BaseException]
    ) -> Params:
        if failures:
            raise Unavailable(
                f"{len(failures)} site(s) failed in round {server_round}: {failures[0]}"
            )
        total = sum(r.num_examples for r in results)
        return {
            name: sum(r.parameters[name] * (r.num_examples / total) for r in results)  # type: ignore[misc]
            for name in results[0].parameters
        }


SiteReply = FitRes | EvaluateRes | BaseException


class SiteLink(Protocol):
    """The server's end of one site, whatever carries it (a pipe, a Ray actor)."""

    def send(self, message: FitIns | EvaluateIns) -> None: ...

    def receive(self) -> SiteReply: ...

    def close(self) -> None: ...


def answer(program: Program, message: FitIns | EvaluateIns) -> SiteReply:
    """What a site does with one message, on its own partition (`program` holds its facts)."""
    import torch

    from trifecta.tensorlogic.learn import TorchProgram, train

    try:
        model = TorchProgram(program, message.parameters)
        if isinstance(message, FitIns):
            train(model, steps=message.steps, lr=message.lr, optimizer="sgd")
            return FitRes(model.numpy_params(), model.examples)
        with torch.no_grad():
            return EvaluateRes(float(model.loss()), model.examples)
    except Exception as exc:  # reported to the server as this site's failure
        return exc


def _site_main(conn: Connection, program_path: str, facts_dir: str, threads: int) -> None:
    """A site: loads its partition once, then answers FitIns / EvaluateIns until None."""
    import torch

    torch.set_num_threads(threads)
    program = load_program(Path(program_path), facts_dir=Path(facts_dir))
    while True:
        message = conn.recv()
        if message is None:
            return
        conn.send(answer(program, message))


class Site:
    """One partition's process (spawned: no state is inherited from the server)."""

    def __init__(self, program_path: Path, facts_dir: Path, *, threads: int = 1):
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_site_main, args=(child, str(program_path), str(facts_dir), threads), daemon=True
        )
        self.process.start()
        child.close()

    def send(self, message: FitIns | EvaluateIns) -> None:
        self._conn.send(message)

    def receive(self) -> SiteReply:
        result: SiteReply = self._conn.recv()
        return result

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self._conn.send(None)
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()


@dataclass
class FederatedResult:
    params: Params
    losses: list[float]  # example-weighted loss over all sites before each round, and after


class Federation:
    """K sites (one process per partition unless `sites` are given), started once and
    trained on as often as asked."""

    def __init__(
        self, program_path: Path, partitions: list[Path], *, sites: Sequence[SiteLink] | None = None
    ):
        if not partitions and not sites:
            raise InvalidInput("at least one partition is needed", field="partitions")
        self.program_path = program_path
        self.server_view = load_program(program_path, load_files=False)  # shapes, no site data
        self.sites: list[SiteLink] = (
            list(sites) if sites is not None else [Site(program_path, p) for p in partitions]
        )

    def __enter__(self) -> Federation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for site in self.sites:
            site.close()

    def fit(
        self,
        *,
        rounds: int = 50,
        local_steps: int = 1,
        lr: float = 0.1,
        seed: int = 0,
        strategy: Strategy | None = None,
        on_round: Callable[[int, float], None] | None = None,
    ) -> FederatedResult:
        strategy = strategy or FedAvg(
            initial_params(self.server_view, seed), local_steps=local_steps, lr=lr
        )
        params = strategy.initialize_parameters()
        losses: list[float] = []
        for server_round in range(1, rounds + 2):
            losses.append(_evaluate(self.sites, params))
            if on_round is not None:
                on_round(server_round, losses[-1])
            if server_round > rounds:
                break
            ins = strategy.configure_fit(server_round, params)
            for site in self.sites:
                site.send(ins)
            results: list[FitRes] = []
            failures: list[BaseException] = []
            for site in self.sites:
                reply = site.receive()
                if isinstance(reply, FitRes):
                    results.append(reply)
                else:
                    failures.append(
                        reply if isinstance(reply, BaseException) else RuntimeError(str(reply))
                    )
            params = strategy.aggregate_fit(server_round, results, failures)
        return FederatedResult(params, losses)


def federated_fit(
    program_path: Path,
    partitions: list[Path],
    *,
    rounds: int = 50,
    local_steps: int = 1,
    lr: float = 0.1,
    seed: int = 0,
    strategy: Strategy | None = None,
    on_round: Callable[[int, float], None] | None = None,
) -> FederatedResult:
    """Train on K partitions (facts directories), one process each, aggregated by FedAvg."""
    with Federation(program_path, partitions) as federation:
        return federation.fit(
            rounds=rounds,
            local_steps=local_steps,
            lr=lr,
            seed=seed,
            strategy=strategy,
            on_round=on_round,
        )


def _evaluate(sites: list[SiteLink], params: Params) -> float:
    for site in sites:
        site.send(EvaluateIns(params))
    replies = [site.receive() for site in sites]
    for reply in replies:
        if isinstance(reply, BaseException):
            raise Unavailable(f"a site failed to evaluate: {reply}")
    scored = [r for r in replies if isinstance(r, EvaluateRes)]
    total = sum(r.num_examples for r in scored)
    return float(np.sum([r.loss * r.num_examples / total for r in scored]))
