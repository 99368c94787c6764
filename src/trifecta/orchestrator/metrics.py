"""Prometheus metrics of the loop, per layer, environment and capsule kind (what the autoscaler
and the cost ledger read). Each orchestrator has its own registry, exposed at `/metrics` by the
server. No label is a capsule id: 10,000 capsules must not make 10,000 series per metric (the
per-capsule figures live in the request log and the ledger)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class LoopMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "trifecta_requests",
            "Requests served, by route and capsule kind",
            ["route", "capsule_kind"],
            registry=self.registry,
        )
        self.outcomes = Counter(
            "trifecta_outcomes",
            "Verifier or client verdicts",
            ["route", "verdict"],
            registry=self.registry,
        )
        self.escalations = Counter(
            "trifecta_escalations",
            "Requests the cascade handed to a larger tier",
            ["capsule_kind"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "trifecta_fallbacks",
            "Hops that failed and were re-routed",
            ["layer", "environment"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "trifecta_request_latency_seconds",
            "End-to-end request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.layer_latency = Histogram(
            "trifecta_layer_latency_seconds",
            "Time spent in each layer",
            ["layer"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cost = Counter(
            "trifecta_cost_usd",
            "Charged cost",
            ["layer", "environment", "capsule_kind"],
            registry=self.registry,
        )
        self.accelerator_seconds = Counter(
            "trifecta_accelerator_seconds",
            "Accelerator-seconds charged",
            ["layer", "accelerator"],
            registry=self.registry,
        )
