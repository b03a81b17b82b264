"""Serving objects of a Recommender: a Triton Deployment and Service per serving ModelVersion
(stable, and the canary beside it), and the gateway Deployment, Service and routing config.

Each version gets its own Triton so stable and canary load side by side and a rollback is a
routing change, not a redeploy. The gateway reads the routing table (stable, canary, weight,
each version's Triton and index) from its ConfigMap at start, and polls a copy of the table
in Redis every second (``GatewayKeys.routing`` of ``recsys_contract.keyspace``),
which wins when present: a mounted ConfigMap reaches running pods only after the kubelet's
sync (about a minute), too slow for a rollout step or a rollback.

In Batch mode (``spec.serving.precompute.mode: Batch``) there is no Triton Deployment: the
routing table names no Triton address, and the precompute Jobs run Triton in their own pods
(``planning.precompute``) from the same repository builder and Triton container as here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from recsys_contract import gateway as wire
from recsys_contract.history import HistoryConfig
from recsys_contract.keyspace import DEFAULT_FEATURE_PREFIX, recommender_prefix, store_name
from recsys_contract.repository import RepositoryConfig
from recsys_operator.api.featureview import FeatureView
from recsys_operator.api.recommender import FeatureViewRef, Recommender
from recsys_operator.api.serving import GatewayServing, TritonServing
from recsys_operator.labels import standard_labels
from recsys_operator.naming import child_name, short_hash
from recsys_operator.planning.featureview import key_prefix
from recsys_operator.planning.pods import (
    CONFIG_DIR,
    CONFIG_FILE,
    CONTAINER_SECURITY_CONTEXT,
    POD_SECURITY_CONTEXT,
    claims_in,
    mount_claims,
    object_meta,
    recommender_store,
    redis_cluster,
    redis_password_env,
    workload_config_map,
    workload_container,
)
from recsys_operator.planning.rollout import Routing
from recsys_operator.planning.training import (
    JobPlan,
    artifact_env_from,
    interaction_columns,
    single_pod_job,
)

TRITON_HTTP, TRITON_GRPC, TRITON_METRICS, GATEWAY_PORT = 8000, 8001, 8002, 8080
GATEWAY_CONFIG_FILE = "gateway.json"
#: Where the init container writes the version's Triton model repository (an emptyDir).
REPOSITORY_DIR = "/models"


def batch_mode(rec: Recommender) -> bool:
    """Whether the Recommender serves stored lists only, with no Triton Deployment."""
    precompute = rec.spec.serving.precompute
    return precompute is not None and precompute.mode == "Batch"


def triton_name(rec: Recommender, version: str) -> str:
    return child_name(rec.metadata.name, "triton", version)


def gateway_name(rec: Recommender) -> str:
    return child_name(rec.metadata.name, "gateway")


def _deployment(
    name: str,
    ns: str,
    labels: Mapping[str, str],
    owner: Mapping[str, Any],
    replicas: int | None,
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
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
    }
    if replicas is not None:  # None: an autoscaler owns the count
        spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(name, ns, labels, owner),
        "spec": spec,
    }


#: A served pod keeps answering for a while after it is told to stop (a scale-down, a
#: rollout, a drain): its endpoint leaves every node's Service rules only some time after the
#: pod is marked terminating, and a connection routed to it meanwhile would find it closed.
#: The kubelet's own sleep action, so the images need no shell.
DRAIN_SECONDS = 5

#: The optional children that keep a served Deployment's pods: (apiVersion, kind).
HPA = ("autoscaling/v2", "HorizontalPodAutoscaler")
PDB = ("policy/v1", "PodDisruptionBudget")


def fewest_pods(spec: TritonServing | GatewayServing) -> int:
    """The pod count serving never goes below by choice: the autoscaler's floor, or
    ``replicas``."""
    return spec.autoscaling.min_replicas if spec.autoscaling else spec.replicas


def unwanted_scaling(spec: TritonServing | GatewayServing) -> list[tuple[str, str]]:
    """The optional children ``spec`` does not ask for, removed when present: the
    autoscaler once ``autoscaling`` is gone, the disruption budget below two pods (with one
    pod a budget either blocks every drain or guards nothing)."""
    out = []
    if spec.autoscaling is None:
        out.append(HPA)
    if fewest_pods(spec) < 2:
        out.append(PDB)
    return out


def _scaling(
    deployment: Mapping[str, Any], spec: TritonServing | GatewayServing
) -> list[dict[str, Any]]:
    """The autoscaler and the disruption budget ``spec`` asks for, beside ``deployment``."""
    meta = deployment["metadata"]
    out: list[dict[str, Any]] = []
    if spec.autoscaling is not None:
        auto = spec.autoscaling
        out.append(
            {
                "apiVersion": HPA[0],
                "kind": HPA[1],
                "metadata": dict(meta),
                "spec": {
                    "scaleTargetRef": {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": meta["name"],
                    },
                    "minReplicas": auto.min_replicas,
                    "maxReplicas": auto.max_replicas,
                    "metrics": [
                        {
                            "type": "Resource",
                            "resource": {
                                "name": "cpu",
                                "target": {
                                    "type": "Utilization",
                                    "averageUtilization": auto.target_cpu_utilization_percentage,
                                },
                            },
                        }
                    ],
                },
            }
        )
    if PDB not in unwanted_scaling(spec):
        out.append(
            {
                "apiVersion": PDB[0],
                "kind": PDB[1],
                "metadata": dict(meta),
                "spec": {"maxUnavailable": 1, "selector": deployment["spec"]["selector"]},
            }
        )
    return out


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
    """A Deployment of ``container`` placed and sized as ``spec`` says, its Service, and the
    autoscaler and disruption budget ``spec`` asks for."""
    if spec.resources:
        container["resources"] = spec.resources.to_k8s()
    container["lifecycle"] = {"preStop": {"sleep": {"seconds": DRAIN_SECONDS}}}
    deployment = _deployment(
        name,
        ns,
        labels,
        owner,
        None if spec.autoscaling else spec.replicas,
        container,
        volumes,
        spec.node_selector,
        [t.to_k8s() for t in spec.tolerations or []],
        init_containers or [],
    )
    selector = deployment["spec"]["selector"]["matchLabels"]
    service = _service(name, ns, labels, owner, selector, ports)
    return [deployment, service, *_scaling(deployment, spec)]


def repository_config(rec: Recommender, artifact_uri: str) -> RepositoryConfig:
    """What the init container builds the version's Triton repository from: models on the GPU
    when the Triton container asks for one."""
    tr = rec.spec.serving.triton
    limits = (tr.resources.limits or {}) if tr.resources else {}
    on_gpu = any(name.endswith("/gpu") for name in limits)
    return RepositoryConfig(
        artifact_uri=artifact_uri,
        repository_uri=REPOSITORY_DIR,
        max_batch_size=tr.max_batch_size,
        device="cuda" if on_gpu else "cpu",
    )


#: The volume the repository builder writes and Triton reads.
MODELS_VOLUME = {"name": "models", "emptyDir": {}}


def repository_builder(
    rec: Recommender, builder_image: str, config_file: str = CONFIG_FILE
) -> dict[str, Any]:
    """The init container that builds a version's Triton model repository into the
    ``models`` emptyDir from the config at ``CONFIG_DIR/config_file`` (the repository is
    derived data, see ``recsys_workloads.serving.repository``)."""
    builder = workload_container(
        image=builder_image,
        module="recsys_workloads.serving.repository",
        env_from=artifact_env_from(rec),
        extra_mounts=[{"name": "models", "mountPath": REPOSITORY_DIR}],
    )
    builder["name"] = "repository"
    builder["args"] = ["--config", f"{CONFIG_DIR}/{config_file}"]
    return builder


def triton_container(rec: Recommender, image: str) -> dict[str, Any]:
    """The Triton container serving the built repository: the Deployment's, and in Batch
    mode the precompute pod's sidecar."""
    tr = rec.spec.serving.triton
    return {
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
            {"name": "models", "mountPath": REPOSITORY_DIR, "readOnly": True},
        ],
    }


