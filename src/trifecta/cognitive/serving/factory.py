"""Build served tiers: replicas of a model, their router and fair queue, and their price."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from trifecta.cognitive.serving.codec import TokenCodec
from trifecta.cognitive.serving.cost import TierRate, shipped_tier_rate
from trifecta.cognitive.serving.engine import BatchingEngine
from trifecta.cognitive.serving.fair_queue import FairQueue, RequestQueue
from trifecta.cognitive.serving.model_source import ModelSource
from trifecta.cognitive.serving.pool import LocalReplicas, TierPool
from trifecta.cognitive.serving.prefix_cache import PrefixKVCache
from trifecta.cognitive.serving.requests import EngineRequest
from trifecta.cognitive.serving.router import RouterWeights, ScoringRouter
from trifecta.cognitive.serving.service import CognitiveService, ServedTier
from trifecta.cognitive.serving.slot_shares import SlotShares
from trifecta.cognitive.serving.tenants import TenantDirectory
from trifecta.core.logging import get_logger
from trifecta.core.settings import Phase, get_settings

if TYPE_CHECKING:
    from trifecta.cognitive.serving.auto import AutoModel
    from trifecta.cognitive.serving.ray_deployment import RayTierOptions
    from trifecta.cognitive.store import ThresholdStore

log = get_logger(__name__)

DEFAULT_MAX_BATCH = 16
# Tiny models gain nothing from intra-op parallelism, and on a busy machine torch's spinning
# worker threads slow each step by orders of magnitude; replicas parallelise instead.
DEFAULT_TORCH_THREADS = 1


def set_torch_threads(threads: int | None) -> None:
    """Intra-op threads of torch in this process (None: leave torch's default)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def random_model(
    *,
    seed: int = 0,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    context_length: int = 64,
    init_range: float = 0.3,
) -> tuple[Any, Any]:
    """A seeded, randomly initialised Llama over the character vocabulary, `(model, tokenizer)`:
    for tests and benchmarks whose claims (same tokens batched or not, throughput ratios)
    hold for any weights. The wide initialisation gives peaked, varied next-token choices."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from trifecta.core.tokenizer import CharTokenizer

    tokenizer = CharTokenizer()
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=context_length,
        initializer_range=init_range,
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval(), tokenizer


def build_engines(
    model: Any,
    codec: TokenCodec,
    *,
    tier: str,
    replicas: int,
    max_batch: int = DEFAULT_MAX_BATCH,
    prefix_cache_tokens: int | None = None,
) -> list[BatchingEngine]:
    """`replicas` engines; each gets its own copy of the weights (forward passes of one module
    from several threads are not something torch promises to keep safe). Each engine's prefix
    cache holds `prefix_cache_tokens` (default: `TRIFECTA_COGNITIVE_PREFIX_CACHE_TOKENS`)."""
    if prefix_cache_tokens is None:
        from trifecta.cognitive.settings import get_cognitive_settings

        prefix_cache_tokens = get_cognitive_settings().prefix_cache_tokens
    return [
        BatchingEngine(
            model if i == 0 else copy.deepcopy(model),
            codec,
            name=f"{tier}-{i}",
            max_batch=max_batch,
            prefix_cache=PrefixKVCache(capacity_tokens=prefix_cache_tokens),
        )
        for i in range(replicas)
    ]


def build_tier(
    tier: str,
    model: Any,
    tokenizer: Any,
    *,
    rate: TierRate,
    replicas: int = 1,
    max_batch: int = DEFAULT_MAX_BATCH,
    queue: RequestQueue[EngineRequest] | None = None,
    router: RouterWeights | None = None,
    max_queued_per_capsule: int = 1024,
    slot_shares: bool = True,
) -> ServedTier:
    """A tier of `replicas` in-process replicas behind the scoring router and a fair queue."""
    codec = TokenCodec(tokenizer)
    engines = build_engines(model, codec, tier=tier, replicas=replicas, max_batch=max_batch)
    pool = TierPool(
        tier,
        LocalReplicas(engines, router=ScoringRouter(router)),
        codec,
        context_length=engines[0].context_length,
        queue=queue if queue is not None else FairQueue(),
        max_queued_per_capsule=max_queued_per_capsule,
        slot_shares=SlotShares() if slot_shares else None,
    )
    return ServedTier(tier, pool, rate)


def build_service(
    tiers: Sequence[str] | None = None,
    *,
    replicas: int = 1,
    max_batch: int = DEFAULT_MAX_BATCH,
    phase: Phase | None = None,
    tenants: TenantDirectory | None = None,
    require_capsule: bool = False,
    torch_threads: int | None = DEFAULT_TORCH_THREADS,
    dummy_weights: bool = False,
    ray: RayTierOptions | None = None,
    threshold_store: ThresholdStore | None = None,
) -> CognitiveService:
    """The shipped tiers (all by default): each with `replicas` in-process replicas, or, with
    `ray` options, as Ray Serve deployments (Ray must be initialised: `connect_ray`)."""
    from trifecta.cognitive.tiers import TIER_NAMES

    set_torch_threads(torch_threads)
    phase = phase or get_settings().phase
    served = []
    for tier in tiers or TIER_NAMES:
        source = ModelSource(kind="dummy" if dummy_weights else "tier", tier=tier)
        rate = shipped_tier_rate(tier, phase=phase, batch=max_batch)
        if ray is not None:
            served.append(build_ray_tier(tier, source, rate=rate, options=ray))
        else:
            model, tokenizer = source.load()
            served.append(
                build_tier(
                    tier, model, tokenizer, rate=rate, replicas=replicas, max_batch=max_batch
                )
            )
    return CognitiveService(
        served,
        tenants=tenants or TenantDirectory(require_capsule=require_capsule),
        auto=shipped_auto_model(served, store=threshold_store),
    )


def shipped_auto_model(
    served: Sequence[ServedTier], *, store: ThresholdStore | None = None
) -> AutoModel | None:
    """`auto` over the served tiers with each capsule's calibrated thresholds (the shipped
    defaults for a capsule without its own), recalibrated online from its traffic. None when
    fewer than two tiers are served or no default thresholds ship yet."""
    from trifecta.cognitive.cascade import Decision, DecisionHook
    from trifecta.cognitive.service import default_calibration, online_calibrator
    from trifecta.cognitive.serving.auto import AutoModel
    from trifecta.cognitive.serving.thresholds import ThresholdBoard
    from trifecta.cognitive.settings import get_cognitive_settings
    from trifecta.core.errors import NotFound

    if len(served) < 2:
        return None
    try:
        default_calibration()
    except NotFound as exc:
        log.warning("serving without the auto model", reason=exc.one_line())
        return None
    # Thresholds from a snapshot of the store, not a read a request (`serving/thresholds.py`);
    # a recalibration here applies to the next request.
    board = ThresholdBoard(store)
    online = online_calibrator(board.store)

    def hook(capsule_id: str) -> DecisionHook:
        def observe(_prompt: str, decision: Decision) -> None:
            if online.observe(capsule_id, decision) is not None:
                board.expire()

        return observe

    return AutoModel(
        served,
        thresholds=board,
        hook=hook,
        reuse_prefix=get_cognitive_settings().reuse_prefix,
    )


def build_ray_tier(
    tier: str, source: ModelSource, *, rate: TierRate, options: RayTierOptions
) -> ServedTier:
    """Tier `tier` deployed on Ray Serve, behind this process's fair queue."""
    from trifecta.cognitive.serving.ray_deployment import RayReplicas, deploy_tier

    tokenizer, context_length = source.tokenizer_and_context()
    dispatcher = RayReplicas(tier, deploy_tier(tier, source, options), options)
    pool = TierPool(
        tier,
        dispatcher,
        TokenCodec(tokenizer),
        context_length=context_length,
        queue=FairQueue(),
        slot_shares=SlotShares(),
    )
    dispatcher.on_room(pool.dispatch)
    return ServedTier(tier, pool, rate)


def connect_ray(address: str) -> None:
    """Join the Ray cluster at `address` (`local`: start one in this process) and start Serve
    without its HTTP proxy (our API is the ingress)."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(
            address=None if address == "local" else address,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    serve.start(proxy_location="Disabled")
