"""FeatureView -> its rendered config (ConfigMap), materialization CronJob, backfill Job, status.

The materializer's config is rendered from the spec here, so the pod needs no access to the
API; the Redis password reaches it from the user's Secret as an environment variable.

Freshness (:func:`freshness`) is decided here once, for the FeatureView's ``Stale`` condition
and metric, for the Recommender's view of the FeatureViews it reads, and for the rollout's
feature gate. It measures the live data's watermark (every source row with event time at or
before it is live), not when a run finished: a backfill that ended minutes ago over a window
that closed last year serves last year's data.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from croniter import croniter

from recsys_contract.formats import parse_duration
from recsys_contract.keyspace import feature_prefix, store_name
from recsys_contract.materialize import (
    RUN_ID_ENV,
    RUN_ID_LABEL,
    FeatureConfig,
    FeatureType,
    MaterializeConfig,
    MaterializeSummary,
    OnlineStoreConfig,
    SourceConfig,
)
from recsys_operator.api.featureview import FeatureView, FeatureViewSpec, FeatureViewStatus
from recsys_operator.api.formats import parse_timestamp
from recsys_operator.conditions import Status, set_condition
from recsys_operator.labels import standard_labels
from recsys_operator.naming import child_name, short_hash
from recsys_operator.planning import EventSpec
from recsys_operator.planning.jobstatus import JobOutcome
from recsys_operator.planning.pods import (
    claims_in,
    mount_claims,
    object_meta,
    pod_failure_policy,
    redis_cluster,
    redis_password_env,
    secret_env_from,
    workload_config_map,
    workload_container,
    workload_pod_spec,
)

MATERIALIZE_MODULE = "recsys_workloads.materialize"

#: API feature types -> the materializer's encodings. Types missing here cannot be served yet.
FEATURE_TYPES: dict[str, FeatureType] = {
    "Int32": "int32",
    "Int64": "int64",
    "Float32": "float32",
    "Float64": "float64",
    "Bool": "bool",
    "String": "string",
    "Array(String)": "string_list",
    "Array(Float32)": "float_list",
}


class SpecError(ValueError):
    """The spec passed the schema but asks for something the workloads cannot do."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class FeatureViewPlan:
    config_map: dict[str, Any]
    cron_job: dict[str, Any]
    #: A backfill Job and its own ConfigMap (its config pins the window), or neither.
    backfill_config_map: dict[str, Any] | None
    backfill_job: dict[str, Any] | None


def store_view_name(fv: FeatureView) -> str:
    """The FeatureView's name in the online store: namespaced, so two teams never collide."""
    return store_name(fv.metadata.namespace, fv.metadata.name)


def key_prefix(fv: FeatureView) -> str:
    """The prefix of the FeatureView's keys: the materializer writes and the gateway reads them
    under it."""
    return feature_prefix(fv.spec.online_store.redis.key_prefix)


def materialize_config(fv: FeatureView, *, as_of: str | None = None) -> MaterializeConfig:
    spec = fv.spec
    m = spec.materialization
    if len(spec.entity.join_keys) != 1:
        raise SpecError(
            "spec.entity.joinKeys",
            "materialization supports exactly one join key; combine the columns into one key "
            "column in the source",
        )
    features = []
    for i, feature in enumerate(spec.features):
        if feature.dtype not in FEATURE_TYPES:
            raise SpecError(
                f"spec.features[{i}].dtype",
                f"{feature.dtype} cannot be materialized yet; use one of "
                f"{', '.join(FEATURE_TYPES)}",
            )
        features.append(FeatureConfig(name=feature.name, type=FEATURE_TYPES[feature.dtype]))
    return MaterializeConfig.model_validate(
        {
            "feature_view": store_view_name(fv),
            "join_key": spec.entity.join_keys[0],
            "source": SourceConfig(
                uri=spec.source.path,
                event_timestamp_column=spec.source.timestamp_field,
                created_timestamp_column=spec.source.created_timestamp_field or None,
            ),
            "features": features,
            "ttl_seconds": int(parse_duration(spec.ttl)) if spec.ttl else 0,
            # only when split, so an unsplit run's config renders as it did before the field
            **({"shards": m.parallelism} if m.parallelism > 1 else {}),
            "online_store": OnlineStoreConfig.model_validate(
                {
                    "redis_url": spec.online_store.redis.url,
                    "key_prefix": key_prefix(fv),
                    **redis_cluster(spec.online_store.redis),
                }
            ),
            # a backfill pins its window's end and rewrites it whole
            **({"as_of": as_of, "mode": "full"} if as_of else {}),
        }
    )


