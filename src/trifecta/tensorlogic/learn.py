"""Learning: a program's `learnable` tensors fitted by gradient descent (PyTorch) so that the
program's values match its examples.

The forward pass is the real-valued evaluator (`numeric`) run on torch tensors, recursive
groups unrolled to convergence. The loss is the mean over every example of binary cross
entropy when the examples are in [0, 1], of squared error otherwise. The per-example mean
is what federated averaging weights by example count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import NDArray

from trifecta.core.errors import InvalidInput

if TYPE_CHECKING:
    import torch
from trifecta.tensorlogic import numeric
from trifecta.tensorlogic.engine import dense_base, groups, is_recursive
from trifecta.tensorlogic.program import Program

Params = dict[str, NDArray[np.float64]]
Optimizer = Literal["adam", "sgd"]


def learnable(program: Program) -> list[str]:
    return sorted(n for n, info in program.tensors.items() if info.learnable)


def initial_params(program: Program, seed: int = 0) -> Params:
    """Small random values (seeded), or the tensor's own facts / dense values if it has any."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in learnable(program):
        given = name in program.dense or name in program.facts
        shape = program.shape(name)
        out[name] = dense_base(program, name) if given else rng.normal(0.0, 0.1, shape)
    return out


@dataclass
class FitResult:
    params: Params
    losses: list[float]
    examples: int


class TorchProgram:
    """A program's forward pass and loss in torch, learnable tensors as parameters."""

    def __init__(self, program: Program, params: Params, *, step_temperature: float | None = None):
        import torch

        names = learnable(program)
        if not names:
            raise InvalidInput("the program declares no learnable tensor", field="program")
        if not program.examples:
            raise InvalidInput("the program has no examples to learn from", field="program")
        self.program = program
        self.step_temperature = step_temperature
        self.params = {
            n: torch.tensor(params[n], dtype=torch.float64, requires_grad=True) for n in names
        }
        self.constants = {
            n: torch.from_numpy(dense_base(program, n))
            for n in program.tensors
            if n not in self.params
        }
        self.targets = []
        for name in sorted(program.examples):
            coords, values = program.example_arrays(name)
            index = tuple(torch.from_numpy(c) for c in coords.T)
            self.targets.append((name, index, torch.from_numpy(values)))
        self.examples = sum(len(t[2]) for t in self.targets)
        every = torch.cat([t[2] for t in self.targets])
        self.loss_kind = "bce" if bool(((every >= 0) & (every <= 1)).all()) else "mse"
        self.groups = [(g, is_recursive(program, g)) for g in groups(program)]

    def forward(self) -> dict[str, object]:
        values: dict[str, object] = {**self.constants, **self.params}
        base = dict(values)
        for group, recursive in self.groups:
            numeric.run_group(
                self.program,
                group,
                values,
                base,
                step_temperature=self.step_temperature,
                recursive=recursive,
                max_rounds=100,
            )
        return values

    def loss(self) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        values = self.forward()
        preds = torch.cat([values[name][index] for name, index, _ in self.targets])  # type: ignore[index]
        truth = torch.cat([t[2] for t in self.targets])
        if self.loss_kind == "bce":
            return F.binary_cross_entropy(preds.clamp(1e-7, 1 - 1e-7), truth)
        return torch.mean((preds - truth) ** 2)

    def numpy_params(self) -> Params:
        return {n: p.detach().numpy().copy() for n, p in self.params.items()}


def train(
    model: TorchProgram,
    *,
    steps: int,
    lr: float,
    optimizer: Optimizer = "adam",
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """`steps` full-batch gradient steps on the model's examples; the loss before each."""
    import torch

    params = list(model.params.values())
    opt = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr)
    losses = []
    for step in range(steps):
        opt.zero_grad()
        loss = model.loss()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
    return losses


def fit(
    program: Program,
    *,
    steps: int = 300,
    lr: float = 0.1,
    optimizer: Optimizer = "adam",
    seed: int = 0,
    step_temperature: float | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> FitResult:
    """Fit the learnable tensors centrally (all examples in this process)."""
    import torch

    torch.manual_seed(seed)
    model = TorchProgram(program, initial_params(program, seed), step_temperature=step_temperature)
    losses = train(model, steps=steps, lr=lr, optimizer=optimizer, on_step=on_step)
    with torch.no_grad():
        losses.append(float(model.loss()))
    return FitResult(model.numpy_params(), losses, model.examples)


def loss_at(program: Program, params: Params, *, step_temperature: float | None = None) -> float:
    """The program's loss on its examples with `params` (no training)."""
    import torch

    model = TorchProgram(program, params, step_temperature=step_temperature)
    with torch.no_grad():
        return float(model.loss())
