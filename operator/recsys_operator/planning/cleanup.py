"""What a Recommender being deleted leaves outside Kubernetes, and the order it is cleaned in.

Held by ``finalizers.CLEANUP_FINALIZER``, which the operator adds once the Recommender serves
(its gateways, history Job and log join write its Redis keyspace) or, with
``retentionPolicy: Delete``, once a ModelVersion exists (its Jobs write artifacts). The
deletion then goes, one reconcile at a time:

1. the writers stop (``finalizers.teardown``): every ModelVersion of the Recommender (in the
   foreground, so its training and index Jobs and their pods go first), the Triton and gateway
   Deployments, the drift and log-join CronJobs and every Job labelled with it;
2. its keyspace in Redis is deleted (``keyspace.GatewayKeys``: routing table, index alias,
   served and events streams, per-user sets, counters, heartbeats);
3. with ``Delete``, a cleanup Job (``recsys_workloads.cleanup``) removes the directories the
   operator's workloads write under ``storageUri``. It has no owner reference: a foreground
   deletion of the Recommender would have the garbage collector delete it mid-run, and the
   next reconcile start it again. The operator deletes it when done. A Job that fails (the
   store refuses) is kept ``RETRY_SECONDS`` for its message, then started again; the
   Recommender stays meanwhile, and setting ``retentionPolicy: Retain`` lets it go;
4. the finalizer is removed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from recsys_contract.cleanup import CleanupConfig
from recsys_contract.formats import join_uri
from recsys_operator.api.formats import parse_timestamp
from recsys_operator.api.recommender import Recommender
from recsys_operator.labels import standard_labels
from recsys_operator.naming import child_name
from recsys_operator.planning.jobstatus import JobOutcome
from recsys_operator.planning.pods import (
    claims_in,
    mount_claims,
    workload_config_map,
    workload_container,
)
from recsys_operator.planning.training import artifact_env_from, logged_uri, single_pod_job

CLEANUP_MODULE = "recsys_workloads.cleanup"
COMPONENT = "cleanup"
#: A failed cleanup Job is kept this long (its message in an event), then started again.
RETRY_SECONDS = 60.0
#: The workload kinds (besides its ModelVersions) that write a Recommender's keyspace or
#: artifacts.
WRITER_KINDS: tuple[tuple[str, str], ...] = (
    ("apps/v1", "Deployment"),
    ("batch/v1", "CronJob"),
    ("batch/v1", "Job"),
)


def cleanup_name(rec: Recommender) -> str:
    return child_name(rec.metadata.name, COMPONENT)


def is_cleanup(obj: Mapping[str, Any]) -> bool:
    """The cleanup Job (and its ConfigMap): the one child that is not a writer."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get("app.kubernetes.io/component") == COMPONENT


def cleanup_uris(rec: Recommender) -> list[str]:
    """The directories the operator's workloads write under the artifact store: models and
    indexes (``planning.training``) and the logged rows (``planning.logjoin``)."""
    base = rec.spec.stores.artifacts.storage_uri
    return [join_uri(base, "models"), join_uri(base, "indexes"), logged_uri(rec)]


def cleanup_objects(
    rec: Recommender, owner: Mapping[str, Any], image: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The cleanup Job's ConfigMap and Job, with no owner reference (see the module)."""
    name, ns = cleanup_name(rec), rec.metadata.namespace or "default"
    labels = standard_labels(
        component=COMPONENT, instance=rec.metadata.name, recommender=rec.metadata.name
    )
    cfg = CleanupConfig(uris=cleanup_uris(rec))
    container = workload_container(
        image=image, module=CLEANUP_MODULE, env_from=artifact_env_from(rec)
    )
    config_map = workload_config_map(name, ns, labels, owner, cfg)
    job = single_pod_job(name, ns, labels, owner, container)
    mount_claims(job["spec"]["template"]["spec"], claims_in(cfg), read_only=False)
    for obj in (config_map, job):
        del obj["metadata"]["ownerReferences"]
    return config_map, job


@dataclass(frozen=True)
class AfterWriters:
    """What a deletion does once no writer is left."""

    delete_keyspace: bool = False
    start_job: bool = False
    #: delete the cleanup Job and its ConfigMap (done, or to be started again)
    remove_job: bool = False
    release: bool = False
    #: seconds until the next look; None when released
    requeue_after: float | None = None
    #: why the cleanup Job failed, for an ArtifactsNotDeleted event
    failed: str | None = None


def after_writers(
    rec: Recommender, job: JobOutcome | None, job_exists: bool, now: dt.datetime
) -> AfterWriters:
    """The next step: ``job`` is the cleanup Job's outcome, when it exists."""
    if rec.spec.stores.artifacts.retention_policy == "Retain":
        return AfterWriters(delete_keyspace=True, remove_job=job_exists, release=True)
    if not job_exists:
        return AfterWriters(delete_keyspace=True, start_job=True, requeue_after=2.0)
    if job is None or not job.finished:
        return AfterWriters(requeue_after=2.0)
    if job.succeeded:
        return AfterWriters(remove_job=True, release=True)
    finished = parse_timestamp(job.completion_time) if job.completion_time else now
    wait = RETRY_SECONDS - (now - finished).total_seconds()
    if wait > 0:
        return AfterWriters(requeue_after=wait, failed=job.message)
    return AfterWriters(remove_job=True, requeue_after=2.0)