def _labels(fv: FeatureView, component: str) -> dict[str, str]:
    return standard_labels(
        component=component, instance=fv.metadata.name, feature_view=fv.metadata.name
    )


def _job_spec(
    fv: FeatureView, image: str, config_map: str, component: str, config: MaterializeConfig
) -> dict[str, Any]:
    m = fv.spec.materialization
    env = redis_password_env(fv.spec.online_store.redis.password_secret_ref)
    if config.shards > 1:
        env.append(_RUN_ID_ENV)
    container = workload_container(
        image=m.image or image,
        module=MATERIALIZE_MODULE,
        resources=m.resources.to_k8s() if m.resources else None,
        env=env,
        env_from=secret_env_from(fv.spec.source.secret_ref),
    )
    pod = workload_pod_spec(container, config_map)
    mount_claims(pod, claims_in(config), read_only=True)  # a pvc:// source
    spec: dict[str, Any] = {
        "backoffLimit": 3,
        "podFailurePolicy": pod_failure_policy(),
        "ttlSecondsAfterFinished": 86400,
        "template": {"metadata": {"labels": _labels(fv, component)}, "spec": pod},
    }
    if config.shards > 1:
        # Every shard runs at once: the run's lock lease is kept alive by the shards that are
        # writing, so a shard queued behind the others could find it lapsed. backoffLimit
        # stays the Job's (not backoffLimitPerIndex, which older clusters lack): three failed
        # pods, whichever shards, fail the run, as they fail an unsharded one.
        spec.update(completionMode="Indexed", completions=config.shards, parallelism=config.shards)
    return spec


#: A sharded run's id, the same in all its pods: the Job's UID (``recsys_contract.materialize``).
_RUN_ID_ENV = {
    "name": RUN_ID_ENV,
    "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{RUN_ID_LABEL}']"}},
}


def plan(fv: FeatureView, owner: Mapping[str, Any], image: str) -> FeatureViewPlan:
    """Desired children of ``fv``; raises SpecError for a spec the workloads cannot run."""
    name, ns = fv.metadata.name, fv.metadata.namespace or "default"
    cm_name = child_name(name, "materialize")
    config = materialize_config(fv)
    config_map = workload_config_map(cm_name, ns, _labels(fv, "materialize-config"), owner, config)
    schedule = fv.spec.materialization.cron_job
    cron_spec: dict[str, Any] = {
        "schedule": schedule.schedule,
        "concurrencyPolicy": schedule.concurrency_policy,
        "successfulJobsHistoryLimit": schedule.successful_jobs_history_limit,
        "failedJobsHistoryLimit": schedule.failed_jobs_history_limit,
        "suspend": schedule.suspend,
        "jobTemplate": {
            "metadata": {"labels": _labels(fv, "materialize")},
            "spec": _job_spec(fv, image, cm_name, "materialize", config),
        },
    }
    if schedule.time_zone:
        cron_spec["timeZone"] = schedule.time_zone
    if schedule.starting_deadline_seconds is not None:
        cron_spec["startingDeadlineSeconds"] = schedule.starting_deadline_seconds
    cron_job = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": object_meta(
            child_name(name, "materialize"), ns, _labels(fv, "materialize"), owner
        ),
        "spec": cron_spec,
    }
    backfill_job = config_map_bf = None
    backfill = fv.spec.materialization.backfill
    if backfill is not None:
        # One Job per backfill window: a new window (a spec edit) is a new Job; the name hashes it.
        window = f"{backfill.start_time}/{backfill.end_time or ''}"
        bf_cm = child_name(name, "backfill", short_hash(window))
        bf_config = materialize_config(fv, as_of=backfill.end_time).model_copy(
            update={"mode": "full"}
        )
        config_map_bf = workload_config_map(
            bf_cm, ns, _labels(fv, "backfill-config"), owner, bf_config
        )
        backfill_job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": object_meta(bf_cm, ns, _labels(fv, "backfill"), owner),
            "spec": _job_spec(fv, image, bf_cm, "backfill", bf_config),
        }
    return FeatureViewPlan(config_map, cron_job, config_map_bf, backfill_job)


