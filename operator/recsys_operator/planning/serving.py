"""Serving objects of a Recommender: a Triton Deployment and Service per serving ModelVersion
(stable, and the canary beside it), and the gateway Deployment, Service and routing config.

Each version gets its own Triton so stable and canary load side by side and a rollback is a
routing change, not a redeploy. The gateway reads the routing table (stable, canary, weight,
each version's Triton and index) from its ConfigMap at start, and polls a copy of the table
in Redis every second (``recsys:<ns>.<name>:routing``, see ``recsys_workloads.gateway.keys``),
which wins when present: a mounted ConfigMap reaches running pods only after the kubelet's
sync (about a minute), too slow for a rollout step or a rollback.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from recsys_operator.api.recommender import Recommender
from recsys_operator.api.serving import GatewayServing, TritonServing
from recsys_operator.labels import standard_labels
from recsys_operator.naming import child_name, short_hash
from recsys_operator.planning.pods import (
    CONTAINER_SECURITY_CONTEXT,
    POD_SECURITY_CONTEXT,
    object_meta,
    redis_password_env,
    workload_config_map,
    workload_container,
)
from recsys_operator.planning.training import JobPlan, artifact_env_from, single_pod_job

TRITON_HTTP, TRITON_GRPC, TRITON_METRICS, GATEWAY_PORT = 8000, 8001, 8002, 8080
#: Where the init container writes the version's Triton model repository (an emptyDir).
REPOSITORY_DIR = "/models"


def triton_name(rec: Recommender, version: str) -> str:
    return child_name(rec.metadata.name, "triton", version)


def gateway_name(rec: Recommender) -> str:
    return child_name(rec.metadata.name, "gateway")


def _deployment(
    name: str,
    ns: str,
    labels: Mapping[str, str],
    owner: Mapping[str, Any],
    replicas: int,
    container: dict[str, Any],
    volumes: list[dict[str, Any]],
    node_selector: Mapping[str, str] | None,
    tolerations: list[dict[str, Any]],
    init_containers: list[dict[str, Any]],
) -> dict[str, Any]:
    selector = {k: labels[k] for k in ("app.kubernetes.io/instance", "app.kubernetes.io/component")}
    selector["app.kubernetes.io/name"] = labels["app.kubernetes.io/name"]
    if "recsys.dev/model-version" in labels:
        selector["recsys.dev/model-version"] = labels["recsys.dev/model-version"]
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": POD_SECURITY_CONTEXT,
        "containers": [container],
        "volumes": [{"name": "scratch", "emptyDir": {}}, *volumes],
    }
    if init_containers:
        pod["initContainers"] = init_containers
    if node_selector:
        pod["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod["tolerations"] = tolerations
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(name, ns, labels, owner),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
        },
    }


def _service(
    name: str,
    ns: str,
    labels: Mapping[str, str],
    owner: Mapping[str, Any],
    selector: Mapping[str, str],
    ports: list[tuple[str, int]],
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(name, ns, labels, owner),
        "spec": {
            "selector": dict(selector),
            "ports": [{"name": n, "port": p, "targetPort": p} for n, p in ports],
        },
    }


def _served(
    name: str,
    ns: str,
    labels: Mapping[str, str],
    owner: Mapping[str, Any],
    spec: TritonServing | GatewayServing,
    container: dict[str, Any],
    volumes: list[dict[str, Any]],
    ports: list[tuple[str, int]],
    init_containers: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """A Deployment of ``container`` placed and sized as ``spec`` says, and its Service."""
    if spec.resources:
        container["resources"] = spec.resources.to_k8s()
    deployment = _deployment(
        name,
        ns,
        labels,
        owner,
        spec.replicas,
        container,
        volumes,
        spec.node_selector,
        [t.to_k8s() for t in spec.tolerations or []],
        init_containers or [],
    )
    selector = deployment["spec"]["selector"]["matchLabels"]
    return [deployment, _service(name, ns, labels, owner, selector, ports)]


def repository_config(rec: Recommender, artifact_uri: str) -> dict[str, Any]:
    """What the init container builds the version's Triton repository from: models on the GPU
    when the Triton container asks for one."""
    tr = rec.spec.serving.triton
    limits = (tr.resources.limits or {}) if tr.resources else {}
    on_gpu = any(name.endswith("/gpu") for name in limits)
    return {
        "artifactUri": artifact_uri,
        "repositoryUri": REPOSITORY_DIR,
        "maxBatchSize": tr.max_batch_size,
        "device": "cuda" if on_gpu else "cpu",
    }


def triton_objects(
    rec: Recommender,
    owner: Mapping[str, Any],
    version: str,
    artifact_uri: str,
    image: str,
    workloads_image: str,
) -> list[dict[str, Any]]:
    """A version's Triton: a ConfigMap, a Deployment whose init container builds the model
    repository from the version's artifact into an emptyDir (the repository is derived data,
    see ``recsys_workloads.serving.repository``), and its Service."""
    ns = rec.metadata.namespace or "default"
    name = triton_name(rec, version)
    tr = rec.spec.serving.triton
    labels = standard_labels(
        component="triton",
        instance=rec.metadata.name,
        recommender=rec.metadata.name,
        model_version=version,
    )
    config_map = workload_config_map(name, ns, labels, owner, repository_config(rec, artifact_uri))
    models = {"name": "models", "mountPath": REPOSITORY_DIR}
    builder = workload_container(
        image=workloads_image,
        module="recsys_workloads.serving.repository",
        env_from=artifact_env_from(rec),
        extra_mounts=[models],
    )
    builder["name"] = "repository"
    container: dict[str, Any] = {
        "name": "triton",
        "image": tr.image or image,
        "args": [
            "tritonserver",
            f"--model-repository={REPOSITORY_DIR}",
            f"--http-port={TRITON_HTTP}",
            f"--grpc-port={TRITON_GRPC}",
            f"--metrics-port={TRITON_METRICS}",
        ],
        "ports": [
            {"name": "http", "containerPort": TRITON_HTTP},
            {"name": "grpc", "containerPort": TRITON_GRPC},
            {"name": "metrics", "containerPort": TRITON_METRICS},
        ],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": TRITON_HTTP}},
        "securityContext": CONTAINER_SECURITY_CONTEXT,
        "volumeMounts": [
            {"name": "scratch", "mountPath": "/tmp"},
            {**models, "readOnly": True},
        ],
    }
    volumes = [
        {"name": "config", "configMap": {"name": name}},
        {"name": "models", "emptyDir": {}},
    ]
    ports = [("http", TRITON_HTTP), ("grpc", TRITON_GRPC), ("metrics", TRITON_METRICS)]
    served = _served(name, ns, labels, owner, tr, container, volumes, ports, [builder])
    return [config_map, *served]


def routing_table(
    rec: Recommender,
    stable: str,
    canary: str | None,
    weight: int | None,
    indexes: Mapping[str, str | None],
) -> dict[str, Any]:
    ns = rec.metadata.namespace or "default"

    def variant(version: str) -> dict[str, Any]:
        return {
            "modelVersion": version,
            "triton": f"{triton_name(rec, version)}.{ns}.svc:{TRITON_HTTP}",
            "index": indexes.get(version),
        }

    table: dict[str, Any] = {
        "stable": variant(stable),
        "userSticky": rec.spec.serving.rollout.user_sticky,
        "canaryWeight": 0,
    }
    if canary:
        table["canary"] = variant(canary)
        table["canaryWeight"] = weight or 0
    return table


def gateway_feature_views(rec: Recommender) -> dict[str, list[dict[str, Any]]]:
    """The FeatureViews the gateway reads, by their online-store names (``<ns>.<name>``, as
    the materializer writes them) and the features taken from each. The materializer's key
    prefix ``fv`` is assumed: a FeatureView with its own ``keyPrefix`` needs it passed here."""
    ns = rec.metadata.namespace or "default"
    refs = rec.spec.feature_views
    out: dict[str, list[dict[str, Any]]] = {"user": [], "item": []}
    for entity, views in (
        ("user", refs.user if refs else None),
        ("item", refs.item if refs else None),
    ):
        for ref in views or []:
            view: dict[str, Any] = {"name": f"{ns}.{ref.name}"}
            if ref.features:
                view["features"] = list(ref.features)
            out[entity].append(view)
    return out


def gateway_objects(
    rec: Recommender, owner: Mapping[str, Any], table: Mapping[str, Any], image: str
) -> list[dict[str, Any]]:
    ns = rec.metadata.namespace or "default"
    name = gateway_name(rec)
    gw = rec.spec.serving.gateway
    labels = standard_labels(
        component="gateway", instance=rec.metadata.name, recommender=rec.metadata.name
    )
    redis = rec.spec.stores.redis
    config = {
        "recommender": f"{ns}.{rec.metadata.name}",
        "routing": table,
        "redisUrl": redis.url,
        "featureViews": gateway_feature_views(rec),
        "candidates": rec.spec.retrieval.num_candidates,
        "topK": rec.spec.ranking.top_k,
        "scoringTimeout": gw.scoring_timeout,
        "filtering": rec.spec.filtering.to_k8s(),
        "ordering": rec.spec.ordering.to_k8s() if rec.spec.ordering else {},
    }
    if redis.key_prefix:
        config["keyPrefix"] = redis.key_prefix
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(name, ns, labels, owner),
        "data": {"gateway.json": json.dumps(config, indent=1, sort_keys=True)},
    }
    env = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        *redis_password_env(redis.password_secret_ref),
    ]
    container: dict[str, Any] = {
        "name": "gateway",
        "image": gw.image or image,
        "command": ["python", "-m", "recsys_workloads.gateway"],
        "args": ["--config", "/etc/recsys/gateway.json", f"--port={GATEWAY_PORT}"],
        "env": env,
        "ports": [{"name": "http", "containerPort": GATEWAY_PORT}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": GATEWAY_PORT}},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": GATEWAY_PORT}},
        "securityContext": CONTAINER_SECURITY_CONTEXT,
        "volumeMounts": [
            {"name": "scratch", "mountPath": "/tmp"},
            {"name": "config", "mountPath": "/etc/recsys", "readOnly": True},
        ],
    }
    volumes = [{"name": "config", "configMap": {"name": name}}]
    served = _served(name, ns, labels, owner, gw, container, volumes, [("http", GATEWAY_PORT)])
    return [config_map, *served]


HISTORY_MODULE = "recsys_workloads.history"


def history_config(rec: Recommender) -> dict[str, Any]:
    redis = rec.spec.stores.redis
    store: dict[str, Any] = {"redisUrl": redis.url}
    if redis.key_prefix:
        store["keyPrefix"] = redis.key_prefix
    return {
        "recommender": f"{rec.metadata.namespace or 'default'}.{rec.metadata.name}",
        "interactionsUri": rec.spec.interactions.path,
        "onlineStore": store,
    }


def history_job(rec: Recommender, owner: Mapping[str, Any], image: str) -> JobPlan:
    """The Job that seeds the gateway's per-user history (recent and seen items) from
    ``spec.interactions`` (``recsys_workloads.history``): the models were trained on those
    histories and must see the same at serving. One Job per interactions source and store,
    named by their hash; the gateway's events keep the histories current afterwards. When the
    finished Job expires (``JOB_TTL_SECONDS``, a week) the next reconcile makes it again,
    which re-reads the table: ``ZADD GT`` makes that a refresh, never a step back."""
    ns = rec.metadata.namespace or "default"
    cfg = history_config(rec)
    name = child_name(rec.metadata.name, "history", short_hash(json.dumps(cfg, sort_keys=True)))
    labels = standard_labels(
        component="history", instance=rec.metadata.name, recommender=rec.metadata.name
    )
    container = workload_container(
        image=image,
        module=HISTORY_MODULE,
        env=redis_password_env(rec.spec.stores.redis.password_secret_ref),
        env_from=artifact_env_from(rec),
    )
    job = single_pod_job(name, ns, labels, owner, container)
    return JobPlan(workload_config_map(name, ns, labels, owner, cfg), job)
