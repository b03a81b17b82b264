"""Every Redis key of the system, and the values that more than one process reads.

The materializer writes FeatureViews, the history Job and the gateway keep a Recommender's
per-user state, the operator renders the names and prefixes into their configs: all of them
build keys here, so a FeatureView materialized under its own ``keyPrefix`` is read back under
the same one.

Names. A FeatureView is stored online as ``<namespace>.<name>`` and a Recommender's state as
``<namespace>.<name>`` (:func:`store_name`), so two teams sharing a Redis never collide.

FeatureViews, under the FeatureView's key prefix ``<p>`` (``spec.onlineStore.redis.keyPrefix``,
default ``fv``) and its stored name ``<fv>``::

    <p>:<fv>:live              string  the pointer: JSON (see LivePointer) naming the layers
                                       readers use, the feature schema, TTL and watermark.
                                       Switched with one atomic SET at the end of a run.
    <p>:<fv>:v<N>:<entity>     hash    one entity's features in layer N:
                                         "t"  -> event time, µs since the epoch (decimal)
                                         "0", "1", ... -> the i-th feature of the pointer's
                                                          schema, encoded by featurestore.codec
                                       PEXPIREAT = the end of the value's TTL window
    <p>:<fv>:seq               string  INCR counter that allocates layer numbers N
    <p>:<fv>:layers{<p>:<fv>:live}
                               hash    N -> "writing:<µs>" while a run writes layer N,
                                       "retired:<µs>" once it left the live chain; lets the
                                       next run reclaim what a crashed or replaced run left
    <p>:<fv>:lock              string  a run's lease (token; PX), so runs never interleave;
                                       a sharded run's token is its run id, which all its
                                       shards share
    <p>:<fv>:run{<p>:<fv>:live}
                               hash    the sharded run that holds the lock: run id, its layer,
                                       mode, asOf, the pointer it replaces, rows so far
    <p>:<fv>:run:done{<p>:<fv>:live}
                               set     the shard indexes of that run that have written their
                                       share; the one that completes it switches the pointer

Layers make incremental runs cheap and still blue/green: a full run writes every entity into
a fresh layer and the pointer then names just ``[N]``; an incremental run writes only the
entities changed since the watermark into a fresh layer and the pointer names ``[N, ...the
previous layers]``. A reader looks an entity up in all named layers (one pipelined round trip)
and takes the value with the newest ``t``. Nothing a reader can see is ever modified in place,
so a reader during a run sees the previous pointer's complete state, and after the switch the
new one. Chains are bounded (``maxLayers``): the run that would exceed it is a full run, which
compacts. Field names are short positional ids rather than feature names: they are repeated
in every hash, and the pointer carries the names once.

A Recommender ``<rec>``, under the Recommender's key prefix ``<p>`` (``spec.stores.redis
.keyPrefix``, default empty, written as it is: ``team-a:`` gives ``team-a:recsys:...``)::

    <p>recsys:<rec>:routing          string  the routing table (JSON, as in the gateway config's
                                             ``routing``), polled by every gateway replica
    <p>recsys:<rec>:index{<p>recsys:<rec>:routing}
                                     string  the index alias (IndexAlias): the index stable
                                             traffic follows
    <p>recsys:<rec>:served           stream  one entry per served response (log and wait)
    <p>recsys:<rec>:events           stream  one entry per posted outcome (click, purchase)
    <p>recsys:<rec>:logjoin:cursor   string  the last ``served`` id the log join has written
                                             rows for (its rows are in the logged store)
    <p>recsys:<rec>:logjoin:pending{<p>recsys:<rec>:logjoin:cursor}
                                     string  the batch a log join run is writing (JSON: the
                                             cursor it starts from, its last id, the join
                                             time, the files); a rerun replays exactly it
    <p>recsys:<rec>:seen:<user>      zset    item -> ms of the user's last interaction (also
                                             the user's history for the models)
    <p>recsys:<rec>:blocked          set     items nobody is shown
    <p>recsys:<rec>:blocked:<user>   set     items this user is not shown
    <p>recsys:<rec>:precomputed:<version>:<user>
                                     string  the user's list computed ahead by ``<version>``
                                             (PrecomputedList: version, time, items, scores);
                                             PEXPIREAT = its time + ``maxAge``

A pre-computed list is keyed by its model version, so a gateway reads only the list of the
version the user is routed to: after a promotion the previous version's lists are never read
again (and expire), whatever the pre-computation Job has or has not written yet. The list
repeats its version and time, so a reader also refuses a list that is not what its key says.

Redis Cluster. The same names serve a single Redis and a cluster (``redisCluster`` in a
config, ``mode: Cluster`` in the API). A cluster runs a command that names several keys only
when they hash to one slot, and only the part of a key between the first ``{`` and ``}`` (its
hash tag) is hashed when it has one. The operations that must be atomic over several keys, and
so must share a slot, are exactly these:

- the materializer's pointer switch, a Lua script over ``live`` and ``layers`` (the pointer
  and the book of the layers it retires, changed together), and a sharded run's join and
  finish, scripts over those two and ``run`` and ``run:done`` (the layer is booked with the
  run that writes it; the shard that completes the run is decided with the pointer's state);
- the operator's routing publish, one MULTI/EXEC (and an MGET to compare) over ``routing`` and
  ``index`` (the table and the alias stable traffic follows move together);
- the log join's advance, a Lua script over ``logjoin:cursor`` and ``logjoin:pending``.

In each group the key that other processes read every second keeps its plain name, and the
others carry that key's whole name as their hash tag (:func:`slot_of`), so they hash exactly
where it does: the pointer and the routing table keep the names a running gateway reads while
an upgrade rolls out, and no other key gains a tag. Stored names and prefixes admit no braces,
so no other key has a tag by accident.

Upgrading from the names before the tags: only the tagged keys moved. The pointer and the
routing table keep their names; the operator rewrites the alias under its new name at its first
reconcile (the comparison reads the new name); the layer book and a log join's pending batch
left under the old names are no longer read (layers keep their TTLs; a pending batch is only
there if a run was killed between its files and its cursor's advance).

Entity keys are deliberately not tagged: they spread over every node, which is the point of a
cluster, and they need no atomicity with the pointer, because a run writes them into a fresh
layer that no reader sees until the single-key SET of the pointer names it. Per-user keys
(``seen``, ``blocked:<user>``, ``precomputed``) spread the same way; every command on them names
one key. Readers batch such keys in non-transactional pipelines, which the cluster client splits
by node.

Why a Redis key for routing rather than only the ConfigMap: a mounted ConfigMap reaches a
running pod after the kubelet's sync period (about a minute), while a rollout step or a
rollback must reach every replica within seconds; one GET per replica per second is free.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

from pydantic import AfterValidator

#: The FeatureViews' key prefix when the FeatureView names none.
DEFAULT_FEATURE_PREFIX = "fv"
#: The Recommenders' key prefix when the Recommender names none.
DEFAULT_RECOMMENDER_PREFIX = ""
#: Stored names: no glob characters (SCAN MATCH patterns are built from them) and no ':'.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
#: FeatureView key prefixes may hold ':' (a namespace such as ``team:fv``), still no glob
#: characters.
PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9._:/-]{1,64}$")
#: A Recommender's key prefix: the same characters, and empty by default.
RECOMMENDER_PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9._:/-]{0,64}$")
#: A Recommender's stored name: ``<namespace>.<name>``.
RECOMMENDER_PATTERN = r"^[^.\s]+\.[^.\s]+$"

TS_FIELD = b"t"
POINTER_FORMAT = 1


def _matching(pattern: re.Pattern[str], why: str = "") -> Callable[[str], str]:
    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"must match {pattern.pattern}{why}")
        return value

    return check


#: A config field holding a stored FeatureView name, a FeatureView or a Recommender key prefix.
StoredName = Annotated[str, AfterValidator(_matching(NAME_PATTERN, " (no ':' or glob characters)"))]
FeaturePrefix = Annotated[str, AfterValidator(_matching(PREFIX_PATTERN))]
RecommenderPrefix = Annotated[str, AfterValidator(_matching(RECOMMENDER_PREFIX_PATTERN))]


def store_name(namespace: str | None, name: str) -> str:
    """The online name of a FeatureView or Recommender: namespaced, so two teams never collide."""
    return f"{namespace or 'default'}.{name}"


def feature_prefix(configured: str | None) -> str:
    """The key prefix a FeatureView's keys are written under (``keyPrefix``, or the default)."""
    return configured or DEFAULT_FEATURE_PREFIX


