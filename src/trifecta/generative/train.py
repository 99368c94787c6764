"""The recipe of the shipped generative model (`trifecta generative train`).

1. Convert an autoregressive Llama checkpoint (`convert.py`; a vendored copy of a cognitive
   tier, `assets/generative/ar-*`; the shipped recipe's is the medium tier): bidirectional
   attention, each FFN upcycled into `n_experts` experts (cut into `granularity` shards for
   fine-grained experts).
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

Two additions of the named-scratchpad recipe (both off in the first recipes):

- `block_mask_share` of the rows are masked the way semi-autoregressive decoding meets them
  (the block-diffusion setting of Arriola et al. 2025, "Block Diffusion"): the response before
  a random cut is clean, the `block_length` positions after it are masked at rate t, every
  later position is masked; the loss counts that window only. Under LLaDA's uniform masks
  alone a clean prefix followed by an all-masked suffix, the state every block of the decoder
  starts from, is rare.
- `expert_dropout` of the steps run with a random expert mask: per layer, a uniform number of
  experts between top-k and all but one is kept, the others are masked and the router's top-k
  is taken among the rest (the capsule masks' own mechanism, `model.Routing.active`), so the
  experts learn to stand in for each other and a capsule's mask at serving time costs little.
  The load-balancing step is skipped on those steps (a masked expert's zero load is not an
  imbalance to correct).

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
from trifecta.generative.model import DiffusionLM, Routing
from trifecta.generative.sequences import Style, encode_targets

# Weighted to the hard grades this layer is for; the light ones keep look-ups and sums sharp
# (every hard task is built from them).
TRAINING_MIX: dict[int, float] = {1: 0.15, 2: 0.15, 3: 0.25, 4: 0.2, 5: 0.25}
MASK_EPS = 1e-3


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    source: str = Field(
        default="ar-source",
        description="AR checkpoint converted: a vendored copy (ar-source, ar-small-canon, "
        "ar-medium-canon) or a live tier",
    )
    n_experts: int = Field(default=8, ge=2)
    top_k: int = Field(default=2, ge=1)
    granularity: int = Field(
        default=1, ge=1, description="FFN shards per expert group (fine-grained upcycling)"
    )
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
    style: Style = Field(default="operands", description="the scratchpad the model writes")
    block_mask_share: float = Field(
        default=0.0, ge=0, le=1, description="share of rows masked as block decoding meets them"
    )
    block_length: int = Field(default=4, gt=0, description="the window of those rows")
    expert_dropout: float = Field(
        default=0.0, ge=0, le=1, description="share of the steps run under a random expert mask"
    )
    shift: bool = Field(
        default=False, description="each position predicts the next token, as the AR source did"
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
            shift=config.shift,
            granularity=config.granularity,
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
    *,
    style: Style = "operands",
    block_mask_share: float = 0.0,
    block_length: int = 4,
    routing: Routing | None = None,
) -> torch.Tensor:
    """LLaDA's objective on one batch: mask the response at a random rate t per row, predict
    the masked tokens, weight by 1/t, average over the response positions. A share of the
    rows is masked as block decoding meets them (module docstring)."""
    batch, targets = encode_targets(prompts, tokenizer, gen_length, model.config.block_size, style)
    B, G = targets.shape
    masked, counted, t = draw_masks(B, G, generator, block_mask_share, block_length)
    ids = batch.ids.clone()
    response = ids[:, batch.start :]
    response[masked] = tokenizer.mask_id
    logits, _ = model(ids, batch.positions, batch.valid, routing)
    shift = int(model.config.shift)  # a shifted model reads token i off position i - 1
    logits = logits[:, batch.start - shift : batch.start + G - shift]  # (B, G, vocab)
    loss = F.cross_entropy(logits.reshape(B * G, -1), targets.reshape(-1), reduction="none")
    weighted = (loss.view(B, G) * (masked & counted)) / t
    return weighted.sum() / (B * G)


def draw_masks(
    rows: int,
    length: int,
    generator: torch.Generator,
    block_mask_share: float = 0.0,
    block_length: int = 4,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which response positions are masked (B, G), which the loss reads (B, G), and each row's
    rate t (B, 1). Uniform rows: each position masked with probability t, all read. Blockwise
    rows (a `block_mask_share` of them): clean before a random cut, the `block_length` window
    after it masked with probability t and read, everything later masked and not read."""
    B, G = rows, length
    t = MASK_EPS + (1 - MASK_EPS) * torch.rand((B, 1), generator=generator)  # (B, 1)
    masked = torch.rand((B, G), generator=generator) < t  # (B, G)
    counted = torch.ones((B, G), dtype=torch.bool)
    if block_mask_share > 0:
        blockwise = torch.rand((B, 1), generator=generator) < block_mask_share  # (B, 1)
        cut = torch.randint(0, G, (B, 1), generator=generator)  # the window's first position
        column = torch.arange(G)[None, :]  # (1, G)
        window = (column >= cut) & (column < cut + block_length)  # (B, G)
        later = column >= cut + block_length
        masked = torch.where(blockwise, (masked & window) | later, masked)
        counted = torch.where(blockwise, window, counted)
    # A row with nothing masked where the loss reads teaches nothing: mask one position there
    # (drawn as the first recipes drew it when no row is blockwise, so they still reproduce).
    empty = ~(masked & counted).any(dim=1)
    if block_mask_share > 0:
        pick = (torch.rand((B, G), generator=generator) * counted).argmax(dim=1)  # (B,)
    else:
        pick = torch.randint(0, G, (B,), generator=generator)
    masked[empty, pick[empty]] = True
    return masked, counted, t


def random_expert_mask(
    n_layers: int, n_experts: int, top_k: int, generator: torch.Generator
) -> torch.Tensor:
    """(n_layers, E) bool: per layer a uniform number of experts in [top_k, E - 1] kept, chosen
    uniformly (expert dropout; module docstring)."""
    active = torch.zeros((n_layers, n_experts), dtype=torch.bool)
    for layer in range(n_layers):
        keep = int(torch.randint(top_k, max(top_k, n_experts - 1) + 1, (1,), generator=generator))
        active[layer, torch.randperm(n_experts, generator=generator)[:keep]] = True
    return active


def train(
    config: TrainConfig,
    on_step: Callable[[int, float], None] | None = None,
    on_model: Callable[[int, DiffusionLM], None] | None = None,
) -> TrainResult:
    """Convert the source tier and continue training it; `on_step(step, loss)` reports,
    `on_model(step, model)` sees the weights after each step (to keep checkpoints)."""
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
        routing = None
        if config.expert_dropout > 0 and float(torch.rand((), generator=generator)) < (
            config.expert_dropout
        ):
            mc = model.config
            routing = Routing(
                active=random_expert_mask(mc.n_layers, mc.n_experts, mc.top_k, generator)
            )
        loss = masked_diffusion_loss(
            model,
            prompts,
            tokenizer,
            config.gen_length,
            generator,
            style=config.style,
            block_mask_share=config.block_mask_share,
            block_length=config.block_length,
            routing=routing,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if routing is None:
            with torch.no_grad():
                model.balance_step(config.balance_rate)
        loss_value = float(loss.detach())
        if on_step is not None:
            on_step(step, loss_value)
        if on_model is not None:
            on_model(step, model)
    model.eval()
    return TrainResult(model, loss_value)
