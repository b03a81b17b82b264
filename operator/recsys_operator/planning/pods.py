"""Pod and Job pieces shared by every workload the operator runs, least-privilege by default.

Every pod passes the ``restricted`` Pod Security level: non-root, no privilege escalation, all
capabilities dropped, seccomp RuntimeDefault, a read-only root filesystem with an emptyDir for
scratch, and no service-account token (workloads never call the Kubernetes API; they report
through their termination message).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from recsys_contract.base import ConfigSection
from recsys_contract.formats import PVC_MOUNT_ROOT, pvc_claim
from recsys_contract.history import RecommenderStoreConfig
from recsys_contract.termination import EXIT_BAD_INPUT
from recsys_operator.api.common import LocalObjectRef, SecretKeyRef
from recsys_operator.api.recommender import Recommender
from recsys_operator.api.stores import RedisStore
from recsys_operator.naming import short_hash

CONFIG_DIR = "/etc/recsys"
CONFIG_FILE = "config.json"
SCRATCH_DIR = "/tmp"
MAIN_CONTAINER = "main"
NON_ROOT_UID = 65532

POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": NON_ROOT_UID,
    "runAsGroup": NON_ROOT_UID,
    "fsGroup": NON_ROOT_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}

CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """The controller reference that makes the garbage collector cascade deletion."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(
    name: str, namespace: str, labels: Mapping[str, str], owner: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": dict(labels),
        "ownerReferences": [owner_reference(owner)],
    }


def render_config(cfg: ConfigSection) -> str:
    """A workload's config as the JSON it parses (``recsys_contract``): what the operator set."""
    return json.dumps(cfg.to_wire(), indent=1, sort_keys=True)


def workload_config_map(
    name: str,
    ns: str,
    labels: Mapping[str, str],
    owner: Mapping[str, Any],
    cfg: ConfigSection,
    file: str = CONFIG_FILE,
) -> dict[str, Any]:
    """The ConfigMap a workload reads its JSON config from (mounted at ``CONFIG_DIR``)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(name, ns, labels, owner),
        "data": {file: render_config(cfg)},
    }


def claims_in(*configs: ConfigSection) -> list[str]:
    """The PersistentVolumeClaims that the ``pvc://CLAIM/...`` URIs of ``configs`` name, sorted.

    Read off the rendered config rather than off the spec fields that fed it, so no URI a
    workload is handed (an imported version's storageUri, a warm start's artifact, a
    FeatureView's source, an index in the gateway's routing table) can miss its mount.
    """
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str):
            claim = pvc_claim(value)
            if claim is not None:
                found.add(claim)
        elif isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    for cfg in configs:
        walk(cfg.to_wire())
    return sorted(found)


def claim_volume_name(claim: str) -> str:
    """A volume name (a DNS label) for any claim name (a DNS subdomain, up to 253 chars)."""
    return f"pvc-{short_hash(claim)}"


def mount_claims(
    pod_spec: dict[str, Any],
    claims: Sequence[str],
    *,
    read_only: bool,
    containers: Sequence[str] | None = None,
) -> None:
    """Mount each claim at ``PVC_MOUNT_ROOT/CLAIM`` (where ``recsys_workloads.pvc`` reads a
    ``pvc://CLAIM/...`` URI) in the ``containers`` of ``pod_spec`` named (all of them, init
    containers included, by default); ``read_only`` for the pods that only read artifacts and
    data (least privilege). Pods on several nodes share a claim only when its access mode
    allows it (ReadWriteMany)."""
    if not claims:
        return
    pod_spec.setdefault("volumes", []).extend(
        {"name": claim_volume_name(c), "persistentVolumeClaim": {"claimName": c}} for c in claims
    )
    for container in [*pod_spec.get("initContainers", []), *pod_spec["containers"]]:
        if containers is not None and container["name"] not in containers:
            continue
        container.setdefault("volumeMounts", []).extend(
            {
                "name": claim_volume_name(c),
                "mountPath": f"{PVC_MOUNT_ROOT}/{c}",
                **({"readOnly": True} if read_only else {}),
            }
            for c in claims
        )


def redis_password_env(ref: SecretKeyRef | None) -> list[dict[str, Any]]:
    """``REDIS_PASSWORD`` from the user's Secret, the only way a workload gets it."""
    if ref is None:
        return []
    secret = {"secretKeyRef": {"name": ref.name, "key": ref.key}}
    return [{"name": "REDIS_PASSWORD", "valueFrom": secret}]