def recommender_prefix(configured: str | None) -> str:
    """The key prefix a Recommender's keys are written under (``keyPrefix``, or the default)."""
    return configured or DEFAULT_RECOMMENDER_PREFIX


def slot_of(key: str, anchor: str) -> str:
    """``key`` hashed to ``anchor``'s cluster slot: ``anchor`` (which has no braces) becomes its
    hash tag, so a multi-key atomic operation over both runs on a cluster (see the module doc)."""
    return f"{key}{{{anchor}}}"


def feature_field(index: int) -> bytes:
    """The hash field of the ``index``-th feature of a pointer's schema."""
    return str(index).encode()


@dataclass(frozen=True)
class FeatureViewKeys:
    """The keys of one FeatureView under one key prefix."""

    prefix: str
    view: str

    @classmethod
    def of(cls, view: str, prefix: str | None = None) -> FeatureViewKeys:
        return cls(feature_prefix(prefix), view)

    @property
    def base(self) -> str:
        return f"{self.prefix}:{self.view}"

    @property
    def live(self) -> str:
        return f"{self.base}:live"

    @property
    def seq(self) -> str:
        return f"{self.base}:seq"

    @property
    def layers(self) -> str:
        """In the pointer's slot: the switch changes both in one script."""
        return slot_of(f"{self.base}:layers", self.live)

    @property
    def lock(self) -> str:
        return f"{self.base}:lock"

    @property
    def run(self) -> str:
        """A sharded run's record, in the pointer's slot: booked with its layer in one script."""
        return slot_of(f"{self.base}:run", self.live)

    @property
    def run_done(self) -> str:
        """The shards of the run in ``run`` that have written their share (pointer's slot)."""
        return slot_of(f"{self.base}:run:done", self.live)

    def layer(self, layer: int) -> str:
        """Every entity key of ``layer`` starts with this (SCAN MATCH ``<this>*`` finds them)."""
        return f"{self.base}:v{layer}:"

    def entity(self, layer: int, entity: object) -> str:
        return f"{self.layer(layer)}{entity}"

    def entities(self, layers: Sequence[int], ids: Sequence[object]) -> list[str]:
        """The keys of ``ids`` in each of ``layers``, layer-major: ``len(layers) * len(ids)``."""
        return [self.entity(layer, e) for layer in layers for e in ids]


