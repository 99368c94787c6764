"""The training recipe of the shipped edge model (`trifecta edge train`).

Two phases: the first `float_share` of the steps in full precision, the rest
quantisation-aware, where every BitLinear forwards ternary weights and 8-bit activations and
passes gradients straight through (see `bitlinear`); the artifact packs what the second phase
fitted. The data is the shared
task family (`core.tasks`), weighted towards the light grades the edge serves, as
`<bos>prompt answer<eos>` sequences with the loss on the answer and end token only.

Look-ups are what tiny models fail to learn (they copy *a* value, not the asked one). The
model's Canon layers (`model.Canon`) do most of the work there; the curriculum helps: telemetry
prompts come short as well as long (`iter_tasks(short_telemetry=True)`), and the first
`lookup_share` of the steps are look-ups alone. Seeded end to end, so the same recipe on the
same machine gives the same artifact.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from trifecta.core.errors import InvalidInput
from trifecta.core.tasks import DIFFICULTIES, Task, iter_tasks
from trifecta.core.tokenizer import CharTokenizer
from trifecta.edge.artifact import EdgeArtifact, TernaryMatrix
from trifecta.edge.bitlinear import ternary_weights
from trifecta.edge.config import EdgeModelConfig
from trifecta.edge.model import EdgeTransformer
from trifecta.edge.packing import Layout

IGNORE = -100
# Mostly the light grades (1-2) the edge is offloaded; a small share of the harder grades keeps
# the model honest about its limits (the offload policy never sends them).
TRAINING_MIX: dict[int, float] = {1: 0.45, 2: 0.45, 3: 0.05, 4: 0.025, 5: 0.025}


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    # The defaults are the shipped model's recipe: about 5 minutes on one thread of this CPU.
    steps: int = Field(default=4000, gt=0)
    lookup_share: float = Field(
        default=0.15, ge=0, lt=1, description="share of the steps, first, on look-ups alone"
    )
    short_telemetry: bool = Field(
        default=True, description="draw telemetry prompts from the short-telemetry curriculum"
    )
    batch_size: int = Field(default=96, gt=0)
    learning_rate: float = Field(default=2e-3, gt=0)
    min_learning_rate: float = Field(default=1e-4, ge=0)
    warmup_steps: int = Field(default=100, ge=0)
    weight_decay: float = Field(default=0.05, ge=0)
    mix: dict[int, float] = Field(default_factory=lambda: dict(TRAINING_MIX))
    layout: Layout = "i2"
    # Larger than the usual 0.02 so that attention patterns (look-ups need two-step
    # "induction" heads) form sooner; the cognitive tiers found the same (docs/cognitive.md).
    init_std: float = Field(default=0.08, gt=0, description="std of the initial weights")
    # Full precision first forms the look-up circuit sooner; the quantisation-aware rest
    # fits the ternary weights the artifact ships.
    float_share: float = Field(
        default=0.3,
        ge=0,
        lt=1,
        description="share of the steps, first, in full precision (the rest quantisation-aware)",
    )
    threads: int = Field(
        default=1,
        gt=0,
        description="torch intra-op threads (1: reproducible, and robust on a shared machine)",
    )
    model: EdgeModelConfig = Field(default_factory=EdgeModelConfig)

    @field_validator("mix")
    @classmethod
    def _grades(cls, value: dict[int, float]) -> dict[int, float]:
        unknown = sorted(set(value) - set(DIFFICULTIES))
        if unknown:
            raise ValueError(
                f"unknown difficulty {unknown[0]} (allowed: {', '.join(map(str, DIFFICULTIES))})"
            )
        if not value or min(value.values()) < 0 or sum(value.values()) <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        return value

    @property
    def float_steps(self) -> int:
        return int(self.steps * self.float_share)

    @property
    def lookup_steps(self) -> int:
        return int(self.steps * self.lookup_share)


@dataclass
class TrainResult:
    artifact: EdgeArtifact
    final_loss: float
    steps: int


def encode_batch(
    tasks: list[Task], tokenizer: CharTokenizer, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) with targets masked to the answer and the end token."""
    rows: list[list[int]] = []
    targets: list[list[int]] = []
    for task in tasks:
        prompt = tokenizer.encode(task.prompt, bos=True)
        answer = tokenizer.encode(task.answer, eos=True)
        sequence = prompt + answer
        if len(sequence) > block_size + 1:
            raise InvalidInput(f"task {task.id} needs {len(sequence)} tokens", field="block_size")
        rows.append(sequence[:-1])
        targets.append([IGNORE] * (len(prompt) - 1) + answer)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (row, target) in enumerate(zip(rows, targets, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, : len(target)] = torch.tensor(target)
    return ids, labels


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to `min_learning_rate`."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.min_learning_rate + (config.learning_rate - config.min_learning_rate) * cosine


def to_artifact(model: EdgeTransformer, layout: Layout = "i2") -> EdgeArtifact:
    """Quantise the latent weights once and pack them (the deployable form)."""
    ternary = {}
    for name, layer in model.bitlinears().items():
        values, beta = ternary_weights(layer.weight.detach())
        ternary[name] = TernaryMatrix.from_values(
            values.to(torch.int8).numpy(), float(beta), layout
        )
    floats = {n: t.numpy().astype(np.float32).copy() for n, t in model.float_tensors().items()}
    return EdgeArtifact(model.config, ternary, floats, layout)


def training_batches(config: TrainConfig) -> Iterator[list[Task]]:
    """The curriculum: `config.steps` batches, look-ups alone for the first `lookup_steps`,
    then the mix; telemetry prompts short and long when `short_telemetry` is on."""
    lookups = iter_tasks(
        seed=config.seed, split="train", difficulties=[1], short_telemetry=config.short_telemetry
    )
    mixed = iter_tasks(
        seed=config.seed,
        split="train",
        difficulties=config.mix,
        short_telemetry=config.short_telemetry,
    )
    for step in range(config.steps):
        stream = lookups if step < config.lookup_steps else mixed
        yield [next(stream) for _ in range(config.batch_size)]


def train(config: TrainConfig, on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train from scratch; `on_step(step, loss)` reports progress."""
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    torch.set_num_threads(config.threads)
    tokenizer = CharTokenizer()
    model = EdgeTransformer(config.model, init_std=config.init_std)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
        betas=(0.9, 0.95),
    )
    model.train()
    loss_value = float("nan")
    for step, batch in enumerate(training_batches(config)):
        for layer in model.bitlinears().values():
            layer.full_precision = step < config.float_steps
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        ids, labels = encode_batch(batch, tokenizer, config.model.block_size)
        logits = model(ids)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss_value = float(loss.detach())
        if on_step is not None:
            on_step(step, loss_value)
    model.eval()
    return TrainResult(to_artifact(model, config.layout), loss_value, config.steps)


def save_recipe(config: TrainConfig, path: Path) -> None:
    path.write_text(config.model_dump_json(indent=2) + "\n")
