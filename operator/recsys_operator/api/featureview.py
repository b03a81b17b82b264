"""FeatureView: features of one entity (users or items), from an offline parquet source to the
online store, refreshed on a schedule.

Names follow Feast (``entity``, ``joinKeys``, ``timestampField``, ``ttl``, ``dtype``) and the
Feast operator's ``cronJob`` block, so a Feast user reads a FeatureView without a guide.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from recsys_operator.api.base import ApiModel, ListMap, ListSet, Rule
from recsys_operator.api.common import (
    Conditions,
    CronJobSchedule,
    Duration,
    Identifier,
    Image,
    LocalObjectRef,
    ResourceRequirements,
    StorageUri,
    Timestamp,
)
from recsys_operator.api.formats import parse_timestamp
from recsys_operator.api.kinds import AGE, ApiObject, KindInfo, PrinterColumn
from recsys_operator.api.stores import OnlineStore

FeatureType = Literal[
    "Bool",
    "Int32",
    "Int64",
    "Float32",
    "Float64",
    "String",
    "Bytes",
    "UnixTimestamp",
    "Array(Int64)",
    "Array(Float32)",
    "Array(String)",
]


class Entity(ApiModel):
    """The thing the features describe, and the columns that identify it."""

    name: Identifier
    """Entity name, e.g. ``user`` or ``item``. A Recommender uses a FeatureView for users or
    for items; the name says which it is meant for."""
    join_keys: Annotated[list[Identifier], Field(min_length=1, max_length=4), ListSet()]
    """Columns that identify one entity (e.g. ``[user_id]``); they join the features to the
    interactions and key them in the online store."""


class FileSource(ApiModel):
    """The offline source: parquet files with one row per entity and event time."""

    __rules__ = (
        Rule(
            cel="!has(self.createdTimestampField) || "
            "self.createdTimestampField != self.timestampField",
            message="must differ from timestampField: it breaks ties between rows with the "
            "same event time; name the column of when rows were written, or remove it",
            field_path=".createdTimestampField",
            check=lambda m: m.created_timestamp_field != m.timestamp_field,
        ),
    )

    path: StorageUri
    """Parquet file or directory, any fsspec URI: ``s3://bucket/features/users/``,
    ``file:///data/users.parquet``."""
    secret_ref: LocalObjectRef | None = None
    """A Secret whose keys become environment variables of the materialization Jobs (e.g.
    ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``), the way
    ``envFrom.secretRef`` works, so an ``s3://`` source on a store that wants keys can be read.
    Unset: the Jobs get none (a ``pvc://`` or ``file://`` source, or credentials from the
    node). A Recommender's training reads the source with its own
    ``stores.artifacts.secretRef``, not this one."""
    timestamp_field: Identifier = "event_timestamp"
    """Event-time column: when each row's values became true. Materialization takes, per
    entity, the newest row at or before the run's time (never a value from the future)."""
    created_timestamp_field: Identifier | None = None
    """Optional timestamp column of when each row was written: of an entity's rows with the
    same event time, materialization keeps the one created last (a row without a value counts
    as created earliest), as Feast's ``created_timestamp_column`` does. Without it, ties go to
    the row read last (as they still do in training's point-in-time join, which does not read
    this column yet)."""


class Feature(ApiModel):
    """One typed feature: a column of the source."""

    name: Identifier
    """Column name in the source, and the feature's name in the online store."""
    dtype: FeatureType
    """Value type, in Feast's names. Arrays hold lists (e.g. genres, an embedding)."""
    description: Annotated[str, Field(max_length=1024)] | None = None
    """What the feature means, for people reading the FeatureView."""


class Backfill(ApiModel):
    """A one-off materialization over a past window, e.g. after creating the FeatureView."""

    __rules__ = (
        Rule(
            cel="!has(self.endTime) || timestamp(self.endTime) > timestamp(self.startTime)",
            message="must be after startTime: move endTime later or startTime earlier",
            field_path=".endTime",
            check=lambda m: (
                m.end_time is None or parse_timestamp(m.end_time) > parse_timestamp(m.start_time)
            ),
        ),
    )

    start_time: Timestamp
    """Start of the window (RFC 3339, e.g. ``2024-01-01T00:00:00Z``)."""
    end_time: Timestamp | None = None
    """End of the window; the time of the run when unset."""


class Materialization(ApiModel):
    """How and when features are copied from the offline source to the online store. Each
    run writes a new keyspace version and switches readers over only when it is complete."""

    cron_job: CronJobSchedule
    """The schedule of the materialization CronJob."""
    backfill: Backfill | None = None
    """A one-off run over a past window, in a Job of its own."""
    image: Image | None = None
    """Container image of the materialization Job; the operator's default when unset."""
    resources: ResourceRequirements | None = None
    """Resources of the materialization container (of each pod when ``parallelism`` > 1)."""
    parallelism: Annotated[int, Field(ge=1, le=64)] = 1
    """How many pods split one run, as the Job's ``parallelism``: above 1, each run (scheduled
    or the backfill) is an Indexed Job with ``completions`` = ``parallelism``; pod ``i`` reads
    the source and writes the entities whose join key hashes to ``i``, all into one new
    keyspace version, and readers switch over once every pod has written its share. Each pod
    holds about ``1/parallelism`` of the run's rows in memory, so ``resources`` can shrink
    with it. 1: one pod, a plain Job."""
    max_staleness: Duration | None = None
    """How far the live data's watermark may lag behind now before the FeatureView is
    ``Stale`` (``6h``). Unset: two schedule periods, i.e. stale once the second scheduled run
    after the watermark is due, so one missed run is tolerated and a second is not."""