@dataclass(frozen=True)
class GatewayKeys:
    """The keys of one Recommender's online state (routing, logs, per-user sets)."""

    base: str

    @classmethod
    def of(cls, recommender: str, prefix: str | None = None) -> GatewayKeys:
        return cls(f"{recommender_prefix(prefix)}recsys:{recommender}")

    @property
    def routing(self) -> str:
        return f"{self.base}:routing"

    @property
    def index_alias(self) -> str:
        """In the routing table's slot: the operator publishes both in one transaction."""
        return slot_of(f"{self.base}:index", self.routing)

    @property
    def served(self) -> str:
        return f"{self.base}:served"

    @property
    def events(self) -> str:
        return f"{self.base}:events"

    @property
    def logjoin_cursor(self) -> str:
        """The log join's cursor: the last ``served`` id whose rows are written."""
        return f"{self.base}:logjoin:cursor"

    @property
    def logjoin_pending(self) -> str:
        """The batch a log join run writes, set before its files and removed with the cursor's
        advance, so a run killed in between is replayed to the same files. In the cursor's
        slot: the advance moves the cursor and removes this in one script."""
        return slot_of(f"{self.base}:logjoin:pending", self.logjoin_cursor)

    @property
    def blocked(self) -> str:
        return f"{self.base}:blocked"

    def seen(self, user_id: object) -> str:
        return f"{self.base}:seen:{user_id}"

    def blocked_for(self, user_id: object) -> str:
        return f"{self.base}:blocked:{user_id}"

    def stats(self, model_version: str, bucket: int) -> str:
        """Per-version traffic counters of one time bucket (``recsys_contract.traffic``)."""
        return f"{self.base}:stats:{model_version}:{bucket}"

    @property
    def replicas(self) -> str:
        """Each gateway replica's heartbeat (``recsys_contract.traffic.Heartbeat``)."""
        return f"{self.base}:replicas"

    def precomputed(self, model_version: str, user_id: object) -> str:
        """The list ``model_version`` computed ahead for ``user_id`` (``PrecomputedList``)."""
        return f"{self.base}:precomputed:{model_version}:{user_id}"