def triton_objects(
    rec: Recommender,
    owner: Mapping[str, Any],
    version: str,
    artifact_uri: str,
    image: str,
    builder_image: str,
) -> list[dict[str, Any]]:
    """A version's Triton: a ConfigMap, a Deployment whose init container builds the model
    repository from the version's artifact into an emptyDir, and its Service (with the
    autoscaler and disruption budget the spec asks for). None in Batch mode."""
    if batch_mode(rec):
        return []
    ns = rec.metadata.namespace or "default"
    name = triton_name(rec, version)
    tr = rec.spec.serving.triton
    labels = standard_labels(
        component="triton",
        instance=rec.metadata.name,
        recommender=rec.metadata.name,
        model_version=version,
    )
    cfg = repository_config(rec, artifact_uri)
    config_map = workload_config_map(name, ns, labels, owner, cfg)
    builder = repository_builder(rec, builder_image)
    container = triton_container(rec, image)
    volumes = [{"name": "config", "configMap": {"name": name}}, dict(MODELS_VOLUME)]
    ports = [("http", TRITON_HTTP), ("grpc", TRITON_GRPC), ("metrics", TRITON_METRICS)]
    served = _served(name, ns, labels, owner, tr, container, volumes, ports, [builder])
    # the init container reads the artifact; Triton itself reads only the built repository
    pod = served[0]["spec"]["template"]["spec"]
    mount_claims(pod, claims_in(cfg), read_only=True, containers=[builder["name"]])
    return [config_map, *served]


