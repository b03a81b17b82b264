"""Hybrid serving of a Recommender: the CronJob that stores the head's lists, and the Job that
stores them at once for a newly stable version.

The work is told in ``recsys_workloads.precompute``: it runs the gateway's own stages for the
stable version and writes each list under that version's key. The gateway reads only the key
of the version a user is routed to, so a promotion can never serve the previous version's
lists; what it must do is make the new version's exist soon. Hence two objects:

- the CronJob, whose config names the stable version (and whose pod carries it in its env),
  so a promotion changes the CronJob and its next runs compute for the new version;
- a Job per stable version (``<rec>-precompute-<version>``), created once when the version
  becomes stable (or when ``spec.serving.precompute`` is first set), so the head is served
  from lists within one run of the promotion rather than at the next scheduled time.

Without ``spec.serving.precompute`` there are none: the reconciler removes the CronJob, its
ConfigMap and the Jobs, and the gateway's config stops naming ``precomputed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from recsys_contract import gateway as wire
from recsys_contract.formats import parse_duration
from recsys_contract.precompute import Audience, PrecomputeConfig
from recsys_operator.api.featureview import FeatureView
from recsys_operator.api.recommender import Recommender
from recsys_operator.api.serving import DEFAULT_AUDIENCE_WINDOW, PrecomputeAudience
from recsys_operator.labels import standard_labels
from recsys_operator.naming import child_name
from recsys_operator.planning.pods import (
    claims_in,
    cron_pod_spec,
    mount_claims,
    redis_password_env,
    serial_cron_job,
    workload_config_map,
    workload_container,
)
from recsys_operator.planning.serving import gateway_config
from recsys_operator.planning.training import JobPlan, artifact_env_from, single_pod_job

PRECOMPUTE_MODULE = "recsys_workloads.precompute"
COMPONENT = "precompute"
#: The stable version in the pod's env: the CronJob's pod template changes with a promotion.
MODEL_VERSION_ENV = "RECSYS_MODEL_VERSION"


def precompute_name(rec: Recommender) -> str:
    return child_name(rec.metadata.name, COMPONENT)


def job_name(rec: Recommender, version: str) -> str:
    return child_name(rec.metadata.name, COMPONENT, version)


def labels(rec: Recommender, version: str | None = None) -> dict[str, str]:
    """The CronJob's labels; a version's Job also carries its version (the CronJob's own
    Jobs do not, which tells the two apart)."""
    return standard_labels(
        component=COMPONENT,
        instance=rec.metadata.name,
        recommender=rec.metadata.name,
        model_version=version,
    )


def audience(spec: PrecomputeAudience) -> Audience:
    """The API's audience in the Job's terms: a count, a share (``"5%"``) or everyone."""
    if spec.all:
        return Audience(all=True)
    window = parse_duration(spec.window or DEFAULT_AUDIENCE_WINDOW)
    most = spec.most_active
    if isinstance(most, str):
        return Audience(most_active_percent=int(most.rstrip("%")), window_seconds=window)
    return Audience(most_active=most, window_seconds=window)


def precompute_config(
    rec: Recommender, table: wire.RoutingTable, feature_views: Mapping[str, FeatureView]
) -> PrecomputeConfig | None:
    """The Job's config: the gateway's own (the same stages, filters and stores), routed to
    the stable variant alone; None without ``spec.serving.precompute``."""
    spec = rec.spec.serving.precompute
    if spec is None:
        return None
    stable_only = wire.RoutingTable(stable=table.stable, user_sticky=table.user_sticky)
    return PrecomputeConfig(
        gateway=gateway_config(rec, stable_only, feature_views),
        audience=audience(spec.audience),
        top_n=spec.top_n,
    )


@dataclass(frozen=True)
class PrecomputePlan:
    """The CronJob with its ConfigMap, and the stable version's Job (``JobPlan``)."""

    config_map: dict[str, Any]
    cron_job: dict[str, Any]
    now: JobPlan


def precompute_plan(
    rec: Recommender,
    owner: Mapping[str, Any],
    image: str,
    table: wire.RoutingTable,
    feature_views: Mapping[str, FeatureView],
) -> PrecomputePlan | None:
    """The objects for the table's stable version; None without ``spec.serving.precompute``."""
    spec = rec.spec.serving.precompute
    if spec is None:
        return None
    cfg = precompute_config(rec, table, feature_views)
    assert cfg is not None  # set exactly when spec.serving.precompute is
    version = table.stable.model_version
    name, ns = precompute_name(rec), rec.metadata.namespace or "default"
    container = workload_container(
        image=rec.spec.training.image or image,
        module=PRECOMPUTE_MODULE,
        env=[
            {"name": MODEL_VERSION_ENV, "value": version},
            *redis_password_env(rec.spec.stores.redis.password_secret_ref),
        ],
        env_from=artifact_env_from(rec),  # it loads the stable version's index
    )
    cron_job = serial_cron_job(
        name, ns, labels(rec), owner, container, spec.schedule, spec.time_zone, spec.suspend
    )
    mount_claims(cron_pod_spec(cron_job), claims_in(cfg), read_only=True)
    now, now_labels = job_name(rec, version), labels(rec, version)
    job = single_pod_job(now, ns, now_labels, owner, container)
    mount_claims(job["spec"]["template"]["spec"], claims_in(cfg), read_only=True)
    return PrecomputePlan(
        workload_config_map(name, ns, labels(rec), owner, cfg),
        cron_job,
        JobPlan(workload_config_map(now, ns, now_labels, owner, cfg), job),
    )


def stale_jobs(rec: Recommender, jobs: list[str], stable: str | None) -> list[str]:
    """The versions' precompute Jobs (by name) to remove: every one without the field or a
    stable version, else those of versions no longer stable (a run for them would only write
    lists no gateway reads)."""
    keep = job_name(rec, stable) if stable and rec.spec.serving.precompute else None
    return [j for j in jobs if j != keep]
