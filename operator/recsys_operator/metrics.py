"""Prometheus metrics of the operator, served on ``--metrics-port``."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

RECONCILE_DURATION = Histogram(
    "recsys_operator_reconcile_duration_seconds",
    "Time one reconcile of an object took, by kind.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RECONCILE_ERRORS = Counter(
    "recsys_operator_reconcile_errors_total",
    "Reconciles that raised and were retried with backoff, by kind.",
    ["kind"],
)
OBJECTS_BY_PHASE = Gauge(
    "recsys_operator_objects",
    "Objects the operator manages, by kind and phase (ModelVersion) or readiness (others).",
    ["kind", "phase"],
)
LEADER = Gauge(
    "recsys_operator_leader",
    "1 on the replica that holds the leader lease and reconciles, 0 on standbys (always 1 "
    "without leader election).",
)
JOBS_STARTED = Counter(
    "recsys_operator_jobs_started_total",
    "Jobs the operator created, by purpose (train, index, history).",
    ["purpose"],
)
JOBS_FAILED = Counter(
    "recsys_operator_jobs_failed_total",
    "Jobs the operator saw fail, by purpose and reason.",
    ["purpose", "reason"],
)


DRIFT_SCORE = Gauge(
    "recsys_operator_drift_score",
    "Highest feature score (PSI or KL) at a Recommender's last drift check.",
    ["namespace", "recommender"],
)
DRIFT_BREACHES = Gauge(
    "recsys_operator_drift_consecutive_breaches",
    "Drift checks in a row above the threshold, by Recommender.",
    ["namespace", "recommender"],
)
DRIFT_RETRAINS = Counter(
    "recsys_operator_drift_retrains_total",
    "Retrainings drift asked for (each becomes a ModelVersion with reason Drift).",
)

ANALYSIS_CHECKS = Counter(
    "recsys_operator_analysis_checks_total",
    "Analysis checks of canaries, by verdict.",
    ["verdict"],
)
ROLLOUTS_ENDED = Counter(
    "recsys_operator_rollouts_total",
    "Rollouts that ended, by Recommender and outcome: Promoted (a version became the stable), "
    "Aborted (a canary sent back) or RolledBack (a promotion undone in its rollback window).",
    ["namespace", "recommender", "outcome"],
)
#: The rollout machine's events that end a rollout, and the outcome each one counts as.
ROLLOUT_OUTCOMES = {"Promoted": "Promoted", "RolloutAborted": "Aborted", "RolledBack": "RolledBack"}

ROUTING_PUBLISHED = Counter(
    "recsys_operator_routing_published_total",
    "Routing tables written to Redis for the gateways (only when they changed).",
)


def observe_drift(namespace: str, recommender: str, drift: Mapping[str, Any] | None) -> None:
    """Export a Recommender's last drift check (nothing before its first)."""
    if not drift or "scores" not in drift:
        return
    DRIFT_SCORE.labels(namespace, recommender).set(max(drift["scores"].values(), default=0.0))
    DRIFT_BREACHES.labels(namespace, recommender).set(drift.get("consecutiveBreaches", 0))


class FreshnessCollector(Collector):
    """``recsys_featureview_staleness_seconds`` and ``..._limit_seconds`` of every FeatureView
    whose data is live. The lag is computed at each scrape from the watermark the last
    reconcile saw, so it grows between reconciles as the data really ages (a gauge set at
    reconcile time would stand still until the next one)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._views: dict[tuple[str, str], tuple[float, float]] = {}

    def observe(
        self, namespace: str, name: str, watermark: dt.datetime | None, limit: float | None
    ) -> None:
        """Record a FeatureView's live watermark and limit; None (nothing live) drops it."""
        if watermark is None or limit is None:
            self.forget(namespace, name)
        else:
            self._views[(namespace, name)] = (watermark.timestamp(), limit)

    def forget(self, namespace: str, name: str) -> None:
        self._views.pop((namespace, name), None)

    def collect(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "recsys_featureview_staleness_seconds",
            "How far a FeatureView's live watermark lags behind now.",
            labels=["namespace", "name"],
        )
        limit = GaugeMetricFamily(
            "recsys_featureview_staleness_limit_seconds",
            "The lag past which a FeatureView is Stale (maxStaleness, or two schedule periods).",
            labels=["namespace", "name"],
        )
        now = self._clock()
        for (namespace, name), (watermark, allowed) in sorted(self._views.items()):
            lag.add_metric([namespace, name], max(0.0, now - watermark))
            limit.add_metric([namespace, name], allowed)
        yield lag
        yield limit


FRESHNESS = FreshnessCollector()
REGISTRY.register(FRESHNESS)


class PhaseTracker:
    """Keeps ``recsys_operator_objects`` true: the phase each object was last seen in."""

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str], str] = {}

    def observe(self, kind: str, key: str, phase: str | None) -> None:
        old = self._phases.pop((kind, key), None)
        if old is not None:
            OBJECTS_BY_PHASE.labels(kind, old).dec()
        if phase is not None:
            self._phases[(kind, key)] = phase
            OBJECTS_BY_PHASE.labels(kind, phase).inc()


PHASES = PhaseTracker()