def routing_table(
    rec: Recommender, routing: Routing, indexes: Mapping[str, str | None]
) -> wire.RoutingTable:
    ns = rec.metadata.namespace or "default"
    batch = batch_mode(rec)  # no Triton to name: the gateway serves stored lists only

    def variant(version: str) -> wire.Variant:
        return wire.Variant(
            model_version=version,
            triton=None if batch else f"{triton_name(rec, version)}.{ns}.svc:{TRITON_HTTP}",
            index=indexes.get(version),
        )

    return wire.RoutingTable(
        stable=variant(routing.stable),
        canary=variant(routing.canary) if routing.canary else None,
        canary_weight=routing.weight if routing.canary else 0,
        user_sticky=rec.spec.serving.rollout.user_sticky,
        standby=variant(routing.standby) if routing.standby else None,
        shadow_percent=routing.shadow if routing.canary else 0,
    )


def gateway_feature_views(
    rec: Recommender, feature_views: Mapping[str, FeatureView]
) -> wire.FeatureViews:
    """The FeatureViews the gateway reads, by their online-store names, each with the key
    prefix it is materialized under and the features taken from it. ``feature_views`` holds
    the FeatureView objects by name; one not found yet gets the default prefix (it is
    rendered again when it appears: the Recommender watches its FeatureViews)."""
    ns = rec.metadata.namespace or "default"
    refs = rec.spec.feature_views

    def ref(r: FeatureViewRef) -> wire.FeatureViewRef:
        fv = feature_views.get(r.name)
        return wire.FeatureViewRef(
            name=store_name(ns, r.name),
            key_prefix=key_prefix(fv) if fv is not None else DEFAULT_FEATURE_PREFIX,
            features=list(r.features) if r.features else None,
        )

    return wire.FeatureViews(
        user=[ref(r) for r in (refs.user if refs else None) or []],
        item=[ref(r) for r in (refs.item if refs else None) or []],
    )