FreshnessReason = Literal["NotLive", "WithinLimit", "PastLimit"]


@dataclass(frozen=True)
class Freshness:
    """How fresh a FeatureView's live data is at one instant.

    ``NotLive``: no run has made data live (or the live run reported no watermark), so there
    is nothing to measure; its ``Stale`` condition is Unknown, and it is never ``fresh``.
    ``PastLimit``: the watermark lags by ``limit_seconds`` or more (at ``stale_after``).
    """

    fresh: bool
    reason: FreshnessReason
    message: str
    watermark: dt.datetime | None = None
    limit_seconds: float | None = None
    stale_after: dt.datetime | None = None

    def lag_seconds(self, now: dt.datetime) -> float | None:
        """How far the watermark lags behind ``now``; None when nothing is live."""
        return None if self.watermark is None else (now - self.watermark).total_seconds()


def default_limit_seconds(schedule: str, time_zone: str | None, watermark: dt.datetime) -> float:
    """Two schedule periods from ``watermark``: the seconds until the second scheduled run
    after it is due. Counted in ticks rather than as twice one gap, so an irregular schedule
    (weekdays only, say) tolerates one missed run over a weekend as it does midweek. Without
    ``cronJob.timeZone`` the schedule is read in UTC; a controller manager in another zone
    fires it that offset apart, which moves the limit by as much (set the time zone for an
    exact one)."""
    tz: dt.tzinfo = dt.UTC
    if time_zone:
        from zoneinfo import ZoneInfo

        tz = ZoneInfo(time_zone)
    ticks = croniter(schedule, watermark.astimezone(tz))
    ticks.get_next(dt.datetime)
    second: dt.datetime = ticks.get_next(dt.datetime)
    return (second - watermark).total_seconds()


def freshness_of(
    spec: FeatureViewSpec,
    status: FeatureViewStatus | None,
    now: dt.datetime,
    max_staleness: str | None = None,
) -> Freshness:
    """Freshness of the data ``status`` says is live, against ``max_staleness`` when given
    (the rollout's own bound), else the spec's ``maxStaleness``, else two schedule periods."""
    run = status.last_materialization if status else None
    if status is None or status.keyspace_version is None or run is None or not run.watermark:
        return Freshness(False, "NotLive", "no materialization run has made data live yet")
    watermark = parse_timestamp(run.watermark)
    m = spec.materialization
    limit_text = max_staleness or m.max_staleness
    if limit_text:
        limit = parse_duration(limit_text)
        what = f"maxStaleness {limit_text}"
    else:
        limit = default_limit_seconds(m.cron_job.schedule, m.cron_job.time_zone, watermark)
        what = f"two periods of '{m.cron_job.schedule}'"
    stale_after = watermark + dt.timedelta(seconds=limit)
    if now >= stale_after:
        return Freshness(
            False,
            "PastLimit",
            f"the live data's watermark {run.watermark} lags past {what}: stale since "
            f"{rfc3339(stale_after)}",
            watermark,
            limit,
            stale_after,
        )
    return Freshness(
        True,
        "WithinLimit",
        f"the live data's watermark {run.watermark} is within {what}, until {rfc3339(stale_after)}",
        watermark,
        limit,
        stale_after,
    )


def freshness(fv: FeatureView, now: dt.datetime, max_staleness: str | None = None) -> Freshness:
    """Freshness of ``fv``'s live data at ``now``, as its last written status tells it."""
    return freshness_of(fv.spec, fv.status, now, max_staleness)


