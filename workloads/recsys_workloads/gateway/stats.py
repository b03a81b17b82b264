"""The gateway's share of the per-version traffic counters (``recsys_contract.traffic``).

Counting a request must not cost it a Redis round trip, so requests are counted in memory,
per (model version, bucket), and the poll loop writes what piled up with one pipeline of
``HINCRBY`` (and an ``EXPIRE`` per hash). An increment Redis did not apply stays pending for
the next flush, so an outage delays the counters instead of losing them; the pending buckets
are bounded, the oldest dropped first (counted), so a long outage cannot grow the gateway's
memory without limit. A connection that breaks after the pipeline was sent leaves it unknown
what Redis applied; those increments are kept too, so they may count twice: a rare double
count skews a bucket's ratios less than losing the bucket would.

Outcome events are not counted here: they already cost a round trip (their ``XADD``), and their
counters go in that same pipeline (``event_increments``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from recsys_contract import traffic
from recsys_contract.gateway import RoutingTable
from recsys_contract.keyspace import GatewayKeys
from recsys_workloads.gateway.served_log import EventRecord

MAX_PENDING_BUCKETS = 360

StatsKey = tuple[str, int]  # (model version, bucket)


@dataclass(frozen=True)
class Increment:
    model_version: str
    bucket: int
    field: str
    n: int


class TrafficStats:
    def __init__(
        self,
        keys: GatewayKeys,
        on_drop: Callable[[int], None],
        max_pending: int = MAX_PENDING_BUCKETS,
    ) -> None:
        self.keys = keys
        self.on_drop = on_drop
        self.max_pending = max_pending
        self.pending: dict[StatsKey, Counter[str]] = {}

    def request(
        self,
        model_version: str,
        served_ms: int,
        latency_ms: float,
        *,
        error: bool = False,
        fallback: bool = False,
        impressions: int = 0,
    ) -> None:
        """Count one recommendation request in the bucket of its impression time (the time its
        request id carries, so its outcome events land in the same bucket)."""
        counts = self._counts(model_version, served_ms)
        counts[traffic.REQUESTS] += 1
        counts[traffic.latency_field(latency_ms)] += 1
        if error:
            counts[traffic.ERRORS] += 1
        if fallback:
            counts[traffic.FALLBACKS] += 1
        if impressions:
            counts[traffic.IMPRESSIONS] += impressions

    def add(self, model_version: str, served_ms: int, fields: Mapping[str, int]) -> None:
        """Add any fields (a shadow run's) to the bucket of the impression at ``served_ms``."""
        counts = self._counts(model_version, served_ms)
        counts.update(fields)

    def _counts(self, model_version: str, served_ms: int) -> Counter[str]:
        key = (model_version, traffic.bucket_of(served_ms / 1000))
        counts = self.pending.get(key)
        if counts is None:
            counts = self.pending[key] = Counter()
            self._bound()
        return counts

    def queue(self, pipe: Any) -> list[Increment | None]:
        """Move every pending count into ``pipe``; the list says what each queued command
        carries (None for an ``EXPIRE``), for ``settle`` or ``restore``."""
        taken, self.pending = self.pending, {}
        ops: list[Increment | None] = []
        for (version, bucket), counts in taken.items():
            key = self.keys.stats(version, bucket)
            for name, n in counts.items():
                if n:
                    pipe.hincrby(key, name, n)
                    ops.append(Increment(version, bucket, name, n))
            pipe.expire(key, traffic.STATS_TTL_SECONDS)
            ops.append(None)
        return ops

    def settle(self, ops: Sequence[Increment | None], replies: Sequence[Any]) -> int:
        """Keep the increments whose command Redis refused (``execute(raise_on_error=False)``
        puts the error in its reply); returns how many were refused."""
        refused = [op for op, reply in zip(ops, replies, strict=True) if _refused(op, reply)]
        self.restore(refused)
        return len(refused)

    def restore(self, ops: Iterable[Increment | None]) -> None:
        """Put increments back for the next flush (the flush that carried them failed)."""
        for op in ops:
            if op is None:
                continue
            key = (op.model_version, op.bucket)
            counts = self.pending.get(key)
            if counts is None:
                counts = self.pending[key] = Counter()
            counts[op.field] += op.n
        self._bound()

    def _bound(self) -> None:
        extra = len(self.pending) - self.max_pending
        if extra <= 0:
            return
        for key in sorted(self.pending, key=lambda k: k[1])[:extra]:
            del self.pending[key]
        self.on_drop(extra)


def _refused(op: Increment | None, reply: Any) -> bool:
    return op is not None and isinstance(reply, Exception)


def version_of_tag(table: RoutingTable, tag: str) -> str:
    """The model version an event's variant tag is credited to, by the current table: a
    canary tag goes to the canary, or to the stable once there is no canary any more."""
    if tag == "c" and table.canary is not None:
        return table.canary.model_version
    return table.stable.model_version


def event_increments(
    events: Iterable[EventRecord], table: RoutingTable, attribution_window_s: float
) -> Counter[tuple[str, int, str]]:
    """(model version, bucket, field) -> n for the events whose request id carries the
    impression's time; an event later than the window after it counts as late."""
    out: Counter[tuple[str, int, str]] = Counter()
    window_ms = attribution_window_s * 1000
    for e in events:
        served = traffic.served_ms_of(e.request_id)
        if served is None:
            continue
        tag = e.request_id.rpartition("-")[2]
        field = (
            traffic.event_field(e.type)
            if e.ts_ms - served <= window_ms
            else traffic.late_field(e.type)
        )
        out[(version_of_tag(table, tag), traffic.bucket_of(served / 1000), field)] += 1
    return out
