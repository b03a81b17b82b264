"""The gateway's config (rendered from a Recommender and its FeatureViews) and routing table.

Example (``recommender``, ``routing`` and ``redisUrl`` are required)::

    {
      "recommender": "shop.movies",
      "routing": {
        "stable": {"modelVersion": "movies-v1", "triton": "movies-triton-movies-v1.shop.svc:8000",
                   "index": "s3://recsys/movies/indexes/movies-v1"},
        "canary": {"modelVersion": "movies-v2", "triton": "movies-triton-movies-v2.shop.svc:8000",
                   "index": "s3://recsys/movies/indexes/movies-v2"},
        "canaryWeight": 10,
        "shadowPercent": 0,
        "userSticky": true
      },
      "redisUrl": "redis://redis.shop.svc:6379/0",
      "keyPrefix": "",
      "featureViews": {"user": [{"name": "shop.users", "keyPrefix": "fv"}],
                       "item": [{"name": "shop.items", "keyPrefix": "team-a"}]},
      "candidates": 200,
      "topK": 20,
      "scoringTimeout": "50ms",
      "maxInFlight": 64,
      "filtering": {"excludeSeen": true, "seenWindow": "720h", "excludeBlocked": true,
                    "itemSelector": {"matchExpressions": [{"key": "in_stock", "operator": "In",
                                                           "values": ["true"]}]}},
      "ordering": {"boosts": [{"name": "new", "matchExpressions": [...], "factor": 1.2}],
                   "diversity": {"key": "genres", "maxPerValue": 3}},
      "precomputed": {"maxAge": "2h"}
    }

``routing`` here is the table the gateway starts from; a table in Redis (``keys.routing``,
written with ``control.publish_routing``), which the gateway polls every ``pollInterval``,
wins when present (a mounted ConfigMap reaches a running pod only after the kubelet's sync,
about a minute). The operator renders the ConfigMap; it does not write Redis yet.
``featureViews`` name FeatureViews as they are stored online (``keyspace.store_name``), each
with the key prefix it was materialized under (the FeatureView's ``keyPrefix``; the operator
always renders it), so the gateway reads the keys the materializer wrote (``keyspace``).
Durations are Go-style (``50ms``, ``1s``, ``720h``). The Redis password comes from
``$REDIS_PASSWORD``, never from here.

A variant without ``triton`` (Batch mode) is served from ``precomputed`` lists alone: the
gateway then never calls Triton for it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from recsys_contract.base import ConfigSection
from recsys_contract.formats import duration, parse_duration, redis_url_without_password
from recsys_contract.keyspace import (
    DEFAULT_FEATURE_PREFIX,
    DEFAULT_RECOMMENDER_PREFIX,
    FeaturePrefix,
    FeatureViewKeys,
    GatewayKeys,
    RecommenderPrefix,
)


class Variant(ConfigSection):
    model_version: str = Field(min_length=1)
    #: ``host:port`` of the Triton HTTP endpoint serving this version's models; none in
    #: Batch mode (``spec.serving.precompute.mode``): the version is served from stored lists
    #: only, and popular items to a user without one (``precomputed`` must be set)
    triton: str | None = Field(default=None, min_length=1)
    #: URI of this version's ANN index (stable traffic follows the alias when it matches)
    index: str | None = None


class RoutingTable(ConfigSection):
    stable: Variant
    canary: Variant | None = None
    canary_weight: int = Field(default=0, ge=0, le=100)
    user_sticky: bool = True
    #: a version kept loaded but not served: the previous stable inside its rollback window
    #: (so a rollback is a routing change), or the version about to become stable (so it is
    #: loaded on every replica before any request reaches it)
    standby: Variant | None = None
    #: percent of the stable's requests also run through the canary in the background
    #: (mirroring): the canary's answer is never served, only compared with the stable's
    #: (``recsys_contract.traffic``'s ``shadow:*`` counters). Users the weight sends to the
    #: canary are not shadowed, so a shadow-only phase is a canary with ``canaryWeight`` 0
    shadow_percent: int = Field(default=0, ge=0, le=100)

    @model_validator(mode="after")
    def _weight_needs_canary(self) -> RoutingTable:
        if self.canary_weight and self.canary is None:
            raise ValueError("canaryWeight is above 0 but no canary variant is given")
        if self.shadow_percent and self.canary is None:
            raise ValueError("shadowPercent is above 0 but no canary variant is given")
        return self


MatchOperator = Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]


class MatchExpression(ConfigSection):
    key: str = Field(min_length=1)
    operator: MatchOperator
    values: list[str] | None = None

    @model_validator(mode="after")
    def _values_fit_operator(self) -> MatchExpression:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"{self.operator} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"{self.operator} takes no values")
        if self.operator in ("Gt", "Lt"):
            if not self.values or len(self.values) != 1:
                raise ValueError(f"{self.operator} takes exactly one numeric value")
            try:
                float(self.values[0])
            except ValueError as exc:
                raise ValueError(
                    f"{self.operator} value {self.values[0]!r} is not a number"
                ) from exc
        return self


class ItemSelector(ConfigSection):
    match_expressions: list[MatchExpression] = Field(min_length=1)


class Filtering(ConfigSection):
    exclude_seen: bool = True
    seen_window: str | None = None
    exclude_blocked: bool = True
    item_selector: ItemSelector | None = None

    @field_validator("seen_window")
    @classmethod
    def _window(cls, value: str | None) -> str | None:
        return value if value is None else duration(value)


class Boost(ConfigSection):
    name: str = Field(min_length=1)
    match_expressions: list[MatchExpression] = Field(min_length=1)
    factor: float = Field(gt=0, le=100)


class Diversity(ConfigSection):
    key: str = Field(min_length=1)
    max_per_value: int = Field(ge=1, le=1000)


class Ordering(ConfigSection):
    boosts: list[Boost] | None = None
    diversity: Diversity | None = None


class Precomputed(ConfigSection):
    """Lists computed ahead (``recsys_workloads.precompute``), served before live computation:
    only a list of the user's variant's version, no older than ``maxAge``, and only when at
    least k of its items pass the live filters."""

    max_age: str = "24h"

    @field_validator("max_age")
    @classmethod
    def _max_age(cls, value: str) -> str:
        return duration(value)

    @property
    def max_age_s(self) -> float:
        return parse_duration(self.max_age)


class FeatureViewRef(ConfigSection):
    name: str = Field(min_length=1)
    #: the prefix the FeatureView was materialized under (its ``keyPrefix``)
    key_prefix: FeaturePrefix = DEFAULT_FEATURE_PREFIX
    #: features to read; all of the view's when unset
    features: list[str] | None = None

    @property
    def keys(self) -> FeatureViewKeys:
        return FeatureViewKeys.of(self.name, self.key_prefix)


class FeatureViews(ConfigSection):
    user: list[FeatureViewRef] = Field(default_factory=list)
    item: list[FeatureViewRef] = Field(default_factory=list)


class GatewayConfig(ConfigSection):
    recommender: str = Field(min_length=1)
    routing: RoutingTable
    redis_url: str = Field(min_length=1)
    #: the URL names one node of a Redis Cluster (``mode: Cluster``); the client finds the rest
    redis_cluster: bool = False
    #: the Recommender's key prefix (``keyspace.GatewayKeys``)
    key_prefix: RecommenderPrefix = DEFAULT_RECOMMENDER_PREFIX
    feature_views: FeatureViews = Field(default_factory=FeatureViews)
    candidates: int = Field(default=200, ge=1, le=10_000)
    top_k: int = Field(default=20, ge=1, le=1000)
    scoring_timeout: str = "50ms"
    filtering: Filtering = Field(default_factory=Filtering)
    ordering: Ordering = Field(default_factory=Ordering)
    #: recent items sent to the models as the user's history (they keep what they were
    #: trained with, ``historyLength``); 0 sends none
    history_items: int = Field(default=100, ge=0, le=1000)
    #: how often the routing table and the index alias are read from Redis
    poll_interval: str = "1s"
    #: socket timeout of every Redis call; past it the request is answered 503
    redis_timeout: str = "250ms"
    #: how long item features read for ordering rules are reused
    item_cache_ttl: str = "60s"
    #: approximate cap on the served-response stream (XADD MAXLEN ~)
    served_log_max_len: int = Field(default=1_000_000, ge=1000)
    #: recommendation requests handled at once; past it a request is answered 503 at once
    #: (``Retry-After``) instead of queueing behind the others: when the gateway's one core
    #: is saturated, queueing makes every request late, shedding keeps the admitted ones
    #: fast (KServe's ``containerConcurrency``, per replica). 0: no limit
    max_in_flight: int = Field(default=64, ge=0, le=100_000)
    #: an outcome event counts toward its impression only when it comes within this long of
    #: it (``recsys_contract.traffic``); later ones are counted apart as late
    attribution_window: str = "30m"
    #: fsspec options for reading index and model artifacts
    storage_options: dict[str, Any] = Field(default_factory=dict)
    #: serve lists computed ahead (``keyspace.PrecomputedList``); none read when unset
    precomputed: Precomputed | None = None

    @field_validator(
        "scoring_timeout", "poll_interval", "redis_timeout", "item_cache_ttl", "attribution_window"
    )
    @classmethod
    def _durations(cls, value: str) -> str:
        return duration(value)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, url: str) -> str:
        return redis_url_without_password(url, ("redis://", "rediss://", "unix://"))

    @property
    def keys(self) -> GatewayKeys:
        return GatewayKeys.of(self.recommender, self.key_prefix)

    @model_validator(mode="after")
    def _rules_need_item_features(self) -> GatewayConfig:
        keys = rule_feature_keys(self)
        if keys and not self.feature_views.item:
            raise ValueError(
                f"filtering/ordering rules test item features {sorted(keys)} but "
                "featureViews.item names no FeatureView to read them from; add one"
            )
        variants = (self.routing.stable, self.routing.canary, self.routing.standby)
        if self.precomputed is None and any(v and v.triton is None for v in variants):
            raise ValueError(
                "a routing variant has no triton: it can be served only from stored lists; "
                "set precomputed"
            )
        if self.top_k > self.candidates:
            raise ValueError(
                f"topK ({self.top_k}) exceeds candidates ({self.candidates}); raise candidates"
            )
        return self

    @property
    def scoring_timeout_s(self) -> float:
        return parse_duration(self.scoring_timeout)

    @property
    def poll_interval_s(self) -> float:
        return parse_duration(self.poll_interval)

    @property
    def attribution_window_s(self) -> float:
        return parse_duration(self.attribution_window)

    @property
    def redis_timeout_s(self) -> float:
        return parse_duration(self.redis_timeout)

    @property
    def item_cache_ttl_s(self) -> float:
        return parse_duration(self.item_cache_ttl)

    @property
    def seen_window_s(self) -> float | None:
        w = self.filtering.seen_window
        return parse_duration(w) if w else None


def rule_feature_keys(cfg: GatewayConfig) -> set[str]:
    """Item features that filtering and ordering rules read."""
    keys: set[str] = set()
    if cfg.filtering.item_selector:
        keys |= {m.key for m in cfg.filtering.item_selector.match_expressions}
    for boost in cfg.ordering.boosts or []:
        keys |= {m.key for m in boost.match_expressions}
    if cfg.ordering.diversity:
        keys.add(cfg.ordering.diversity.key)
    return keys
