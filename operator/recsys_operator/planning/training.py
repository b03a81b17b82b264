"""A ModelVersion's Jobs: training (one pod, or torchrun over an Indexed Job) and index build.

Conventions users of Kubeflow and Kueue know: ``numNodes`` pods of ``numProcPerNode``
processes each, rank 0 reachable through a headless Service; with a queue name the Job carries
``kueue.x-k8s.io/queue-name`` and is created suspended so Kueue admits it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from recsys_contract.formats import join_uri, parse_duration
from recsys_contract.index import IndexBuildConfig, IndexSection, ValidationSection
from recsys_contract.train import (
    DataConfig,
    EvaluationConfig,
    FeatureConfig,
    InteractionColumns,
    ModelConfig,
    TrainConfig,
    TrainingConfig,
    WarmStartConfig,
)
from recsys_operator.api.modelversion import ModelVersion
from recsys_operator.api.recommender import IvfParams, Recommender
from recsys_operator.labels import KUEUE_QUEUE_LABEL, standard_labels
from recsys_operator.naming import child_name
from recsys_operator.planning.pods import (
    claims_in,
    mount_claims,
    object_meta,
    pod_failure_policy,
    secret_env_from,
    workload_config_map,
    workload_container,
    workload_pod_spec,
)

TRAIN_MODULE = "recsys_workloads.train"
INDEX_MODULE = "recsys_workloads.index_build"
RENDEZVOUS_PORT = 29500
JOB_TTL_SECONDS = 7 * 86400
#: Where the log join writes its rows, under the Recommender's artifact store.
LOGGED_DIR = "logged"


def artifact_uri(rec: Recommender, mv: ModelVersion) -> str:
    """Where a version's model lives: its own storageUri when imported, else under the store."""
    if mv.spec.storage_uri:
        return mv.spec.storage_uri
    return join_uri(rec.spec.stores.artifacts.storage_uri, "models", mv.metadata.name)


def index_uri(rec: Recommender, mv: ModelVersion) -> str:
    return join_uri(rec.spec.stores.artifacts.storage_uri, "indexes", mv.metadata.name)


def logged_enabled(rec: Recommender) -> bool:
    return rec.spec.training.logged_data.enabled


def logged_uri(rec: Recommender) -> str:
    """The log join's partitions (``planning.logjoin``), which training reads."""
    return join_uri(rec.spec.stores.artifacts.storage_uri, LOGGED_DIR)


def logged_data(rec: Recommender, mv: ModelVersion) -> dict[str, Any]:
    """The training config's ``loggedUri``, ``loggedSince`` and ``loggedUntil``: rows joined
    before the version was created, so a retry of its training reads the same rows; none when
    ``loggedData`` is off."""
    if not logged_enabled(rec):
        return {}
    out: dict[str, Any] = {"logged_uri": logged_uri(rec)}
    created = mv.metadata.creation_timestamp
    if created:
        until = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
        out["logged_until"] = until
        lookback = rec.spec.training.logged_data.lookback
        if lookback:
            out["logged_since"] = until - dt.timedelta(seconds=parse_duration(lookback))
    return out


@dataclass(frozen=True)
class FeatureSources:
    """Offline parquet of the FeatureViews the Recommender names, resolved by the reconciler."""

    users_uri: str | None = None
    user_features: list[str] | None = None
    items_uri: str | None = None
    item_features: list[str] | None = None


def interaction_columns(rec: Recommender) -> InteractionColumns | None:
    """The interactions' column names from ``spec.interactions``, for training and history
    seeding; None when they are the defaults (the configs then stay as they were without)."""
    src = rec.spec.interactions
    columns = InteractionColumns(
        user_id=src.user_id_column,
        item_id=src.item_id_column,
        timestamp=src.timestamp_field,
        label=src.label_column,
    )
    return None if columns.model_dump() == InteractionColumns().model_dump() else columns


#: The retrains a warm start applies to: those the operator starts on its own cadence. A
#: Manual retrain (``recsys.dev/retrain``) stays cold: it is how a user forces a full retrain
#: after a run of warm ones; Initial has nothing to start from.
WARM_START_REASONS = frozenset({"Drift", "Schedule"})


def warm_start(
    rec: Recommender, mv: ModelVersion, stable: ModelVersion | None, epochs: int | None = None
) -> WarmStartConfig | None:
    """The training config's ``warmStart``: start from the serving (stable) version's
    artifact when ``spec.training.warmStart`` is on, the version is a Drift or Schedule
    retrain and the stable is a Ready version with a published artifact; None (a cold run)
    otherwise. ``epochs``: this version's own override, which wins over the warm start's."""
    ws = rec.spec.training.warm_start
    if not ws.enabled or mv.spec.reason not in WARM_START_REASONS or mv.spec.storage_uri:
        return None
    if stable is None or stable.metadata.name == mv.metadata.name or stable.status is None:
        return None
    st = stable.status
    if st.phase != "Ready" or not st.artifact_uri:
        return None
    return WarmStartConfig(
        artifact_uri=st.artifact_uri,
        version=stable.metadata.name,
        digest=st.digest,
        window_seconds=parse_duration(ws.window),
        epochs=epochs or ws.epochs,
    )


