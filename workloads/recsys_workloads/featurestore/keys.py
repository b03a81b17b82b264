"""The Redis key layout of the online store (pure: names and the pointer's format).

For a FeatureView ``<fv>`` under the key prefix ``<p>`` (default ``fv``)::

    <p>:<fv>:live              string  the pointer: JSON (see LivePointer) naming the layers
                                       readers use, the feature schema, TTL and watermark.
                                       Switched with one atomic SET at the end of a run.
    <p>:<fv>:v<N>:<entity>     hash    one entity's features in layer N:
                                         "t"  -> event time, µs since the epoch (decimal)
                                         "0", "1", ... -> the i-th feature of the pointer's
                                                          schema, encoded by featurestore.codec
                                       PEXPIREAT = the end of the value's TTL window
    <p>:<fv>:seq               string  INCR counter that allocates layer numbers N
    <p>:<fv>:layers            hash    N -> "writing:<µs>" while a run writes layer N,
                                       "retired:<µs>" once it left the live chain; lets the
                                       next run reclaim what a crashed or replaced run left
    <p>:<fv>:lock              string  a run's lease (token; PX), so runs never interleave

Layers make incremental runs cheap and still blue/green: a full run writes every entity into
a fresh layer and the pointer then names just ``[N]``; an incremental run writes only the
entities changed since the watermark into a fresh layer and the pointer names ``[N, ...the
previous layers]``. A reader looks an entity up in all named layers (one pipelined round trip)
and takes the value with the newest ``t``. Nothing a reader can see is ever modified in place,
so a reader during a run sees the previous pointer's complete state, and after the switch the
new one. Chains are bounded (``maxLayers``): the run that would exceed it is a full run, which
compacts.

Field names are short positional ids rather than feature names: they are repeated in every
hash, and the pointer carries the names once.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

TS_FIELD = b"t"
#: Feature view names: no glob characters (SCAN MATCH patterns are built from them) and no ':'.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
#: Key prefixes may hold ':' (a namespace such as ``team:fv``), still no glob characters.
PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9._:/-]{1,64}$")
POINTER_FORMAT = 1


def feature_field(index: int) -> bytes:
    return str(index).encode()


def pointer_key(prefix: str, feature_view: str) -> str:
    return f"{prefix}:{feature_view}:live"


def seq_key(prefix: str, feature_view: str) -> str:
    return f"{prefix}:{feature_view}:seq"


def layers_key(prefix: str, feature_view: str) -> str:
    return f"{prefix}:{feature_view}:layers"


def lock_key(prefix: str, feature_view: str) -> str:
    return f"{prefix}:{feature_view}:lock"


def layer_prefix(prefix: str, feature_view: str, layer: int) -> str:
    """Every entity key of ``layer`` starts with this (and SCAN MATCH ``<this>*`` finds them)."""
    return f"{prefix}:{feature_view}:v{layer}:"


def entity_key(prefix: str, feature_view: str, layer: int, entity: object) -> str:
    return f"{layer_prefix(prefix, feature_view, layer)}{entity}"


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
