"""Prometheus metrics of the gateway, labelled by variant (stable/canary) and model version.

For dashboards and alerts: success rate (``requests_total`` by ``code``), latency
(``request_duration_seconds``), fallback rate (``fallbacks_total`` / ``requests_total``) and
click-through rate (``events_total{type="click"}`` / ``served_items_total``), each per variant.
Shadow runs (``shadow_runs_total``) are in none of these: they are never served.
The rollout's analysis reads the same quantities from the per-version counters the gateways
keep in Redis (``recsys_contract.traffic``), so it needs no Prometheus.
A registry per gateway instance (not the process-global one) so tests can run several.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1,
    0.15, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
STAGES = ("retrieval", "filtering", "scoring", "ordering")


class GatewayMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        v = ["variant", "model_version"]
        self.requests = Counter(
            "recsys_gateway_requests",
            "Recommendation requests by HTTP status code",
            [*v, "code"],
            registry=r,
        )
        self.latency = Histogram(
            "recsys_gateway_request_duration_seconds",
            "End-to-end recommendation latency",
            v,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_latency = Histogram(
            "recsys_gateway_stage_duration_seconds",
            "Latency of each serving stage",
            [*v, "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "recsys_gateway_errors",
            "Requests answered with an error, by reason",
            [*v, "reason"],
            registry=r,
        )
        self.fallbacks = Counter(
            "recsys_gateway_fallbacks",
            "Responses served from fallback items, by reason",
            [*v, "reason"],
            registry=r,
        )
        self.precomputed = Counter(
            "recsys_gateway_precomputed",
            "Requests that looked for a pre-computed list, by outcome (served, missing, stale, "
            "other-version, invalid, short: too few items left after the live filters)",
            [*v, "outcome"],
            registry=r,
        )
        self.similar = Counter(
            "recsys_gateway_similar_requests",
            "Similar-item requests (GET /v1/items/{id}/similar) by HTTP status code; not in "
            "recsys_gateway_requests_total, so a rollout's analysis judges recommendations only",
            [*v, "code"],
            registry=r,
        )
        self.served_items = Counter(
            "recsys_gateway_served_items",
            "Items returned in responses (impressions)",
            v,
            registry=r,
        )
        self.events = Counter(
            "recsys_gateway_events",
            "Outcome events posted, by type",
            ["variant", "type"],
            registry=r,
        )
        self.log_dropped = Counter(
            "recsys_gateway_served_log_dropped",
            "Log entries that could not be appended",
            ["stream", "reason"],
            registry=r,
        )
        self.stats_dropped = Counter(
            "recsys_gateway_traffic_buckets_dropped",
            "Per-version traffic counter buckets dropped unwritten (Redis away too long)",
            registry=r,
        )
        self.stats_flush_failures = Counter(
            "recsys_gateway_traffic_flush_failures",
            "Writes of traffic counters or of the heartbeat that Redis did not fully take",
            registry=r,
        )
        self.routing_updates = Counter(
            "recsys_gateway_routing_updates",
            "Routing tables taken into use, by source",
            ["source"],
            registry=r,
        )
        self.index_events = Counter(
            "recsys_gateway_index_events",
            "Index loads and failures",
            ["event"],
            registry=r,
        )
        self.canary_weight = Gauge(
            "recsys_gateway_canary_weight",
            "Percentage of users routed to the canary",
            registry=r,
        )
        self.shadow_percent = Gauge(
            "recsys_gateway_shadow_percent",
            "Percentage of stable requests also run through the canary, unserved",
            registry=r,
        )
        self.shadow_runs = Counter(
            "recsys_gateway_shadow_runs",
            "Shadow runs of stable requests through the canary, by outcome "
            "(compared, fallback, error, skipped)",
            ["model_version", "outcome"],
            registry=r,
        )
        self.redis_up = Gauge(
            "recsys_gateway_redis_up", "1 when the last Redis poll succeeded", registry=r
        )
        self.index_items = Gauge(
            "recsys_gateway_index_items", "Items in each loaded index", ["index"], registry=r
        )