def rfc3339(t: dt.datetime) -> str:
    """RFC 3339 in UTC, fractions of a second kept (a watermark may carry them)."""
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def permission_denied(
    fv: FeatureView, previous: Mapping[str, Any], message: str, now: str
) -> FeatureViewStatus:
    """Status while the operator lacks a permission: not the user's spec, the cluster's RBAC."""
    gen = fv.metadata.generation or 0
    conds: Sequence[Mapping[str, Any]] = previous.get("conditions", []) or []
    text = f"the operator is not allowed to manage this FeatureView's children: {message}"
    conds = set_condition(conds, "Ready", "False", "Forbidden", text, gen, now)
    conds = set_condition(conds, "Degraded", "True", "Forbidden", text, gen, now)
    return FeatureViewStatus.model_validate(
        {**previous, "observedGeneration": gen, "conditions": conds}
    )


def status(
    fv: FeatureView,
    *,
    previous: Mapping[str, Any],
    cron_job: Mapping[str, Any] | None,
    last_run: JobOutcome | None,
    last_backfill: JobOutcome | None,
    spec_error: SpecError | None,
    now: str,
) -> FeatureViewStatus:
    """The whole status from what was observed; equal input gives an equal status. Built as
    the wire dict (conditions keep their transition times from ``previous``), returned as the
    API's strict status model, so a planner bug fails here, not at the API server.

    Ready means a run has made data live (and the last run did not fail): a Recommender or a
    ``kubectl wait`` that waits for Ready then finds features to read. How fresh that data is,
    ``Stale`` says, with ``staleness``; it changes with time alone, so its turn is told by
    ``staleness.staleAfter``, when the reconciler looks again."""
    gen = fv.metadata.generation or 0
    conds: Sequence[Mapping[str, Any]] = previous.get("conditions", []) or []
    out: dict[str, Any] = {"observedGeneration": gen}
    for key in ("lastMaterialization", "lastBackfill", "keyspaceVersion", "liveKeyspace"):
        if key in previous:
            out[key] = previous[key]
    if spec_error is not None:
        msg = str(spec_error)
        conds = set_condition(conds, "Ready", "False", "InvalidSpec", msg, gen, now)
        conds = set_condition(conds, "Degraded", "True", "InvalidSpec", msg, gen, now)
        conds = set_condition(conds, "Progressing", "False", "InvalidSpec", msg, gen, now)
        out["conditions"] = _stale(fv, out, conds, gen, now)
        return FeatureViewStatus.model_validate(out)
    # lastMaterialization is the newest successful run of either kind (a backfill is a
    # materialization too), and its keyspace the live one; lastBackfill also keeps the
    # backfill's own, failed or not. A run older than the one status already holds (the
    # backfill while a later scheduled run's Job is gone or still running) changes nothing.
    if last_backfill is not None and last_backfill.finished:
        out["lastBackfill"] = last_backfill.run_status()
    succeeded = sorted(
        (o for o in (last_run, last_backfill) if o is not None and o.succeeded),
        key=lambda o: _time(o.completion_time),
    )
    for outcome in succeeded:
        held = out.get("lastMaterialization") or {}
        if outcome.name != held.get("jobName") and _time(outcome.completion_time) < _time(
            held.get("completionTime")
        ):
            continue
        out["lastMaterialization"] = outcome.run_status()
        summary = outcome.parsed(MaterializeSummary)
        if summary is not None and summary.version is not None:
            out["keyspaceVersion"] = summary.version
            out["liveKeyspace"] = f"{store_view_name(fv)}@{summary.version}"
    failed = next((o for o in (last_run, last_backfill) if o and o.failed), None)
    running = any(o is not None and not o.finished for o in (last_run, last_backfill))
    live = "keyspaceVersion" in out
    schedule = fv.spec.materialization.cron_job
    suspended = bool(schedule.suspend)
    if cron_job is None:
        conds = set_condition(conds, "Ready", "False", "Creating", "creating the CronJob", gen, now)
    elif failed is not None:
        conds = set_condition(
            conds, "Ready", "False", "MaterializationFailed", failed.message, gen, now
        )
    elif not live:
        waiting = (
            "a materialization Job is running"
            if running
            else "the schedule is suspended: resume it or set materialization.backfill"
            if suspended
            else f"the first run is due on '{schedule.schedule}'"
        )
        conds = set_condition(
            conds,
            "Ready",
            "False",
            "NotMaterialized",
            f"no run has made data live yet; {waiting}",
            gen,
            now,
        )
    else:
        reason, msg = (
            ("Suspended", "the materialization schedule is suspended")
            if suspended
            else ("Scheduled", f"materializing on '{schedule.schedule}'")
        )
        conds = set_condition(conds, "Ready", "True", reason, msg, gen, now)
    if failed is not None:
        conds = set_condition(conds, "Degraded", "True", failed.reason, failed.message, gen, now)
    else:
        conds = set_condition(conds, "Degraded", "False", "AsExpected", "no failed run", gen, now)
    if running:
        conds = set_condition(
            conds,
            "Progressing",
            "True",
            "Materializing",
            "a materialization Job is running",
            gen,
            now,
        )
    else:
        conds = set_condition(conds, "Progressing", "False", "Idle", "no Job running", gen, now)
    conds = set_condition(
        conds,
        "Materialized",
        "True" if live else "False",
        "Live" if live else "NoRunYet",
        f"serving keyspace {out['liveKeyspace']}" if live else "no successful run yet",
        gen,
        now,
    )
    out["conditions"] = _stale(fv, out, conds, gen, now)
    return FeatureViewStatus.model_validate(out)