def gateway_config(
    rec: Recommender, table: wire.RoutingTable, feature_views: Mapping[str, FeatureView]
) -> wire.GatewayConfig:
    redis = rec.spec.stores.redis
    precompute = rec.spec.serving.precompute
    config = wire.GatewayConfig(
        recommender=store_name(rec.metadata.namespace, rec.metadata.name),
        routing=table,
        redis_url=redis.url,
        key_prefix=recommender_prefix(redis.key_prefix),
        feature_views=gateway_feature_views(rec, feature_views),
        candidates=rec.spec.retrieval.num_candidates,
        top_k=rec.spec.ranking.top_k,
        scoring_timeout=rec.spec.serving.gateway.scoring_timeout,
        attribution_window=rec.spec.serving.rollout.analysis.attribution_window,
        filtering=wire.Filtering.model_validate(rec.spec.filtering.to_k8s()),
        ordering=wire.Ordering.model_validate(
            rec.spec.ordering.to_k8s() if rec.spec.ordering else {}
        ),
        # lists stored ahead (planning.precompute), served only while the field is set
        precomputed=wire.Precomputed(max_age=precompute.max_age) if precompute else None,
    )
    # set only on a cluster, so a single Redis' config (and its hash) stays as it was
    return config.model_copy(update=redis_cluster(redis))


def gateway_objects(
    rec: Recommender,
    owner: Mapping[str, Any],
    table: wire.RoutingTable,
    image: str,
    feature_views: Mapping[str, FeatureView],
) -> list[dict[str, Any]]:
    """The gateway's ConfigMap (``gateway_config``), Deployment and Service (with the
    autoscaler and disruption budget its spec asks for); ``feature_views``
    are the Recommender's FeatureViews by name, found so far."""
    ns = rec.metadata.namespace or "default"
    name = gateway_name(rec)
    gw = rec.spec.serving.gateway
    labels = standard_labels(
        component="gateway", instance=rec.metadata.name, recommender=rec.metadata.name
    )
    redis = rec.spec.stores.redis
    config = gateway_config(rec, table, feature_views)
    config_map = workload_config_map(name, ns, labels, owner, config, GATEWAY_CONFIG_FILE)
    env = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        *redis_password_env(redis.password_secret_ref),
    ]
    container: dict[str, Any] = {
        "name": "gateway",
        "image": gw.image or image,
        "command": ["python", "-m", "recsys_workloads.gateway"],
        "args": ["--config", f"{CONFIG_DIR}/{GATEWAY_CONFIG_FILE}", f"--port={GATEWAY_PORT}"],
        "env": env,
        "ports": [{"name": "http", "containerPort": GATEWAY_PORT}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": GATEWAY_PORT}},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": GATEWAY_PORT}},
        "securityContext": CONTAINER_SECURITY_CONTEXT,
        "volumeMounts": [
            {"name": "scratch", "mountPath": "/tmp"},
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        ],
    }
    env_from = artifact_env_from(rec)  # it loads each variant's ANN index from the store
    if env_from:
        container["envFrom"] = env_from
    volumes = [{"name": "config", "configMap": {"name": name}}]
    served = _served(name, ns, labels, owner, gw, container, volumes, [("http", GATEWAY_PORT)])
    mount_claims(served[0]["spec"]["template"]["spec"], claims_in(config), read_only=True)
    return [config_map, *served]


HISTORY_MODULE = "recsys_workloads.history"


def history_config(rec: Recommender) -> HistoryConfig:
    return HistoryConfig(
        recommender=store_name(rec.metadata.namespace, rec.metadata.name),
        interactions_uri=rec.spec.interactions.path,
        interaction_columns=interaction_columns(rec),
        online_store=recommender_store(rec),
    )


def history_job(rec: Recommender, owner: Mapping[str, Any], image: str) -> JobPlan:
    """The Job that seeds the gateway's per-user history (recent and seen items) from
    ``spec.interactions`` (``recsys_workloads.history``): the models were trained on those
    histories and must see the same at serving. One Job per interactions source and store,
    named by their hash; the gateway's events keep the histories current afterwards. When the
    finished Job expires (``JOB_TTL_SECONDS``, a week) the next reconcile makes it again,
    which re-reads the table: ``ZADD GT`` makes that a refresh, never a step back."""
    ns = rec.metadata.namespace or "default"
    cfg = history_config(rec)
    name = child_name(
        rec.metadata.name, "history", short_hash(json.dumps(cfg.to_wire(), sort_keys=True))
    )
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
    mount_claims(job["spec"]["template"]["spec"], claims_in(cfg), read_only=True)
    return JobPlan(workload_config_map(name, ns, labels, owner, cfg), job)
