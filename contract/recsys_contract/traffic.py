"""What the gateways record of the traffic they serve, for the rollout's analysis, and how each
replica reports what it has loaded. Both live in Redis so the analysis needs no Prometheus.

Per-version counters, per time bucket
    ``GatewayKeys.stats(model_version, bucket)``: a hash of integer counters for the
    ``BUCKET_SECONDS`` starting at ``bucket`` (unix seconds, a multiple of ``BUCKET_SECONDS``).
    Every replica adds to it with ``HINCRBY``; keys expire after ``STATS_TTL_SECONDS``.
    Fields (``StatsField``): ``requests`` (recommendation requests resolved to the version),
    ``errors`` (those answered 5xx), ``fallbacks`` (answered with fallback items),
    ``impressions`` (items returned), ``lat:<i>`` (requests whose latency fell in
    ``LATENCY_BOUNDS_MS[i-1] < ms <= LATENCY_BOUNDS_MS[i]``, with ``lat:<len>`` above the last),
    and ``event:<type>`` (outcome events, e.g. ``event:click``).

    An outcome event is counted in the bucket of the *impression* that caused it, not of its
    own arrival: the request id carries the impression's time (``request_id``). It counts
    only when it came within the gateway's ``attributionWindow`` of the impression; later ones
    go to ``late:<type>``. So a bucket's CTR is final once the bucket's end plus the window has
    passed (``closed``), and the analysis judges only closed buckets.

Replica heartbeats
    ``GatewayKeys.replicas``: a hash, one field per gateway replica (its pod name), whose value
    is a ``Heartbeat`` JSON written every poll. A heartbeat older than ``HEARTBEAT_STALE_SECONDS``
    is a replica gone. The operator sends traffic to a version (a canary's first weight, a
    promotion) only after every live replica reports the version's index loaded and its Triton
    reachable.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

BUCKET_SECONDS = 10
STATS_TTL_SECONDS = 3 * 24 * 3600
HEARTBEAT_STALE_SECONDS = 10.0
#: upper bounds of the latency histogram, in milliseconds
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    1, 2.5, 5, 7.5, 10, 15, 20, 25, 30, 40, 50, 75, 100, 150, 250, 500, 1000, 2500,
)  # fmt: skip

REQUESTS, ERRORS, FALLBACKS, IMPRESSIONS = "requests", "errors", "fallbacks", "impressions"


def latency_field(ms: float) -> str:
    """The histogram field a request of ``ms`` milliseconds is counted in."""
    for i, bound in enumerate(LATENCY_BOUNDS_MS):
        if ms <= bound:
            return f"lat:{i}"
    return f"lat:{len(LATENCY_BOUNDS_MS)}"


def event_field(event_type: str) -> str:
    return f"event:{event_type}"


def late_field(event_type: str) -> str:
    return f"late:{event_type}"


def bucket_of(unix_seconds: float) -> int:
    return int(unix_seconds // BUCKET_SECONDS) * BUCKET_SECONDS


def buckets_between(start: float, end: float) -> list[int]:
    """The buckets that overlap [start, end)."""
    first, out = bucket_of(start), []
    b = first
    while b < end:
        out.append(b)
        b += BUCKET_SECONDS
    return out


def closed(bucket: int, now: float, attribution_window_s: float) -> bool:
    """Whether every event that can count toward the bucket's impressions has arrived."""
    return bucket + BUCKET_SECONDS + attribution_window_s <= now


# --- request ids ---------------------------------------------------------------------------


def request_id(random_hex: str, served_ms: int, tag: str) -> str:
    """``<random>.<served ms, base 36>-<variant tag>``: whichever replica receives an event for
    it can tell the variant and the impression's time without a lookup."""
    return f"{random_hex}.{_base36(served_ms)}-{tag}"


def served_ms_of(rid: str) -> int | None:
    """The impression time a request id carries, or None for an id without one."""
    head, _, _ = rid.rpartition("-")
    _, dot, stamp = head.rpartition(".")
    if not dot or not stamp:
        return None
    try:
        return int(stamp, 36)
    except ValueError:
        return None


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    if n <= 0:
        return "0"
    out = []
    while n:
        n, r = divmod(n, 36)
        out.append(digits[r])
    return "".join(reversed(out))


# --- reading the counters back ---------------------------------------------------------------


@dataclass
class Counts:
    """Counters of one version summed over some buckets."""

    requests: int = 0
    errors: int = 0
    fallbacks: int = 0
    impressions: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_MS) + 1))
    events: dict[str, int] = field(default_factory=dict)

    def add(self, raw: Mapping[bytes | str, bytes | str | int]) -> None:
        """Add one bucket's hash (as ``HGETALL`` returns it); unknown fields are ignored."""
        for k, v in raw.items():
            name = k.decode() if isinstance(k, bytes) else k
            n = int(v)
            if name == REQUESTS:
                self.requests += n
            elif name == ERRORS:
                self.errors += n
            elif name == FALLBACKS:
                self.fallbacks += n
            elif name == IMPRESSIONS:
                self.impressions += n
            elif name.startswith("lat:"):
                i = int(name[4:])
                if 0 <= i < len(self.latency):
                    self.latency[i] += n
            elif name.startswith("event:"):
                self.events[name[6:]] = self.events.get(name[6:], 0) + n

    @classmethod
    def of(cls, buckets: Iterable[Mapping[bytes | str, bytes | str | int]]) -> Counts:
        out = cls()
        for raw in buckets:
            out.add(raw)
        return out

    def latency_quantile_ms(self, q: float) -> float | None:
        """The upper bound of the histogram bucket holding the q-quantile (as Prometheus'
        ``histogram_quantile`` without interpolation); above the last bound, twice the last."""
        total = sum(self.latency)
        if total == 0:
            return None
        rank, seen = q * total, 0
        bounds = (*LATENCY_BOUNDS_MS, 2 * LATENCY_BOUNDS_MS[-1])
        for bound, n in zip(bounds, self.latency, strict=True):
            seen += n
            if seen >= rank:
                return bound
        return bounds[-1]


# --- heartbeats -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Heartbeat:
    """What one gateway replica last reported: when (unix seconds), the index URIs it has
    loaded, the model versions whose Triton answered its readiness probe from this replica,
    and the routing it serves (stable, canary, weight). A Deployment can be Available while
    its Service does not reach it from the gateway; the probe sees the path requests take."""

    at: float
    loaded: tuple[str, ...]
    stable: str
    canary: str | None = None
    canary_weight: int = 0
    reachable: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(
            {
                "at": self.at,
                "loaded": sorted(self.loaded),
                "stable": self.stable,
                "canary": self.canary,
                "canaryWeight": self.canary_weight,
                "reachable": sorted(self.reachable),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Heartbeat:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("a heartbeat is a JSON object")
        return cls(
            at=float(data["at"]),
            loaded=tuple(str(u) for u in data.get("loaded") or []),
            stable=str(data["stable"]),
            canary=data.get("canary"),
            canary_weight=int(data.get("canaryWeight") or 0),
            reachable=tuple(str(v) for v in data.get("reachable") or []),
        )


def live(beats: Mapping[str, Heartbeat], now: float) -> dict[str, Heartbeat]:
    return {r: b for r, b in beats.items() if now - b.at <= HEARTBEAT_STALE_SECONDS}