def _time(text: str | None) -> dt.datetime:
    """A status time for ordering; the earliest possible when unset."""
    return parse_timestamp(text) if text else dt.datetime.min.replace(tzinfo=dt.UTC)


def _stale(
    fv: FeatureView,
    out: dict[str, Any],
    conds: Sequence[Mapping[str, Any]],
    gen: int,
    now: str,
) -> list[dict[str, Any]]:
    """``conds`` with ``Stale`` set from the data ``out`` says is live; ``out`` gains
    ``staleness`` once there is a watermark to measure."""
    f = freshness_of(fv.spec, FeatureViewStatus.model_validate(out), parse_timestamp(now))
    if f.watermark is not None and f.stale_after is not None and f.limit_seconds is not None:
        out["staleness"] = {
            "watermark": rfc3339(f.watermark),
            "limitSeconds": f.limit_seconds,
            "staleAfter": rfc3339(f.stale_after),
        }
    status: Status = "Unknown" if f.reason == "NotLive" else "False" if f.fresh else "True"
    return set_condition(conds, "Stale", status, f.reason, f.message, gen, now)


def events(
    previous: Mapping[str, Any], status: FeatureViewStatus, *outcomes: JobOutcome | None
) -> list[EventSpec]:
    """Events for what changed between ``previous`` and ``status``: a run that finished since
    (once per Job, so later status writes repeat nothing), the spec turning invalid, the live
    data turning stale."""
    out: list[EventSpec] = []
    seen = {
        (previous.get(key) or {}).get("jobName") for key in ("lastMaterialization", "lastBackfill")
    }
    for outcome in outcomes:
        if outcome is None or not outcome.finished:
            continue
        if outcome.succeeded:
            if outcome.name in seen:
                continue
            rows = outcome.summary.get("entitiesWritten", "?")
            out.append(
                (
                    "Normal",
                    "Materialized",
                    f"Job {outcome.name} wrote {rows} entities; keyspace "
                    f"{status.live_keyspace or '?'} is live",
                )
            )
        elif not _failed_before(previous, outcome):
            out.append(("Warning", "MaterializationFailed", outcome.message))
    old = {c["type"]: c for c in previous.get("conditions", []) or []}
    for cond in status.conditions or []:
        if cond.reason == "InvalidSpec" and old.get(cond.type, {}).get("reason") != "InvalidSpec":
            out.append(("Warning", "InvalidSpec", cond.message))
            break
    for cond in status.conditions or []:
        stale = cond.type == "Stale" and cond.status == "True"
        if stale and old.get("Stale", {}).get("status") != "True":
            out.append(("Warning", "Stale", cond.message))
    return out


def _failed_before(previous: Mapping[str, Any], outcome: JobOutcome) -> bool:
    """Whether ``previous`` already told of this failed Job (its Degraded condition)."""
    for cond in previous.get("conditions", []) or []:
        if cond.get("type") == "Degraded" and cond.get("status") == "True":
            return bool(cond.get("message") == outcome.message)
    return False
