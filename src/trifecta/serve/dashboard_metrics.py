"""The dashboard's live per-layer figures, read from the running server's own Prometheus
registry (`orchestrator.metrics.LoopMetrics`): requests, p50/p99, accuracy per route, latency
per layer, escalation rate and edge share.

Quantiles come from the histograms' cumulative buckets with linear interpolation inside the
bucket, as Prometheus' `histogram_quantile` computes them; prometheus_client has no reader
for this, so the few lines are written here.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry
from pydantic import BaseModel


class RouteFigures(BaseModel):
    route: str
    requests: int
    p50_ms: float | None
    p99_ms: float | None
    correct: int
    wrong: int

    @property
    def accuracy(self) -> float | None:
        judged = self.correct + self.wrong
        return self.correct / judged if judged else None


class LayerFigures(BaseModel):
    layer: str
    hops: int
    p50_ms: float | None
    p99_ms: float | None
    fallbacks: int


class LiveFigures(BaseModel):
    requests: int
    escalations: int
    edge_requests: int
    correct: int
    wrong: int
    cost_usd: float
    routes: list[RouteFigures]
    layers: list[LayerFigures]

    @property
    def escalation_rate(self) -> float | None:
        return self.escalations / self.requests if self.requests else None

    @property
    def edge_share(self) -> float | None:
        return self.edge_requests / self.requests if self.requests else None

    @property
    def accuracy(self) -> float | None:
        judged = self.correct + self.wrong
        return self.correct / judged if judged else None


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The q-quantile of a histogram given as (upper bound, cumulative count) pairs; None
    when it holds no observation. Past the last finite bound, that bound is the answer."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def _samples(registry: CollectorRegistry) -> Iterable[tuple[str, dict[str, str], float]]:
    for family in registry.collect():
        for sample in family.samples:
            yield sample.name, sample.labels, sample.value


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 2) if seconds is not None else None


def live_figures(registry: CollectorRegistry) -> LiveFigures:
    """Everything the metrics panel shows, from one pass over the registry."""
    requests: dict[str, float] = defaultdict(float)
    verdicts: dict[tuple[str, str], float] = defaultdict(float)
    route_buckets: dict[str, list[tuple[float, float]]] = defaultdict(list)
    layer_buckets: dict[str, list[tuple[float, float]]] = defaultdict(list)
    layer_hops: dict[str, float] = defaultdict(float)
    fallbacks: dict[str, float] = defaultdict(float)
    escalations = cost = 0.0
    for name, labels, value in _samples(registry):
        if name == "trifecta_requests_total":
            requests[labels["route"]] += value
        elif name == "trifecta_outcomes_total":
            verdicts[(labels["route"], labels["verdict"])] += value
        elif name == "trifecta_escalations_total":
            escalations += value
        elif name == "trifecta_cost_usd_total":
            cost += value
        elif name == "trifecta_fallbacks_total":
            fallbacks[labels["layer"]] += value
        elif name == "trifecta_request_latency_seconds_bucket":
            route_buckets[labels["route"]].append((float(labels["le"]), value))
        elif name == "trifecta_layer_latency_seconds_bucket":
            layer_buckets[labels["layer"]].append((float(labels["le"]), value))
        elif name == "trifecta_layer_latency_seconds_count":
            layer_hops[labels["layer"]] += value

    def correct(route: str) -> int:
        return int(verdicts[(route, "correct")] + verdicts[(route, "client_success")])

    def wrong(route: str) -> int:
        return int(verdicts[(route, "wrong")] + verdicts[(route, "client_failure")])

    routes = [
        RouteFigures(
            route=route,
            requests=int(count),
            p50_ms=_ms(histogram_quantile(0.5, route_buckets[route])),
            p99_ms=_ms(histogram_quantile(0.99, route_buckets[route])),
            correct=correct(route),
            wrong=wrong(route),
        )
        for route, count in sorted(requests.items())
    ]
    layers = [
        LayerFigures(
            layer=layer,
            hops=int(layer_hops[layer]),
            p50_ms=_ms(histogram_quantile(0.5, layer_buckets[layer])),
            p99_ms=_ms(histogram_quantile(0.99, layer_buckets[layer])),
            fallbacks=int(fallbacks[layer]),
        )
        for layer in sorted(set(layer_hops) | set(fallbacks))
    ]
    return LiveFigures(
        requests=int(sum(requests.values())),
        escalations=int(escalations),
        edge_requests=int(requests.get("edge", 0)),
        correct=sum(r.correct for r in routes),
        wrong=sum(r.wrong for r in routes),
        cost_usd=cost,
        routes=routes,
        layers=layers,
    )