class FeatureViewSpec(ApiModel):
    """Desired state of a FeatureView."""

    __rules__ = (
        Rule(
            cel="self.features.all(f, !(f.name in self.entity.joinKeys) && "
            "f.name != self.source.timestampField)",
            message="a feature may not reuse a join key or the timestampField column: "
            "remove it from features (join keys and event time are carried anyway)",
            field_path=".features",
            check=lambda m: all(
                f.name not in m.entity.join_keys and f.name != m.source.timestamp_field
                for f in m.features
            ),
        ),
        Rule(
            cel="!has(self.source.createdTimestampField) || "
            "self.features.all(f, f.name != self.source.createdTimestampField)",
            message="a feature may not reuse the createdTimestampField column: remove it from "
            "features or name another column as source.createdTimestampField",
            field_path=".features",
            check=lambda m: all(f.name != m.source.created_timestamp_field for f in m.features),
        ),
    )

    entity: Entity
    """The entity the features describe and its join keys."""
    source: FileSource
    """The offline parquet source."""
    features: Annotated[list[Feature], Field(min_length=1, max_length=200), ListMap(("name",))]
    """The typed features to serve; each name at most once."""
    ttl: Duration | None = None
    """How old a value may be and still be served, as a duration (``24h``). Older values are
    skipped at materialization and expire in the online store. Unset: values never expire."""
    online_store: OnlineStore
    """The online store the features are materialized into."""
    materialization: Materialization
    """Schedule and resources of materialization."""


class MaterializationRun(ApiModel):
    """What one materialization run did."""

    job_name: Annotated[str, Field(max_length=253)] | None = None
    """The Job that ran it."""
    start_time: Timestamp | None = None
    """When it started."""
    completion_time: Timestamp | None = None
    """When it finished successfully."""
    rows: Annotated[int, Field(ge=0)] | None = None
    """Entity rows written to the online store."""
    watermark: Timestamp | None = None
    """The newest event time included; the next incremental run starts after it."""
    duration_seconds: Annotated[float, Field(ge=0)] | None = None
    """Wall time of the run."""


class Staleness(ApiModel):
    """The live data's watermark and when it turns stale. The lag itself (now minus the
    watermark) grows every second, so status does not hold it: the metric
    ``recsys_featureview_staleness_seconds`` does, computed at each scrape."""

    watermark: Timestamp
    """Every source row with event time at or before it is live."""
    limit_seconds: Annotated[float, Field(ge=0)]
    """How far the watermark may lag: ``maxStaleness``, or two schedule periods."""
    stale_after: Timestamp
    """When the FeatureView turns ``Stale`` unless a newer run makes data live first."""


class FeatureViewStatus(ApiModel):
    """Observed state of a FeatureView, written by the operator."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The ``metadata.generation`` this status describes."""
    conditions: Conditions | None = None
    """Ready (a run has made data live and the last run did not fail), Stale (the live
    watermark lags past ``maxStaleness``; Unknown until data is live), Materialized (a keyspace
    is live), Progressing, Degraded (the last run failed; the previous keyspace keeps
    serving)."""
    last_materialization: MaterializationRun | None = None
    """The newest successful run, scheduled or the backfill: the one whose keyspace is live."""
    last_backfill: MaterializationRun | None = None
    """The backfill run, once it finished."""
    keyspace_version: Annotated[int, Field(ge=0)] | None = None
    """Version of the keyspace readers are switched to (blue/green: each run writes a new
    one)."""
    live_keyspace: Annotated[str, Field(max_length=512)] | None = None
    """Redis key prefix of the live keyspace version."""
    staleness: Staleness | None = None
    """How fresh the live data is, once a run has made data live."""


class FeatureView(ApiObject):
    """A FeatureView object as stored by the apiserver."""

    kind: Literal["FeatureView"] = "FeatureView"
    spec: FeatureViewSpec
    status: FeatureViewStatus | None = None


FEATURE_VIEW = KindInfo(
    kind="FeatureView",
    plural="featureviews",
    singular="featureview",
    short_names=("fv",),
    description="FeatureView: typed features of one entity (users or items), materialized from "
    "an offline parquet source into the online store (Redis) on a schedule, blue/green so "
    "serving never reads a half-written keyspace.",
    object_model=FeatureView,
    spec_model=FeatureViewSpec,
    status_model=FeatureViewStatus,
    printer_columns=(
        PrinterColumn(
            "Ready", "string", '.status.conditions[?(@.type=="Ready")].status',
            "Whether features are being served.",
        ),
        PrinterColumn(
            "Stale", "string", '.status.conditions[?(@.type=="Stale")].status',
            "Whether the live data lags past its limit.",
        ),
        PrinterColumn(
            "Last materialized", "date", ".status.lastMaterialization.completionTime",
            "When the last materialization run finished.",
        ),
        PrinterColumn(
            "Rows", "integer", ".status.lastMaterialization.rows",
            "Entity rows the last run wrote.",
        ),
        PrinterColumn(
            "Schedule", "string", ".spec.materialization.cronJob.schedule",
            "Materialization schedule.", priority=1,
        ),
        AGE,
    ),
)  # fmt: skip
