"""The context layer's own settings: `[context]` in trifecta.toml, `TRIFECTA_CONTEXT_*` env."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from trifecta.core.settings import LayerSettings


class ContextSettings(LayerSettings):
    toml_section = "context"
    model_config = SettingsConfigDict(env_prefix="TRIFECTA_CONTEXT_", extra="ignore")

    default_shard_url: str | None = Field(
        default=None,
        description="database of domains the shard map does not name; none: the control database",
    )
    dedup_threshold: float = Field(
        default=0.92, gt=0, le=1, description="cosine above which two bullets of a section merge"
    )
    memory_dedup_threshold: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="cosine above which a new memory reinforces an old one",
    )
    prune_margin: int = Field(
        default=3, ge=1, description="a bullet is pruned while harmful - helpful >= this margin"
    )
    playbook_token_budget: int = Field(
        default=6000, ge=64, description="stored playbook size cap; least useful bullets go first"
    )
    render_token_budget: int = Field(
        default=1500, ge=16, description="default budget when a playbook is rendered into a prompt"
    )
    max_ops_per_delta: int = Field(default=500, ge=1)
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="HTTP request body limit")
    cache: bool = Field(default=True, description="in-process views and result cache (+ Redis)")
    cache_entries: int = Field(default=20_000, ge=16, description="in-process result cache size")
    cache_ttl_s: float = Field(default=600, gt=0, description="lifetime of a result kept in Redis")
    version_ttl_s: float = Field(
        default=60,
        gt=0,
        description="bound on staleness if a writer dies between commit and publish",
    )
    tenancy_ttl_s: float = Field(
        default=2.0, ge=0, description="how long a capsule's domain and shares are remembered"
    )
    move_retry_s: float = Field(
        default=30.0, gt=0, description="how long a write waits for a moving domain's switch"
    )
    query_cache_entries: int = Field(
        default=4096, ge=0, description="query embeddings remembered by exact text (0: none)"
    )
    standing_searches_kept: int = Field(
        # Each keeps about 2.4 KB (its query's bytes, the top-k). Generated task prompts
        # rarely recur: of 20,000 held-out ones of a domain an LRU of 2,048 answers 3.4%,
        # of 256 0.5% (`benchmarks/soak.py --hit-rates`); what a kept search is for is a
        # capsule's repeated prompts, a few to a few dozen (docs/context.md).
        default=256,
        ge=0,
        description="standing searches a domain's view keeps (least recently asked go first)",
    )
    standing_searches_first_asks: int = Field(
        # A search (or bullet ranking) is kept at its second ask, its first remembered by
        # hash (about 0.1 KB): fresh prompts then never fill the bounds (`standing.py`; 0:
        # keep at the first ask).
        default=1024,
        ge=0,
        description="first asks a view (and the hot reads) remember per domain: a search, "
        "ranking or hot read is kept from its second",
    )
    bullet_rankings_kept: int = Field(
        # A ranking is 7-28 KB at 10-50 bullets (measured); the queries that recur are the
        # ones a kept standing search serves, so the same bound fits (0.3-7 MB a domain).
        default=256,
        ge=0,
        description="bullet rankings a domain view remembers by query (least recent dropped)",
    )
    token_counts_kept: int = Field(
        # About 0.17 KB each, keyed by hash (`tokens.py`): 8,192 take 1.4 MB. The texts
        # that recur are a domain's bullet and memory lines and its hot reads' prompts.
        default=8192,
        ge=0,
        description="token counts of rendered texts remembered (least recently asked go first)",
    )
    hot_reads_kept: int = Field(
        default=256,
        ge=0,
        description="reads a domain remembers by request to tell which are asked again",
    )
    hot_reads_refreshed: int = Field(
        # A hot read costs the worker a render from the kept search (about a millisecond);
        # a capsule's standing queries are a few to a few dozen (docs/context.md).
        default=32,
        ge=0,
        description="hot reads the learning worker recomputes per batch before publishing it",
    )
    learn_batch: int = Field(
        default=32, ge=1, description="queued trajectories of one domain learned per transaction"
    )
    learn_poll_s: float = Field(
        default=1.0, gt=0, description="how often an idle learning worker looks for queued rows"
    )
    learn_linger_s: float = Field(
        # 1 s: a round learns one batch per domain with rows (the loop's fleet: 13), and a
        # batch costs ~5 ms of the worker's CPU besides its trajectories' (its transaction,
        # the view's write, a hot read, the version it publishes), so rounds every 0.2 s
        # cut 5-trajectory batches and doubled that cost (docs/context.md, issue 15).
        default=1.0,
        ge=0,
        description="how long a woken worker waits for more trajectories",
    )
    embed_chunk: int = Field(
        # The worker's encoder is its own (no retrieval waits on it): bigger calls are
        # cheaper a text (bfloat16 MiniLM, one thread: 6.6 ms a text at 8, 4.8 at 32).
        default=32,
        ge=1,
        description="texts per embedding call of the learning worker",
    )
    learning_process: bool = Field(
        # On: a learner thread's batches held the interpreter lock beside the request
        # threads, and the loop workload's retrieve tail waited for them; in its own process
        # it shares no lock with them (docs/context.md, "The learner's placement").
        default=True,
        description="learn in a process of its own (else a thread of the serving process)",
    )
    learn_nice: int = Field(
        # 0: a learner thread shares the interpreter lock with the request threads, and at
        # nice 10 on a loaded machine the scheduler held it back while it held the lock, so
        # every request waited for it (priority inversion: docs/context.md).
        default=0,
        ge=0,
        le=19,
        description="the learning worker's Linux nice value (background work; 0: as requests)",
    )
    learn_bfloat16: bool = Field(
        default=True,
        description="the learning worker embeds in bfloat16 where the CPU has it natively",
    )
    redis_timeout_s: float = Field(
        default=0.25, gt=0, description="bound on every Redis call; past it the shard answers"
    )