def recommender_store(rec: Recommender) -> RecommenderStoreConfig:
    """Where a Recommender's workloads find its gateway keys (history, served log, cursor).
    The prefix and the cluster flag only when set, so a config hashed into a Job's name stays as
    it was without."""
    redis = rec.spec.stores.redis
    prefix = {"key_prefix": redis.key_prefix} if redis.key_prefix else {}
    return RecommenderStoreConfig.model_validate(
        {"redis_url": redis.url, **prefix, **redis_cluster(redis)}
    )


def redis_cluster(redis: RedisStore) -> dict[str, bool]:
    """``redis_cluster`` for a workload config, only on a cluster: a config hashed into a Job's
    name stays as it was for a single Redis."""
    return {"redis_cluster": True} if redis.mode == "Cluster" else {}


def secret_env_from(ref: LocalObjectRef | None) -> list[dict[str, Any]]:
    """``envFrom`` for a Secret reference: empty without one, so a container without a
    Secret carries no ``envFrom`` (the apiserver hands none back, and an empty list would
    differ from it on every reconcile)."""
    return [{"secretRef": {"name": ref.name}}] if ref else []


def workload_container(
    *,
    image: str,
    module: str,
    resources: Mapping[str, Any] | None = None,
    env: Sequence[Mapping[str, Any]] = (),
    env_from: Sequence[Mapping[str, Any]] = (),
    command: Sequence[str] | None = None,
    extra_mounts: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The main container of a workload Job: ``python -m <module> --config <mounted file>``."""
    container: dict[str, Any] = {
        "name": MAIN_CONTAINER,
        "image": image,
        "command": list(command or ["python", "-m", module]),
        "args": ["--config", f"{CONFIG_DIR}/{CONFIG_FILE}"],
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}, *map(dict, env)],
        "securityContext": CONTAINER_SECURITY_CONTEXT,
        "terminationMessagePolicy": "File",
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "scratch", "mountPath": SCRATCH_DIR},
            *map(dict, extra_mounts),
        ],
    }
    if env_from:
        container["envFrom"] = [dict(e) for e in env_from]
    if resources:
        container["resources"] = dict(resources)
    return container


def workload_pod_spec(
    container: Mapping[str, Any],
    config_map: str,
    *,
    node_selector: Mapping[str, str] | None = None,
    tolerations: Sequence[Mapping[str, Any]] = (),
    priority_class_name: str | None = None,
    subdomain: str | None = None,
    extra_volumes: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": POD_SECURITY_CONTEXT,
        "containers": [dict(container)],
        "volumes": [
            {"name": "config", "configMap": {"name": config_map}},
            {"name": "scratch", "emptyDir": {}},
            *map(dict, extra_volumes),
        ],
    }
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        spec["tolerations"] = [dict(t) for t in tolerations]
    if priority_class_name:
        spec["priorityClassName"] = priority_class_name
    if subdomain:
        spec["subdomain"] = subdomain
    return spec


def pod_failure_policy() -> dict[str, Any]:
    """Fail fast on bad input (no retry can fix it); don't count evictions and preemptions
    against ``backoffLimit``; retry everything else (transient exits, crashes)."""
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": MAIN_CONTAINER,
                    "operator": "In",
                    "values": [EXIT_BAD_INPUT],
                },
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]
    }


def cron_pod_spec(cron_job: dict[str, Any]) -> dict[str, Any]:
    """The pod spec inside a CronJob's Job template."""
    spec: dict[str, Any] = cron_job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return spec


def serial_cron_job(
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    owner: Mapping[str, Any],
    container: Mapping[str, Any],
    schedule: str,
    time_zone: str | None = None,
    suspend: bool | None = None,
) -> dict[str, Any]:
    """A Recommender's periodic workload (the drift check, the log join): never two runs at
    once (``Forbid``: each run continues from what the previous one recorded), a few retries,
    and finished Jobs kept a day for their termination messages."""
    spec: dict[str, Any] = {
        "schedule": schedule,
        "concurrencyPolicy": "Forbid",
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 3,
        "jobTemplate": {
            "metadata": {"labels": dict(labels)},
            "spec": {
                "backoffLimit": 2,
                "podFailurePolicy": pod_failure_policy(),
                "ttlSecondsAfterFinished": 86400,
                "template": {
                    "metadata": {"labels": dict(labels)},
                    "spec": workload_pod_spec(container, name),
                },
            },
        },
    }
    if suspend is not None:
        spec["suspend"] = suspend
    if time_zone:
        spec["timeZone"] = time_zone
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": object_meta(name, namespace, labels, owner),
        "spec": spec,
    }
