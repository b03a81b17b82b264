"""Shadow traffic (mirroring): a sample of the stable's requests run again through the canary.

A canary's first users are real users, so a bad canary costs them until its analysis
notices. A shadow run costs nobody: the routing table's ``shadowPercent`` of the requests the
stable served are replayed through the canary's four stages in the background, and only how
its answer compares with the served one (``recsys_contract.traffic.ranking_agreement``) and
how long it took are kept, in the canary's counters. So the rollout can see a canary's
errors, latency and how far it departs from the stable before, or without, giving it any
traffic.

A shadow run never touches what is served. It starts after the stable's response is
produced, as a task of its own: aiohttp hands the returned response to the transport before
the event loop runs another task (unless the socket is backed up), so the shadow's work
comes after the response is on its way and adds nothing to its latency. It is
not logged to the served stream (no impression was made, so no event can follow it) and not
counted in the canary's request, impression or latency counters, which judge what users
received. Users the weight sends to the canary are not shadowed: they already get its answer.

The gateway's core is shared with real traffic, so the number of shadow runs at once is
bounded (``shadow_concurrency``); a sampled request over the bound is skipped and counted as
such, so a low ``shadow:requests`` under load is told apart from a low sample.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter

from recsys_contract import traffic
from recsys_workloads.gateway.metrics import GatewayMetrics
from recsys_workloads.gateway.pipeline import (
    Recommendation,
    RecommendationService,
    ResolvedVariant,
)
from recsys_workloads.gateway.stats import TrafficStats

log = logging.getLogger("recsys_workloads.gateway.shadow")

#: shadow runs at once when ``maxInFlight`` sets no limit
UNLIMITED_SHADOW_CONCURRENCY = 16


def shadow_concurrency(max_in_flight: int) -> int:
    """At most a quarter of the requests the gateway admits at once, and at least one."""
    if max_in_flight <= 0:
        return UNLIMITED_SHADOW_CONCURRENCY
    return max(1, max_in_flight // 4)


def shadow_fields(
    served: Recommendation, shadow: Recommendation | None, k: int, latency_ms: float
) -> Counter[str]:
    """The canary's counters for one shadow run; ``shadow`` None: the run raised. Answers
    are compared only when both came from their models: a fallback list says nothing of how a
    model ranks."""
    out: Counter[str] = Counter()
    out[traffic.SHADOW_REQUESTS] = 1
    out[traffic.shadow_latency_field(latency_ms)] = 1
    if shadow is None or shadow.fallback is not None:
        out[traffic.SHADOW_ERRORS] = 1
        return out
    if served.fallback is not None:
        return out
    agreement = traffic.ranking_agreement(
        [s.item_id for s in served.items], [s.item_id for s in shadow.items], k
    )
    if agreement.overlap is not None:
        out[traffic.SHADOW_COMPARED] = 1
        out[traffic.SHADOW_OVERLAP] = traffic.to_ppm(agreement.overlap)
    if agreement.rank is not None:
        out[traffic.SHADOW_RANKED] = 1
        out[traffic.SHADOW_RANK] = traffic.to_ppm(agreement.rank)
    return out


def _outcome(fields: Counter[str], shadow: Recommendation | None) -> str:
    if shadow is None:
        return "error"
    if shadow.fallback is not None:
        return "fallback"
    return "compared" if fields[traffic.SHADOW_COMPARED] else "uncompared"


class ShadowRunner:
    def __init__(
        self,
        service: RecommendationService,
        stats: TrafficStats,
        metrics: GatewayMetrics,
        concurrency: int,
        rng: random.Random | None = None,
    ) -> None:
        self.service = service
        self.stats = stats
        self.metrics = metrics
        self.concurrency = concurrency
        self.rng = rng or random.Random()
        self.running: set[asyncio.Task[None]] = set()

    def offer(self, served: Recommendation, k: int) -> bool:
        """Start a shadow run of a served response when the table's sample picks it; whether
        one was started."""
        table = self.service.routing.table
        if served.variant.name != "stable" or table.canary is None or table.shadow_percent <= 0:
            return False
        if self.rng.random() * 100 >= table.shadow_percent:
            return False
        canary = self.service.variant("canary")
        if canary is None:  # its index is still loading
            return False
        if len(self.running) >= self.concurrency:
            self.stats.add(canary.model_version, served.served_ms, {traffic.SHADOW_SKIPPED: 1})
            self.metrics.shadow_runs.labels(canary.model_version, "skipped").inc()
            return False
        task = asyncio.create_task(self._run(canary, served, k))
        self.running.add(task)
        task.add_done_callback(self.running.discard)
        return True

    async def _run(self, canary: ResolvedVariant, served: Recommendation, k: int) -> None:
        started = time.perf_counter()
        shadow: Recommendation | None
        try:
            shadow = await self.service.run_stages(
                canary, served.user_id, k, served.served_ms, stored=False
            )
        except Exception as exc:  # a shadow's failure is the canary's, counted, never raised
            log.debug(
                "shadow run for user %s on %s failed: %r", served.user_id, canary.model_version, exc
            )
            shadow = None
        latency_ms = (
            shadow.timings_ms["total"]
            if shadow is not None
            else (time.perf_counter() - started) * 1000
        )
        fields = shadow_fields(served, shadow, k, latency_ms)
        self.stats.add(canary.model_version, served.served_ms, fields)
        self.metrics.shadow_runs.labels(canary.model_version, _outcome(fields, shadow)).inc()

    async def drain(self) -> None:
        """Wait for the shadow runs started so far."""
        while self.running:
            await asyncio.gather(*list(self.running), return_exceptions=True)

    async def close(self) -> None:
        """Stop the shadow runs still going (they are only samples)."""
        for task in list(self.running):
            task.cancel()
        await asyncio.gather(*list(self.running), return_exceptions=True)
