"""The recipe of the shipped generative model (`trifecta generative train`).

1. Convert an autoregressive Llama checkpoint (`convert.py`; by default the vendored copy of
   the small cognitive tier, `assets/generative/ar-source`): bidirectional attention, each FFN
   upcycled into `n_experts` experts.
2. Continue training on the masked-diffusion objective (LLaDA, Nie et al. 2025, eq. 3): per
   row draw t ~ U(eps, 1), replace each response position by `<mask>` with probability t, and
   minimise the cross-entropy on the masked positions weighted by 1/t. The prompt is never
   masked (LLaDA's conditional form). A linear learning-rate warm-up first: RND1 found the
   converted weights need one to survive the mask swap; then cosine decay.
3. After every step, DeepSeek-V3's auxiliary-loss-free balancing nudges each layer's selection
   bias by `balance_rate` towards even expert load.

A continued stage (`continue_from`: the shipped model) skips the conversion and trains the
saved weights further. `lookup_share` of the steps come first and draw look-ups alone (grade 1),
the curriculum the edge recipe uses: every hard task is a chain of look-ups, and the shipped
model substitutes the right sensor value about one time in five.

Seeded end to end on one torch thread, so the same recipe gives the same weights.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from trifecta.core.tasks import DIFFICULTIES, iter_tasks
from trifecta.core.tokenizer import CharTokenizer
from trifecta.generative.assets import ar_checkpoint_dir, asset_dir
from trifecta.generative.convert import convert_llama
from trifecta.generative.model import DiffusionLM
from trifecta.generative.sequences import encode_targets

# Weighted to the hard grades this layer is for; the light ones keep look-ups and sums sharp
# (every hard task is built from them).
TRAINING_MIX: dict[int, float] = {1: 0.15, 2: 0.15, 3: 0.25, 4: 0.2, 5: 0.25}
MASK_EPS = 1e-3


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    source: str = Field(
        default="ar-source",
        description="AR checkpoint converted: ar-source (the vendored small tier) or a tier",
    )
    n_experts: int = Field(default=8, ge=2)
    top_k: int = Field(default=2, ge=1)
    upcycle_noise: float = Field(default=0.01, ge=0, description="relative std per expert copy")
    canon_width: int = Field(default=4, ge=0, description="Canon layer look-back (0: none)")
    steps: int = Field(default=5000, gt=0)  # the defaults are the shipped recipe
    batch_size: int = Field(default=64, gt=0)
    learning_rate: float = Field(default=2e-3, gt=0)
    min_learning_rate: float = Field(default=1e-4, ge=0)
    warmup_steps: int = Field(default=200, ge=0)
    weight_decay: float = Field(default=0.05, ge=0)
    balance_rate: float = Field(default=1e-3, ge=0, description="DeepSeek-V3 bias step")
    gen_length: int = Field(default=20, gt=0, description="response positions per row")
    mix: dict[int, float] = Field(default_factory=lambda: dict(TRAINING_MIX))
    short_telemetry: bool = True
    threads: int = Field(default=1, gt=0)
    continue_from: str | None = Field(
        default=None,
        description="a saved model (a file of this package's assets, or a path) to train further "
        "instead of converting `source`",
    )
    lookup_share: float = Field(
        default=0.0, ge=0, lt=1, description="share of the steps, first, on look-ups alone"
    )

    @field_validator("mix")
    @classmethod
    def _grades(cls, value: dict[int, float]) -> dict[int, float]:
        unknown = sorted(set(value) - set(DIFFICULTIES))
        if unknown:
            raise ValueError(f"unknown difficulty {unknown[0]}")
        if not value or min(value.values()) < 0 or sum(value.values()) <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        return value


@dataclass
class TrainResult:
    model: DiffusionLM
    final_loss: float


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to `min_learning_rate`."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.min_learning_rate + (config.learning_rate - config.min_learning_rate) * cosine


def prompt_batches(config: TrainConfig) -> Iterator[list[str]]:
    """`config.steps` batches: look-ups alone for the first `lookup_share`, then the mix."""
    lookups = iter_tasks(
        seed=config.seed + 1,
        split="train",
        difficulties={1: 1.0},
        short_telemetry=config.short_telemetry,
    )
    stream = iter_tasks(
        seed=config.seed,
        split="train",
        difficulties=config.mix,
        short_telemetry=config.short_telemetry,
    )
    first = int(config.lookup_share * config.steps)
    for step in range(config.steps):
        source = lookups if step < first else stream
        yield [next(source).prompt for _ in range(config.batch_size)]


def initial_model(config: TrainConfig) -> DiffusionLM:
    """The converted source tier, or the saved model a continued stage starts from."""
    if config.continue_from is None:
        return convert_llama(
            ar_checkpoint_dir(config.source),
            n_experts=config.n_experts,
            top_k=config.top_k,
            noise=config.upcycle_noise,
            canon_width=config.canon_width,
            seed=config.seed,
        )
    from trifecta.generative.artifact import load_model

    path = asset_dir() / config.continue_from
    return load_model(path if path.is_file() else Path(config.continue_from)).train()


def masked_diffusion_loss(
    model: DiffusionLM,
    prompts: list[str],
    tokenizer: CharTokenizer,
    gen_length: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """LLaDA's objective on one batch: mask the response at a random rate t per row, predict
    the masked tokens, weight by 1/t, average over the response positions."""
    batch, targets = encode_targets(prompts, tokenizer, gen_length, model.config.block_size)
    B, G = targets.shape
    t = MASK_EPS + (1 - MASK_EPS) * torch.rand((B, 1), generator=generator)  # (B, 1)
    masked = torch.rand((B, G), generator=generator) < t  # (B, G)
    # A row with nothing masked teaches nothing: mask one position there.
    empty = ~masked.any(dim=1)
    pick = torch.randint(0, G, (B,), generator=generator)
    masked[empty, pick[empty]] = True
    ids = batch.ids.clone()
    response = ids[:, batch.start :]
    response[masked] = tokenizer.mask_id
    logits, _ = model(ids, batch.positions, batch.valid)
    logits = logits[:, batch.start :]  # (B, G, vocab)
    loss = F.cross_entropy(logits.reshape(B * G, -1), targets.reshape(-1), reduction="none")
    weighted = (loss.view(B, G) * masked) / t
    return weighted.sum() / (B * G)


def train(config: TrainConfig, on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Convert the source tier and continue training it; `on_step(step, loss)` reports."""
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    torch.set_num_threads(config.threads)
    generator = torch.Generator().manual_seed(config.seed)
    tokenizer = CharTokenizer()
    model = initial_model(config)
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
    for step, prompts in enumerate(prompt_batches(config)):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        loss = masked_diffusion_loss(model, prompts, tokenizer, config.gen_length, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.balance_step(config.balance_rate)
        loss_value = float(loss.detach())
        if on_step is not None:
            on_step(step, loss_value)
    model.eval()
    return TrainResult(model, loss_value)
