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

In Batch mode there is no Triton Deployment to compute against, so each pod brings its own:
the Triton Deployment's repository-building init container, then Triton as a native sidecar
(an init container with ``restartPolicy: Always``, whose startup probe holds the precompute
container until the models are loaded, and which the kubelet stops when that container exits,
so the Job completes), and the precompute container pointed at it on localhost. The
repository's config rides in the same ConfigMap, as its own file.
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
    MAIN_CONTAINER,
    claims_in,
    cron_pod_spec,
    mount_claims,
    redis_password_env,
    render_config,
    serial_cron_job,
    workload_config_map,
    workload_container,
)
from recsys_operator.planning.serving import (
    MODELS_VOLUME,
    TRITON_HTTP,
    batch_mode,
    gateway_config,
    repository_builder,
    repository_config,
    triton_container,
)
from recsys_operator.planning.training import JobPlan, artifact_env_from, single_pod_job

PRECOMPUTE_MODULE = "recsys_workloads.precompute"
COMPONENT = "precompute"
#: The stable version in the pod's env: the CronJob's pod template changes with a promotion.
MODEL_VERSION_ENV = "RECSYS_MODEL_VERSION"
#: Batch mode: the repository builder's config, beside the precompute config in its ConfigMap.
REPOSITORY_CONFIG_FILE = "repository.json"
#: Batch mode: the pod's own Triton sidecar, which the precompute container computes on.
LOCAL_TRITON = f"127.0.0.1:{TRITON_HTTP}"
#: How long the sidecar may take to load the models before the kubelet restarts it (its
#: startup probe's period times its failure threshold): the repository builder has already
#: run, so this is Triton's own start, minutes on a busy node.
SIDECAR_STARTUP_SECONDS = 600
_STARTUP_PERIOD_SECONDS = 5


def precompute_name(rec: Recommender) -> str:
    return child_name(rec.metadata.name, COMPONENT)


def job_name(rec: Recommender, version: str) -> str:
    """The version's Job; Batch mode's has its own name (``<rec>-precompute-batch-<v>``): a
    Job's pod is immutable, so switching modes replaces the Job (``stale_jobs`` removes the
    other mode's) and the version's lists are computed again at once, on the new pod."""
    return child_name(rec.metadata.name, COMPONENT, "batch" if batch_mode(rec) else "", version)


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
    the stable variant alone (on the pod's own Triton in Batch mode); None without
    ``spec.serving.precompute``."""
    spec = rec.spec.serving.precompute
    if spec is None:
        return None
    stable = table.stable
    if batch_mode(rec):
        stable = stable.model_copy(update={"triton": LOCAL_TRITON})
    stable_only = wire.RoutingTable(stable=stable, user_sticky=table.user_sticky)
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


@dataclass(frozen=True)
class BatchImages:
    """What Batch mode's pods run Triton from: the stable version's artifact, the Triton
    image and the repository builder's image (the Triton Deployment's own)."""

    artifact_uri: str
    triton_image: str
    builder_image: str


def _with_triton(
    rec: Recommender, pod: dict[str, Any], config_map: dict[str, Any], batch: BatchImages
) -> None:
    """Batch mode: the repository builder and the Triton sidecar into a precompute pod, and
    the builder's config into its ConfigMap."""
    repo = repository_config(rec, batch.artifact_uri)
    config_map["data"][REPOSITORY_CONFIG_FILE] = render_config(repo)
    builder = repository_builder(rec, batch.builder_image, REPOSITORY_CONFIG_FILE)
    triton = triton_container(rec, batch.triton_image)
    triton["restartPolicy"] = "Always"  # a native sidecar: it ends with the main container
    triton["startupProbe"] = {
        "httpGet": {"path": "/v2/health/ready", "port": TRITON_HTTP},
        "periodSeconds": _STARTUP_PERIOD_SECONDS,
        "failureThreshold": SIDECAR_STARTUP_SECONDS // _STARTUP_PERIOD_SECONDS,
    }
    tr = rec.spec.serving.triton
    if tr.resources:
        triton["resources"] = tr.resources.to_k8s()
    pod["initContainers"] = [builder, triton]
    pod["volumes"].append(dict(MODELS_VOLUME))
    if tr.node_selector:
        pod["nodeSelector"] = dict(tr.node_selector)
    if tr.tolerations:
        pod["tolerations"] = [t.to_k8s() for t in tr.tolerations]
    # the builder reads the artifact; Triton itself reads only the built repository
    mount_claims(pod, claims_in(repo), read_only=True, containers=[builder["name"]])


def precompute_plan(
    rec: Recommender,
    owner: Mapping[str, Any],
    image: str,
    table: wire.RoutingTable,
    feature_views: Mapping[str, FeatureView],
    batch: BatchImages | None = None,
) -> PrecomputePlan | None:
    """The objects for the table's stable version; None without ``spec.serving.precompute``.
    In Batch mode ``batch`` says what the pods' own Triton runs from."""
    spec = rec.spec.serving.precompute
    if spec is None:
        return None
    if batch_mode(rec) and batch is None:
        raise ValueError("Batch mode: the pods' Triton needs the stable's artifact and images")
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
    now, now_labels = job_name(rec, version), labels(rec, version)
    job = single_pod_job(now, ns, now_labels, owner, container)
    cron_config = workload_config_map(name, ns, labels(rec), owner, cfg)
    job_config = workload_config_map(now, ns, now_labels, owner, cfg)
    for pod, config_map in (
        (cron_pod_spec(cron_job), cron_config),
        (job["spec"]["template"]["spec"], job_config),
    ):
        mount_claims(pod, claims_in(cfg), read_only=True, containers=[MAIN_CONTAINER])
        if batch_mode(rec):
            assert batch is not None  # checked above
            _with_triton(rec, pod, config_map, batch)
    return PrecomputePlan(cron_config, cron_job, JobPlan(job_config, job))


def stale_jobs(rec: Recommender, jobs: list[str], stable: str | None) -> list[str]:
    """The versions' precompute Jobs (by name) to remove: every one without the field or a
    stable version, else those of versions no longer stable (a run for them would only write
    lists no gateway reads) and the other mode's."""
    keep = job_name(rec, stable) if stable and rec.spec.serving.precompute else None
    return [j for j in jobs if j != keep]