def train_config(
    rec: Recommender,
    mv: ModelVersion,
    sources: FeatureSources,
    stable: ModelVersion | None = None,
) -> TrainConfig:
    """The training Job's config; ``stable``, the version serving now, is what a warm start
    begins at (``warm_start``)."""
    spec = rec.spec
    hp = spec.training.hyper_parameters
    overrides = mv.spec.training.hyper_parameters if mv.spec.training else None
    over = overrides.model_dump(exclude_none=True) if overrides else {}
    gate = spec.training.evaluation
    model: dict[str, Any] = {
        "embedding_dim": spec.retrieval.embedding_dim,
        "temperature": over.get("temperature", hp.temperature),
        "ranker_cross_layers": spec.ranking.cross_layers,
    }
    if spec.retrieval.hidden_units is not None:
        model["tower_hidden"] = list(spec.retrieval.hidden_units)
    if spec.ranking.hidden_units is not None:
        model["ranker_hidden"] = list(spec.ranking.hidden_units)
    return TrainConfig(
        version=mv.metadata.name,
        seed=over.get("seed", hp.seed),
        data=DataConfig(
            interactions_uri=spec.interactions.path,
            interaction_columns=interaction_columns(rec),
            users_uri=sources.users_uri,
            items_uri=sources.items_uri,
            **logged_data(rec, mv),
        ),
        artifact_uri=artifact_uri(rec, mv),
        model=ModelConfig.model_validate(model),
        training=TrainingConfig(
            epochs=over.get("epochs", hp.epochs),
            batch_size=over.get("batch_size", hp.batch_size),
            learning_rate=over.get("learning_rate", hp.learning_rate),
            weight_decay=over.get("weight_decay", hp.weight_decay),
            max_steps_per_epoch=over.get("max_steps_per_epoch", hp.max_steps_per_epoch),
        ),
        evaluation=EvaluationConfig(
            k=sorted({10, 20, 50, gate.k}),
            holdout_fraction=gate.holdout_fraction,
            split="time" if gate.split == "Time" else "perUser",
            candidates=spec.retrieval.num_candidates,
        ),
        # an entity's features only with its table: without it the tower uses ids alone
        features=FeatureConfig(
            user=(sources.user_features or None) if sources.users_uri else None,
            item=(sources.item_features or None) if sources.items_uri else None,
        ),
        warm_start=warm_start(rec, mv, stable, over.get("epochs")),
    )


def index_config(rec: Recommender, mv: ModelVersion) -> IndexBuildConfig:
    idx = rec.spec.retrieval.index
    hnsw = idx.hnsw
    kind = {"HNSW": "auto", "Flat": "flat", "IVFFlat": "auto"}[idx.type]
    params: dict[str, Any] = {"kind": kind, "flat_threshold": idx.flat_below_items}
    if hnsw is not None:
        params |= {
            "hnsw_m": hnsw.m,
            "ef_construction": hnsw.ef_construction,
            "ef_search": hnsw.ef_search,
        }
    if idx.type == "IVFFlat":
        ivf = idx.ivf or IvfParams()
        params |= {"approximate": "ivfFlat", "nlist": ivf.nlist, "nprobe": ivf.nprobe}
    return IndexBuildConfig(
        version=mv.metadata.name,
        model_artifact_uri=artifact_uri(rec, mv),
        index_uri=index_uri(rec, mv),
        index=IndexSection.model_validate(params),
        validation=ValidationSection(min_recall=idx.min_recall),
    )


def _labels(rec: Recommender, mv: ModelVersion, component: str) -> dict[str, str]:
    return standard_labels(
        component=component,
        instance=rec.metadata.name,
        recommender=rec.metadata.name,
        model_version=mv.metadata.name,
    )


def artifact_env_from(rec: Recommender) -> list[dict[str, Any]]:
    return secret_env_from(rec.spec.stores.artifacts.secret_ref)


@dataclass(frozen=True)
class JobPlan:
    """A Job with the ConfigMap it reads and, for multi-node training, its headless Service."""

    config_map: dict[str, Any]
    job: dict[str, Any]
    service: dict[str, Any] | None = None


