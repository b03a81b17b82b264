"""The materialization Job's config (rendered from a FeatureView) and its summary.

Config (camelCase, unknown fields refused)::

    {
      "featureView": "movies.users",          # keyspace.store_name: [A-Za-z0-9._/-]
      "joinKey": "user_id",                    # int or string column
      "source": {
        "uri": "s3://bucket/movies/users.parquet",   # file or directory, any fsspec URI
        "eventTimestampColumn": "event_timestamp",   # timestamp column (naive = UTC)
        "createdTimestampColumn": "created",         # optional: breaks event-time ties
        "storageOptions": {}                          # passed to fsspec (endpoint, ...)
      },
      "features": [{"name": "age", "type": "int32"}, {"name": "gender", "type": "string"}],
      "ttlSeconds": 86400,                     # 0: values never expire
      "onlineStore": {"redisUrl": "redis://redis:6379/0", "keyPrefix": "fv"},  # prefix may hold ':'
      "asOf": "2024-05-01T00:00:00Z",          # default: now
      "mode": "auto",                          # "auto" (incremental when possible) | "full"
      "maxLayers": 8,                          # incremental layers before a compacting full run
      "graceSeconds": 300,                     # how long a replaced version stays readable
      "batchRows": 50000,                      # entities per pipelined batch
      "lockLeaseSeconds": 600,
      "shards": 1                              # pods splitting one run (an Indexed Job)
    }

With ``shards`` above 1, the run is split over that many pods of one Indexed Job. Each pod
reads its shard's index from ``$JOB_COMPLETION_INDEX`` (Kubernetes sets it) and the run's id,
common to every pod of the Job and to no other Job, from ``$RECSYS_RUN_ID`` (the operator maps
the Job's ``controller-uid`` label into it): see ``recsys_workloads.materialize``.

The Redis password comes from ``$REDIS_PASSWORD`` (a Secret), never from the config: a URL
with a password is refused. The keys are :class:`recsys_contract.keyspace.FeatureViewKeys`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from pydantic import Field, field_validator, model_validator

from recsys_contract.base import ConfigSection, RedisConnection, Summary
from recsys_contract.keyspace import (
    DEFAULT_FEATURE_PREFIX,
    FeaturePrefix,
    FeatureSchema,
    FeatureViewKeys,
    StoredName,
)

#: How a feature is encoded online (``recsys_workloads.featurestore.codec``).
FeatureType = Literal[
    "int32", "int64", "float32", "float64", "bool", "string", "string_list", "float_list"
]
FEATURE_TYPES: tuple[str, ...] = get_args(FeatureType)


class SourceConfig(ConfigSection):
    uri: str = Field(min_length=1)
    event_timestamp_column: str = Field(default="event_timestamp", min_length=1)
    storage_options: dict[str, Any] = Field(default_factory=dict)
    created_timestamp_column: str | None = Field(default=None, min_length=1)


class FeatureConfig(ConfigSection):
    name: str = Field(min_length=1)
    type: FeatureType


class OnlineStoreConfig(RedisConnection):
    #: the FeatureView's ``keyPrefix``
    key_prefix: FeaturePrefix = DEFAULT_FEATURE_PREFIX


class MaterializeConfig(ConfigSection):
    feature_view: StoredName
    join_key: str = Field(min_length=1)
    source: SourceConfig
    features: list[FeatureConfig] = Field(min_length=1)
    ttl_seconds: int = Field(default=0, ge=0)
    online_store: OnlineStoreConfig
    as_of: datetime | None = None
    mode: Literal["auto", "full"] = "auto"
    max_layers: int = Field(default=8, ge=1, le=64)
    grace_seconds: int = Field(default=300, ge=0)
    batch_rows: int = Field(default=50_000, ge=1, le=1_000_000)
    lock_lease_seconds: int = Field(default=600, ge=1)
    #: pods of one Indexed Job that split the run by a hash of the join key (1: not split)
    shards: int = Field(default=1, ge=1, le=64)

    @field_validator("as_of")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must carry a UTC offset, e.g. 2024-05-01T00:00:00Z")
        return value

    @model_validator(mode="after")
    def _distinct_columns(self) -> MaterializeConfig:
        names = [f.name for f in self.features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"features: duplicate names {duplicates}")
        for reserved in (self.join_key, self.source.event_timestamp_column):
            if reserved in names:
                raise ValueError(f"features: {reserved!r} is the join key or event-time column")
        created = self.source.created_timestamp_column
        if created is not None and created in (*names, self.join_key):
            raise ValueError(
                f"source.createdTimestampColumn: {created!r} is a feature or the join key"
            )
        if created == self.source.event_timestamp_column:
            raise ValueError(
                "source.createdTimestampColumn: must differ from eventTimestampColumn (it "
                "breaks ties between rows with the same event time)"
            )
        return self

    @property
    def keys(self) -> FeatureViewKeys:
        return FeatureViewKeys.of(self.feature_view, self.online_store.key_prefix)

    @property
    def feature_schema(self) -> list[FeatureSchema]:
        return [FeatureSchema(f.name, f.type) for f in self.features]


#: Set by Kubernetes in every pod of an Indexed Job: the pod's index, here its shard.
SHARD_INDEX_ENV = "JOB_COMPLETION_INDEX"
#: The id of one sharded run, the same in every pod of its Job (the Job's UID).
RUN_ID_ENV = "RECSYS_RUN_ID"
#: The pod label the Job controller sets to the Job's UID, which the operator maps into
#: ``RUN_ID_ENV`` with the downward API: unlike the Job's name, a Job deleted and created again
#: under the same name gets a new one, so its pods never take the old run for theirs.
RUN_ID_LABEL = "batch.kubernetes.io/controller-uid"


class MaterializeSummary(Summary):
    """What a materialization run reports; the FeatureView's status is made of it."""

    feature_view: str
    mode: Literal["full", "incremental"]
    mode_reason: str
    as_of: str
    #: every source row with event time at or before it is materialized (RFC 3339)
    watermark: str
    rows_read: int
    entities_written: int
    read_seconds: float
    write_seconds: float
    #: entities per second of the write phase; of a split run, over the switching shard's
    #: whole run (its shards write at once, so no one shard's write phase is the run's)
    rows_per_second: int
    #: the live layer (the keyspace version) after the run; None when nothing is live
    version: int | None = None
    layers: list[int] = Field(default_factory=list)
    retired_layers: list[int] = Field(default_factory=list)
    reclaimed_layers: list[int] = Field(default_factory=list)
    retire_seconds: float | None = None
    duration_seconds: float | None = None
    #: the new version is live, but the replaced layers could not be expired (a later run will)
    retire_error: str | None = None
    #: a sharded run: how many pods split it (rows and entities above are all of theirs)
    shards: int | None = None