@dataclass(frozen=True)
class FeatureSchema:
    name: str
    type: str


@dataclass(frozen=True)
class LivePointer:
    """What readers need, switched as one value: layers newest first and how to decode them."""

    layers: list[int]
    features: list[FeatureSchema]
    join_key: str
    ttl_seconds: int
    source_uri: str
    event_timestamp_column: str
    #: Every source row with event time <= watermark (µs) has been materialized.
    watermark_us: int
    switched_at_us: int
    run: dict[str, Any] = field(default_factory=dict)
    format: int = POINTER_FORMAT
    #: The column that broke event-time ties, if any (left out of the JSON when None).
    created_timestamp_column: str | None = None

    @property
    def version(self) -> int:
        return self.layers[0]

    def to_json(self) -> bytes:
        data = asdict(self)
        if data["created_timestamp_column"] is None:
            del data["created_timestamp_column"]
        return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> LivePointer:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("format") != POINTER_FORMAT:
            raise ValueError(
                f"pointer format {data.get('format') if isinstance(data, dict) else '?'}"
            )
        data["features"] = [FeatureSchema(**f) for f in data["features"]]
        return cls(**data)

    def same_schema(self, other: LivePointer) -> bool:
        """Whether ``other`` can extend this chain (same entity, features, TTL and source,
        timestamp columns included)."""
        return (
            self.features == other.features
            and self.join_key == other.join_key
            and self.ttl_seconds == other.ttl_seconds
            and self.source_uri == other.source_uri
            and self.event_timestamp_column == other.event_timestamp_column
            and self.created_timestamp_column == other.created_timestamp_column
        )


@dataclass(frozen=True)
class IndexAlias:
    """The index stable traffic follows: its URI and the ModelVersion it was built from."""

    uri: str
    version: str | None = None

    def to_json(self) -> str:
        return json.dumps({"uri": self.uri, "version": self.version}, sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> IndexAlias:
        data = json.loads(raw)
        if not isinstance(data, dict) or not isinstance(data.get("uri"), str) or not data["uri"]:
            raise ValueError('the index alias must be JSON {"uri": "...", "version": "..."}')
        version = data.get("version")
        return cls(data["uri"], str(version) if version is not None else None)


@dataclass(frozen=True)
class PrecomputedList:
    """One user's list computed ahead: the items and ranker scores in score order, before
    the live filters and ordering rules (the gateway applies them when it serves the list),
    with the model version and the time (ms since the epoch) it was computed at."""

    model_version: str
    computed_ms: int
    items: tuple[int, ...]
    scores: tuple[float, ...]

    def to_json(self) -> bytes:
        data = {
            "v": self.model_version,
            "t": self.computed_ms,
            "items": list(self.items),
            "scores": [round(s, 6) for s in self.scores],
        }
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> PrecomputedList:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("a pre-computed list must be a JSON object")
        items, scores = data.get("items"), data.get("scores")
        if not isinstance(items, list) or not isinstance(scores, list) or len(items) != len(scores):
            raise ValueError("a pre-computed list needs items and scores of the same length")
        return cls(
            str(data["v"]), int(data["t"]), tuple(map(int, items)), tuple(map(float, scores))
        )
