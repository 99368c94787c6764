"""The three shipped checkpoint tiers: tiny Llama models standing for UserLM 8B / 13B / 70B.

Each tier is a `transformers` `LlamaForCausalLM` over the character vocabulary of
`core/tokenizer.py`, trained by `trifecta models train` on the task family of `core/tasks.py`
and saved as an ordinary Hugging Face directory (safetensors, `config.json`, `tokenizer.json`)
under `assets/cognitive/<tier>/`. It therefore loads exactly as a real UserLM checkpoint does,
and its cost per token is the sizing of the real checkpoint it stands for
(`preset`, a name of `trifecta.fleet.sizing.PRESETS`).

This module stays import-light (no torch at import time) so that the CLI starts fast.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trifecta.cognitive.scratchpad import Style
from trifecta.core.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast


@dataclass(frozen=True)
class TierSpec:
    """A shipped tier: its architecture, the checkpoint it stands for and its training budget."""

    name: str
    preset: str  # the real checkpoint it stands for, a key of fleet.sizing.PRESETS
    accelerator_hint: str  # the playbook's GPU tier mapping (A10 -> A100 -> H100)
    hidden_size: int
    layers: int
    heads: int
    intermediate_size: int
    train_steps: int  # default optimiser steps of `trifecta models train`
    learning_rate: float
    batch_size: int = 128
    max_positions: int = 64
    # std of the initial weights (transformers' initializer_range); larger than the usual 0.02
    # so that attention patterns (the look-ups need two-step "induction" heads) form sooner:
    # 0.08 halved the steps to a given look-up loss in our runs.
    init_std: float = 0.02
    rope_theta: float = 10_000.0  # RoPE base
    attention_bias: bool = False
    prompt_weight: float = 0.0  # weight of the loss on prompt tokens (training.sequence_loss)
    # First steps on look-ups alone (short-telemetry curriculum) before the full mix: the
    # look-up circuit forms on its own in a few thousand steps, and not at all within the
    # budget when look-ups are a third of the mix. 0 for a grown tier, which inherits it.
    lookup_steps: int = 0
    lookup_learning_rate: float = 2e-3
    # Last steps on look-ups and look-up chains drawn far more often (training.REFINE_MIX), with
    # their own schedule and, optionally, another answer style: the large tier's, writing each
    # sensor before its value (`named`), took its grade 5 from 70.0% to 92.5% (docs/cognitive.md).
    refine_steps: int = 0
    refine_learning_rate: float = 5e-4
    # How the refine phase writes worked answers (None: `scratchpad`); the style the tier ships.
    refine_style: Style | None = None
    # Look-back of the Canon layer before each attention (canon_llama.py); 0: a plain Llama.
    canon_width: int = 4
    # How its worked answers are written (scratchpad.py): operands and results, results only, or
    # operands named by their sensor.
    scratchpad: Style = "operands"

    @property
    def directory(self) -> Path:
        return assets_dir() / self.name


# Each tier is about four times the one below; every head is 16 wide so that a tier can be
# grown into the next (see growth.py). The budgets are what trained each in about 20 minutes
# on one thread of a heavily shared 2-core machine; docs/cognitive.md gives the held-out
# accuracy they reach.
TIERS: dict[str, TierSpec] = {
    "small": TierSpec(
        name="small",
        preset="userlm-8b",
        accelerator_hint="A10",
        hidden_size=64,
        layers=2,
        heads=4,
        intermediate_size=192,
        train_steps=4000,
        lookup_steps=800,
        lookup_learning_rate=3e-3,
        learning_rate=3e-3,
        init_std=0.08,
        scratchpad="results",
    ),
    "medium": TierSpec(
        name="medium",
        preset="userlm-13b",
        accelerator_hint="A100",
        hidden_size=128,
        layers=3,
        heads=8,
        intermediate_size=384,
        train_steps=900,
        learning_rate=1.5e-3,
        init_std=0.08,
    ),
    "large": TierSpec(
        name="large",
        preset="userlm-70b",
        accelerator_hint="H100",
        hidden_size=160,
        layers=4,
        heads=10,
        intermediate_size=480,
        train_steps=1800,
        refine_steps=800,
        refine_learning_rate=1e-3,
        refine_style="named",
        batch_size=96,
        learning_rate=1e-3,
        init_std=0.08,
    ),
}
TIER_NAMES: tuple[str, ...] = tuple(TIERS)  # smallest first: the escalation order
AUTO_MODEL = "auto"  # the model name of the escalating cascade


def assets_dir() -> Path:
    """`trifecta/assets/cognitive`, where the shipped tiers live."""
    return Path(str(importlib.resources.files("trifecta") / "assets" / "cognitive"))


def get_tier(name: str) -> TierSpec:
    try:
        return TIERS[name]
    except KeyError:
        raise InvalidInput(f"unknown tier {name!r}", field="tier", allowed=TIER_NAMES) from None


def tier_dir(name: str) -> Path:
    """The shipped directory of tier `name` (NotFound when its weights are not there)."""
    directory = get_tier(name).directory
    if not (directory / "model.safetensors").is_file():
        raise NotFound(
            f"tier {name!r} has no weights in {directory} "
            f"(run `trifecta models train --tier {name}`)",
            field="tier",
        )
    return directory


def load_tier(name: str) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """The shipped tier `name` as `(model, tokenizer)`, in eval mode on the CPU, through the
    same `from_pretrained` path a real UserLM checkpoint takes."""
    from trifecta.cognitive.checkpoints import load_checkpoint

    model, tokenizer = load_checkpoint(tier_dir(name))
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    if not isinstance(model, LlamaForCausalLM) or not isinstance(
        tokenizer, PreTrainedTokenizerFast
    ):
        raise InvalidInput(f"tier {name!r} is not a Llama checkpoint", field="tier")
    return model, tokenizer