def training_job(
    rec: Recommender,
    mv: ModelVersion,
    owner: Mapping[str, Any],
    image: str,
    sources: FeatureSources,
    stable: ModelVersion | None = None,
) -> JobPlan:
    tr = rec.spec.training
    ns = mv.metadata.namespace or "default"
    name = child_name(mv.metadata.name, "train")
    labels = _labels(rec, mv, "train")
    cfg = train_config(rec, mv, sources, stable)
    cm = workload_config_map(name, ns, labels, owner, cfg)
    image = (mv.spec.training.image if mv.spec.training and mv.spec.training.image else None) or (
        tr.image or image
    )
    resources = tr.resources_per_node.to_k8s() if tr.resources_per_node else {}
    if tr.gpus_per_node:
        resources.setdefault("limits", {})[tr.gpu_resource_name] = str(tr.gpus_per_node)
    procs = tr.num_proc_per_node or max(1, tr.gpus_per_node or 1)
    service = None
    env: list[dict[str, Any]] = []
    if tr.num_nodes > 1 or procs > 1:
        command = ["torchrun", f"--nnodes={tr.num_nodes}", f"--nproc-per-node={procs}"]
        if tr.num_nodes > 1:
            # Rank 0 is pod 0 of the Indexed Job, addressable through the headless Service.
            command += [
                "--node-rank=$(JOB_COMPLETION_INDEX)",
                f"--master-addr={name}-0.{name}",
                f"--master-port={RENDEZVOUS_PORT}",
            ]
            service = {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": object_meta(name, ns, labels, owner),
                "spec": {
                    "clusterIP": "None",
                    "publishNotReadyAddresses": True,
                    "selector": {"batch.kubernetes.io/job-name": name},
                    "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT}],
                },
            }
        command += ["-m", TRAIN_MODULE]
    else:
        command = ["python", "-m", TRAIN_MODULE]
    container = workload_container(
        image=image,
        module=TRAIN_MODULE,
        resources=resources or None,
        env=env,
        env_from=artifact_env_from(rec),
        command=command,
    )
    pod = workload_pod_spec(
        container,
        name,
        node_selector=tr.node_selector,
        tolerations=[t.to_k8s() for t in tr.tolerations or []],
        priority_class_name=tr.priority_class_name,
        subdomain=name if service else None,
        # torch's shared-memory tensors need more /dev/shm than a container's default 64 MiB.
        extra_volumes=[{"name": "dshm", "emptyDir": {"medium": "Memory"}}],
    )
    pod["containers"][0]["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})
    mount_claims(pod, claims_in(cfg), read_only=False)  # writes the model artifact
    job_labels = dict(labels)
    spec: dict[str, Any] = {
        "backoffLimit": tr.backoff_limit,
        "podFailurePolicy": pod_failure_policy(),
        "ttlSecondsAfterFinished": JOB_TTL_SECONDS,
        "template": {"metadata": {"labels": labels}, "spec": pod},
    }
    if tr.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = tr.active_deadline_seconds
    if tr.num_nodes > 1:
        spec |= {
            "completionMode": "Indexed",
            "completions": tr.num_nodes,
            "parallelism": tr.num_nodes,
        }
    if tr.queue_name:
        job_labels[KUEUE_QUEUE_LABEL] = tr.queue_name
        spec["suspend"] = True  # Kueue admits it by unsuspending
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": object_meta(name, ns, job_labels, owner),
        "spec": spec,
    }
    return JobPlan(cm, job, service)


def index_job(rec: Recommender, mv: ModelVersion, owner: Mapping[str, Any], image: str) -> JobPlan:
    ns = mv.metadata.namespace or "default"
    name = child_name(mv.metadata.name, "index")
    labels = _labels(rec, mv, "index")
    cfg = index_config(rec, mv)
    cm = workload_config_map(name, ns, labels, owner, cfg)
    container = workload_container(
        image=rec.spec.training.image or image,
        module=INDEX_MODULE,
        env_from=artifact_env_from(rec),
    )
    job = single_pod_job(name, ns, labels, owner, container)
    mount_claims(job["spec"]["template"]["spec"], claims_in(cfg), read_only=False)  # writes it
    return JobPlan(cm, job)


def single_pod_job(
    name: str,
    ns: str,
    labels: Mapping[str, str],
    owner: Mapping[str, Any],
    container: Mapping[str, Any],
) -> dict[str, Any]:
    """A one-pod workload Job reading the ConfigMap of the same name: a few retries for
    transient failures, none for bad input (``pod_failure_policy``), kept a week."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": object_meta(name, ns, labels, owner),
        "spec": {
            "backoffLimit": 3,
            "podFailurePolicy": pod_failure_policy(),
            "ttlSecondsAfterFinished": JOB_TTL_SECONDS,
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": workload_pod_spec(container, name),
            },
        },
    }
