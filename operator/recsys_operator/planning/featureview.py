"""FeatureView -> its rendered config (ConfigMap), materialization CronJob, backfill Job, status.

The materializer's config is rendered from the spec here, so the pod needs no access to the
API; the Redis password reaches it from the user's Secret as an environment variable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from recsys_contract.formats import parse_duration
from recsys_contract.keyspace import feature_prefix, store_name
from recsys_contract.materialize import (
    FeatureConfig,
    FeatureType,
    MaterializeConfig,
    MaterializeSummary,
    OnlineStoreConfig,
    SourceConfig,
)
from recsys_operator.api.featureview import FeatureView, FeatureViewStatus
from recsys_operator.conditions import set_condition
from recsys_operator.labels import standard_labels
from recsys_operator.naming import child_name, short_hash
from recsys_operator.planning import EventSpec
from recsys_operator.planning.jobstatus import JobOutcome
from recsys_operator.planning.pods import (
    object_meta,
    pod_failure_policy,
    redis_password_env,
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
            "online_store": OnlineStoreConfig(
                redis_url=spec.online_store.redis.url, key_prefix=key_prefix(fv)
            ),
            # a backfill pins its window's end and rewrites it whole
            **({"as_of": as_of, "mode": "full"} if as_of else {}),
        }
    )


def _labels(fv: FeatureView, component: str) -> dict[str, str]:
    return standard_labels(
        component=component, instance=fv.metadata.name, feature_view=fv.metadata.name
    )


def _job_spec(fv: FeatureView, image: str, config_map: str, component: str) -> dict[str, Any]:
    m = fv.spec.materialization
    container = workload_container(
        image=m.image or image,
        module=MATERIALIZE_MODULE,
        resources=m.resources.to_k8s() if m.resources else None,
        env=redis_password_env(fv.spec.online_store.redis.password_secret_ref),
    )
    return {
        "backoffLimit": 3,
        "podFailurePolicy": pod_failure_policy(),
        "ttlSecondsAfterFinished": 86400,
        "template": {
            "metadata": {"labels": _labels(fv, component)},
            "spec": workload_pod_spec(container, config_map),
        },
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
            "spec": _job_spec(fv, image, cm_name, "materialize"),
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
            "spec": _job_spec(fv, image, bf_cm, "backfill"),
        }
    return FeatureViewPlan(config_map, cron_job, config_map_bf, backfill_job)


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
    API's strict status model, so a planner bug fails here, not at the API server."""
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
        out["conditions"] = conds
        return FeatureViewStatus.model_validate(out)
    # lastMaterialization is the newest finished run of either kind (a backfill is a
    # materialization too); lastBackfill also keeps the backfill's own.
    finished = sorted(
        (o for o in (last_run, last_backfill) if o is not None and o.finished),
        key=lambda o: o.completion_time or "",
    )
    if last_backfill is not None and last_backfill.finished:
        out["lastBackfill"] = last_backfill.run_status()
    for outcome in finished:
        out["lastMaterialization"] = outcome.run_status()
        summary = outcome.parsed(MaterializeSummary) if outcome.succeeded else None
        if summary is not None and summary.version is not None:
            out["keyspaceVersion"] = summary.version
            out["liveKeyspace"] = f"{store_view_name(fv)}@{summary.version}"
    failed = next((o for o in (last_run, last_backfill) if o and o.failed), None)
    running = any(o is not None and not o.finished for o in (last_run, last_backfill))
    if cron_job is None:
        conds = set_condition(conds, "Ready", "False", "Creating", "creating the CronJob", gen, now)
    elif failed is not None:
        conds = set_condition(
            conds, "Ready", "False", "MaterializationFailed", failed.message, gen, now
        )
    else:
        suspended = bool(fv.spec.materialization.cron_job.suspend)
        reason, msg = (
            ("Suspended", "the materialization schedule is suspended")
            if suspended
            else ("Scheduled", f"materializing on '{fv.spec.materialization.cron_job.schedule}'")
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
    live = "keyspaceVersion" in out
    conds = set_condition(
        conds,
        "Materialized",
        "True" if live else "False",
        "Live" if live else "NoRunYet",
        f"serving keyspace {out['liveKeyspace']}" if live else "no successful run yet",
        gen,
        now,
    )
    out["conditions"] = conds
    return FeatureViewStatus.model_validate(out)


def events(
    previous: Mapping[str, Any], status: FeatureViewStatus, *outcomes: JobOutcome | None
) -> list[EventSpec]:
    """Events for what changed between ``previous`` and ``status``: a run that finished since
    (once per Job, so later status writes repeat nothing), the spec turning invalid."""
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
    return out


def _failed_before(previous: Mapping[str, Any], outcome: JobOutcome) -> bool:
    """Whether ``previous`` already told of this failed Job (its Degraded condition)."""
    for cond in previous.get("conditions", []) or []:
        if cond.get("type") == "Degraded" and cond.get("status") == "True":
            return bool(cond.get("message") == outcome.message)
    return False
