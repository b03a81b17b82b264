"""On a node that really runs containers (tests/testbed/real_node.py): the node joins with its
own certificate and kwok leaves it alone; ``helm install`` of the chart with the images
``make images`` builds, under Pod Security ``restricted`` enforced; the operator, talking to
the apiserver from inside its pod, reconciles a FeatureView whose materialization Job runs in a
container and writes to Redis, and the termination message the kubelet records reaches the
FeatureView's status; killing the operator pod makes the Deployment start another, which
creates nothing twice. A pod resolves Services through the cluster DNS (CoreDNS). A whole
Recommender runs there: its training Job in the trainer image (the operator pod killed while
it trains), the index Job, Triton built from the artifact by its init container and the
gateway, which a pod of the namespace asks through its Service's DNS name.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import subprocess
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from fixtures.operator import condition, eventually, get
from fixtures.real_node import FAKE_TAINT, RealNodeWorld
from fixtures.s3 import point_environment_at
from recsys_contract.keyspace import FeatureViewKeys
from recsys_operator.planning.serving import GATEWAY_PORT
from recsys_workloads.datasets import movielens
from recsys_workloads.featurestore.reader import read_online_features
from testbed.controlplane import FAKE_NODE, run_kubectl
from testbed.real_node import NODE_LABEL

pytestmark = [pytest.mark.realnode, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "recsys-operator"
RESTRICTED = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def pod(world: RealNodeWorld, ns: str, name: str) -> dict[str, Any]:
    obj = get(world.testbed, "pod", name, ns)
    assert obj is not None, f"pod {ns}/{name} is gone"
    return obj


def audit_events(world: RealNodeWorld) -> Iterator[dict[str, Any]]:
    for line in world.testbed.audit_log.read_text().splitlines():
        yield json.loads(line)


def python_pod(name: str, code: str, **spec: Any) -> dict[str, Any]:
    """A restricted pod running ``python3 -c code`` in the workloads image."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": RESTRICTED,
            "containers": [
                {
                    "name": "main",
                    "image": "",  # set by the caller
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", code],
                    "securityContext": CONTAINER_RESTRICTED,
                }
            ],
            **spec,
        },
    }


# --- the node --------------------------------------------------------------------------------


def test_the_node_joins_with_its_certificate_and_runs_what_kwok_leaves_alone(
    real_node_world: RealNodeWorld,
) -> None:
    world = real_node_world
    tb = world.testbed
    node = json.loads(tb.kubectl("get", "node", world.node_name, "-o", "json").stdout)
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert {"type": "InternalIP", "address": world.gateway} in node["status"]["addresses"]
    assert node["metadata"]["labels"][NODE_LABEL[0]] == NODE_LABEL[1]
    # Real capacity, not the fake node's 64 CPUs and 8 GPUs.
    assert "nvidia.com/gpu" not in node["status"]["capacity"]

    # The kubelet registered itself with its own certificate, not as an admin.
    creators = {
        (e["user"]["username"], "system:nodes" in e["user"].get("groups", []))
        for e in audit_events(world)
        if e["verb"] == "create"
        and e["objectRef"].get("resource") == "nodes"
        and e["objectRef"].get("subresource") is None
        and e["responseStatus"]["code"] == 201
        and e["objectRef"].get("name") in (world.node_name, None)
    }
    assert (f"system:node:{world.node_name}", True) in creators
    # NodeRestriction: that certificate cannot touch another node.
    denied = run_kubectl(
        tb.kubectl_path,
        world.node.node.kubeconfig,
        ["label", "node", FAKE_NODE["metadata"]["name"], "stolen=yes"],  # type: ignore[index]
        check=False,
    )
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower(), denied.stderr

    ns = world.namespace(f"node-pods-{uuid.uuid4().hex[:6]}")
    real = python_pod(
        "real",
        "import os, socket\n"
        "host = os.environ['KUBERNETES_SERVICE_HOST']\n"
        "port = os.environ['KUBERNETES_SERVICE_PORT']\n"
        "socket.create_connection((host, int(port)), timeout=5).close()\n"
        # cluster DNS: a Service by its short name (the pod's search path) and by its full one
        "short = socket.gethostbyname('kubernetes.default')\n"
        "full = socket.gethostbyname('kubernetes.default.svc.cluster.local')\n"
        "try:\n"
        "    outside = socket.gethostbyname('example.com')\n"
        "except OSError:\n"
        "    outside = 'not resolved'\n"
        "said = f'uid {os.getuid()} reached {host}:{port}; names {short} {full}'\n"
        "open('/dev/termination-log', 'w').write(f'{said}; outside {outside}')\n",
        nodeSelector={NODE_LABEL[0]: NODE_LABEL[1]},
    )
    real["spec"]["containers"][0]["image"] = world.images["workloads"]
    # kwok's: an image that exists nowhere, so only a played pod can be Running.
    fake = python_pod(
        "fake",
        "raise SystemExit(3)",
        nodeSelector={"type": "kwok"},
        tolerations=[{**FAKE_TAINT, "operator": "Equal"}],
    )
    fake["spec"]["containers"][0]["image"] = "registry.test/never-pulled:1"
    for obj in (real, fake):
        tb.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(obj))

    done = eventually(
        lambda: (p := pod(world, ns, "real"))["status"].get("phase") == "Succeeded" and p,
        90,
        "Succeeded real pod",
    )
    state = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert state["message"] == (
        "uid 65532 reached 10.96.0.1:443; names 10.96.0.1 10.96.0.1; outside not resolved"
    )
    assert ipaddress.ip_address(done["status"]["podIP"]) in world.node.network.subnet
    container_id = done["status"]["containerStatuses"][0]["containerID"]
    assert container_id.startswith("containerd://")
    assert (
        container_id.removeprefix("containerd://")
        in world.node.node.ctr("containers", "ls", "-q").split()
    )

    played = eventually(
        lambda: (p := pod(world, ns, "fake"))["status"].get("phase") == "Running" and p,
        60,
        "Running kwok pod",
    )
    assert played["spec"]["nodeName"] == FAKE_NODE["metadata"]["name"]  # type: ignore[index]
    assert "registry.test/never-pulled" not in world.node.node.ctr("containers", "ls")


# --- the chart and the operator ---------------------------------------------------------------


@dataclass
class Release:
    namespace: str
    name: str
    service_account: str

    @property
    def selector(self) -> str:
        return f"app.kubernetes.io/instance={self.name}"


def operator_pods(world: RealNodeWorld, release: Release) -> list[dict[str, Any]]:
    out = world.testbed.kubectl(
        "get", "pods", "-n", release.namespace, "-l", release.selector, "-o", "json"
    )
    return list(json.loads(out.stdout)["items"])


def ready_pod(world: RealNodeWorld, release: Release, not_uid: str = "") -> dict[str, Any] | None:
    for p in operator_pods(world, release):
        conds = {c["type"]: c["status"] for c in p["status"].get("conditions", [])}
        if conds.get("Ready") == "True" and p["metadata"]["uid"] != not_uid:
            return p
    return None


@pytest.fixture(scope="module")
def release(
    real_node_world: RealNodeWorld, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Release]:
    world = real_node_world
    ns = world.namespace("recsys-system")
    values = {
        "image": {"pullPolicy": "Never"},
        "nodeSelector": {NODE_LABEL[0]: NODE_LABEL[1]},
    }
    values_file = tmp_path_factory.mktemp("helm") / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    name = "recsys"
    helm = [str(world.testbed.helm_path), "--kubeconfig", str(world.testbed.kubeconfig)]
    out = subprocess.run(
        [*helm, "install", name, str(CHART), "--namespace", ns, "--values", str(values_file),
         "--wait", "--timeout", "120s"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    if out.returncode != 0:
        pods = world.testbed.kubectl("describe", "pods", "-n", ns, check=False).stdout
        raise AssertionError(f"helm install failed:\n{out.stderr}\n{pods[-4000:]}")
    try:
        yield Release(ns, name, f"{name}-recsys-operator")
    finally:
        subprocess.run(
            [*helm, "uninstall", name, "--namespace", ns, "--wait", "--timeout", "60s"],
            capture_output=True, timeout=90, check=False,
        )  # fmt: skip


def test_helm_install_runs_the_operator_pod_under_enforced_restricted(
    real_node_world: RealNodeWorld, release: Release
) -> None:
    world = real_node_world
    labels = json.loads(
        world.testbed.kubectl("get", "namespace", release.namespace, "-o", "json").stdout
    )["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    running = eventually(lambda: ready_pod(world, release), 90, "Ready operator pod")
    assert running["spec"]["nodeName"] == world.node_name
    (container,) = running["status"]["containerStatuses"]
    assert container["image"] == world.images["operator"]
    assert container["containerID"].startswith("containerd://")


def artifact_secret(world: RealNodeWorld, ns: str) -> None:
    """The ``artifact-store`` Secret with only the three keys examples/recommender.yaml's has:
    the pods must find the S3 store with them."""
    s3_keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")
    world.testbed.kubectl(
        "create", "secret", "generic", "artifact-store", "-n", ns,
        *(f"--from-literal={key}={world.s3.env[key]}" for key in s3_keys),
    )  # fmt: skip


@pytest.fixture(scope="module")
def feature_view(real_node_world: RealNodeWorld, release: Release) -> dict[str, Any]:
    """A FeatureView whose source is a parquet file in the S3 store, read with the keys of an
    artifact-store Secret made as examples/recommender.yaml shows; returned once Materialized."""
    world = real_node_world
    ns = world.namespace("features")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    table = pa.table(
        {
            "user_id": pa.array([1, 2, 3], pa.int64()),
            "event_timestamp": pa.array(
                [now - dt.timedelta(hours=1)] * 3, pa.timestamp("us", "UTC")
            ),
            "age": pa.array([31, 42, 53], pa.int64()),
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    world.s3.create_bucket("features")
    world.s3.client().put_object(
        Bucket="features", Key="users/users.parquet", Body=sink.getvalue().to_pybytes()
    )
    artifact_secret(world, ns)
    fv = {
        "apiVersion": "recsys.dev/v1alpha1",
        "kind": "FeatureView",
        "metadata": {"name": "users"},
        "spec": {
            "entity": {"name": "user", "joinKeys": ["user_id"]},
            "source": {
                "path": "s3://features/users/",
                "secretRef": {"name": "artifact-store"},
                "timestampField": "event_timestamp",
            },
            "features": [{"name": "age", "dtype": "Int64"}],
            "ttl": "24h",
            "onlineStore": {"redis": {"url": world.redis.url_for_db(1)}},
            "materialization": {
                # A schedule that does not fire during the test: only the backfill runs.
                "cronJob": {"schedule": "0 0 1 1 *"},
                "backfill": {
                    "startTime": (now - dt.timedelta(days=2)).isoformat().replace("+00:00", "Z")
                },
            },
        },
    }
    world.testbed.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(fv))

    def materialized() -> dict[str, Any] | None:
        """The FeatureView once a run made data live, or once a run failed (Degraded)."""
        obj = get(world.testbed, "featureview", "users", ns)
        live, failed = condition(obj, "Materialized"), condition(obj, "Degraded")
        done = (live and live["status"] == "True") or (failed and failed["status"] == "True")
        return obj if done else None

    try:
        return dict(eventually(materialized, 180, "Materialized condition"))
    except AssertionError:
        pods = world.testbed.kubectl("describe", "pods", "-n", ns, check=False).stdout
        logs = world.testbed.kubectl(
            "logs", "-n", release.namespace, "-l", release.selector, "--tail=60", check=False
        ).stdout
        raise AssertionError(f"pods:\n{pods[-3000:]}\noperator:\n{logs}") from None


def test_the_materialization_job_runs_in_a_container_and_its_message_reaches_the_status(
    real_node_world: RealNodeWorld, release: Release, feature_view: dict[str, Any]
) -> None:
    world = real_node_world
    ns = feature_view["metadata"]["namespace"]
    cond = condition(feature_view, "Materialized")
    assert cond is not None, feature_view.get("status")
    assert cond["status"] == "True", feature_view["status"]
    assert feature_view["status"]["lastBackfill"]["rows"] == 3

    # The Job's pod ran on the real node, in containerd, and the kubelet recorded its message.
    (job_pod,) = json.loads(world.testbed.kubectl("get", "pods", "-n", ns, "-o", "json").stdout)[
        "items"
    ]
    assert job_pod["spec"]["nodeName"] == world.node_name
    (container,) = job_pod["spec"]["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "artifact-store"}}]
    (status,) = job_pod["status"]["containerStatuses"]
    assert status["containerID"].startswith("containerd://")
    summary = json.loads(status["state"]["terminated"]["message"])
    assert summary["status"] == "Succeeded", summary
    assert summary["entitiesWritten"] == 3, summary

    # The rows are in Redis, readable as the gateway reads them.
    client = redis.Redis.from_url(world.redis.url_for_db(1))
    try:
        rows = read_online_features(client, FeatureViewKeys.of(f"{ns}.users"), [1, 2, 3]).rows
    finally:
        client.close()
    assert [r["age"] if r else None for r in rows] == [31, 42, 53]

    # The operator wrote that status from inside its pod, as its service account, through the
    # kubernetes Service (the request came from the pod network).
    writers = {
        (e["user"]["username"], e["sourceIPs"][0])
        for e in audit_events(world)
        if e["objectRef"].get("resource") == "featureviews"
        and e["objectRef"].get("subresource") == "status"
        and e["verb"] in ("patch", "update")
    }
    sa = f"system:serviceaccount:{release.namespace}:{release.service_account}"
    assert any(
        user == sa and ipaddress.ip_address(ip) in world.node.network.subnet for user, ip in writers
    ), writers


def reconciles(operator_pod: dict[str, Any], kind: str) -> float:
    """How many reconciles of ``kind`` the operator in ``operator_pod`` has finished."""
    url = f"http://{operator_pod['status']['podIP']}:8080/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "recsys_operator_reconcile_duration_seconds_count"
                and sample.labels.get("kind") == kind
            ):
                return float(sample.value)
    return 0.0


def owned_objects(world: RealNodeWorld, ns: str) -> list[str]:
    out = world.testbed.kubectl("get", "jobs,cronjobs", "-n", ns, "-o", "json").stdout
    return sorted(f"{o['kind']}/{o['metadata']['name']}" for o in json.loads(out)["items"])


def test_a_killed_operator_pod_is_restarted_and_creates_nothing_twice(
    real_node_world: RealNodeWorld, release: Release, feature_view: dict[str, Any]
) -> None:
    world = real_node_world
    ns = feature_view["metadata"]["namespace"]
    before = owned_objects(world, ns)
    assert len([o for o in before if o.startswith("CronJob/")]) == 1, before
    assert len([o for o in before if o.startswith("Job/")]) == 1, before

    old = eventually(lambda: ready_pod(world, release), 60, "Ready operator pod")
    world.testbed.kubectl(
        "delete", "pod", "-n", release.namespace, old["metadata"]["name"],
        "--grace-period=0", "--force", "--wait=false",
    )  # fmt: skip
    new = eventually(
        lambda: ready_pod(world, release, not_uid=old["metadata"]["uid"]),
        120,
        "Ready replacement operator pod",
    )
    assert new["spec"]["nodeName"] == world.node_name

    # The new operator has reconciled the FeatureView (its own /metrics, read on its pod's
    # address) before the Jobs and CronJobs are counted again.
    eventually(
        lambda: reconciles(new, "FeatureView") > 0, 60, "FeatureView reconcile by the new pod"
    )
    after = owned_objects(world, ns)
    assert after == before
    obj = get(world.testbed, "featureview", "users", ns)
    assert obj is not None
    assert condition(obj, "Materialized")["status"] == "True"  # type: ignore[index]


# --- a whole Recommender ---------------------------------------------------------------------


def diagnosis(world: RealNodeWorld, ns: str, release: Release) -> str:
    """What to read when the Recommender did not get there: its status, its pods, the
    operator's log tail."""
    tb = world.testbed
    status = json.dumps((get(tb, "recommender", "movies", ns) or {}).get("status"), indent=1)
    versions = tb.kubectl("get", "modelversions", "-n", ns, "-o", "yaml", check=False).stdout
    pods = tb.kubectl("describe", "pods", "-n", ns, check=False).stdout
    logs = tb.kubectl("logs", "-n", release.namespace, "-l", release.selector, "--tail=40",
                      check=False).stdout  # fmt: skip
    return (f"status:\n{status[-3000:]}\nversions:\n{versions[-3000:]}\npods:\n{pods[-5000:]}"
            f"\noperator:\n{logs}")  # fmt: skip


def claim(world: RealNodeWorld, ns: str, folder: Path) -> str:
    """A PersistentVolume on ``folder`` of the node (what a local-storage provisioner makes),
    bound to a claim of ``ns``; returns the claim's name. The pods run as 65532: the folder is
    theirs."""
    subprocess.run(["chown", "-R", "65532:65532", str(folder)], check=True)
    name = f"movies-data-{uuid.uuid4().hex[:6]}"
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": str(folder), "type": "Directory"},
        },
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "movies-data", "namespace": ns},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "volumeName": name,
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    world.testbed.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                               "items": [pv, pvc]}))  # fmt: skip
    return "movies-data"


@pytest.mark.parametrize("store", ["s3", "pvc"])
def test_a_recommender_trains_indexes_and_serves_on_the_node_through_its_service(
    real_node_world: RealNodeWorld,
    release: Release,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    store: str,
) -> None:
    """The whole online path in containers: the training Job (trainer image, CPU), the index
    Job, Triton (its init container builds the repository from the artifact) and the gateway,
    all made by the operator pod from one Recommender; then a pod of the namespace asks the
    gateway's Service, by its cluster DNS name, and gets the model's list (the gateway reaches
    Triton by its Service name too). The data and artifacts are in S3 (with the example's
    Secret), or on a PersistentVolume that every pod mounts (``pvc://``)."""
    world = real_node_world
    tb = world.testbed
    ns = world.namespace(f"movies-{uuid.uuid4().hex[:6]}")
    if store == "s3":
        point_environment_at(world.s3, monkeypatch)
        bucket = f"movies-{uuid.uuid4().hex[:6]}"
        world.s3.create_bucket(bucket)
        movielens.write_dataset(f"s3://{bucket}/ml-100k")
        artifact_secret(world, ns)
        root = f"s3://{bucket}"
        artifacts = {"storageUri": f"{root}/artifacts", "secretRef": {"name": "artifact-store"}}
    else:
        movielens.write_dataset(str(tmp_path / "claim" / "ml-100k"))
        root = f"pvc://{claim(world, ns, tmp_path / 'claim')}"
        artifacts = {"storageUri": f"{root}/artifacts"}
    rec = {
        "apiVersion": "recsys.dev/v1alpha1",
        "kind": "Recommender",
        "metadata": {"name": "movies"},
        "spec": {
            "interactions": {"path": f"{root}/ml-100k/interactions.parquet"},
            "featureViews": {"user": [], "item": []},
            "retrieval": {"embeddingDim": 16, "numCandidates": 50},
            "training": {
                # long enough (tens of seconds) for the operator pod to be killed mid-training
                "hyperParameters": {"epochs": 2, "batchSize": 512, "maxStepsPerEpoch": 60},
                # a model trained for seconds: the gate asks only that it was evaluated
                "evaluation": {
                    "metrics": [{"name": "recallAtK", "thresholdRange": {"min": 0.0}}],
                    "baseline": {"name": "none"},
                },
            },
            "serving": {"triton": {"replicas": 1}, "gateway": {"replicas": 1}},
            "stores": {
                "redis": {"url": world.redis.url_for_db(4)},
                "artifacts": artifacts,
            },
        },
    }
    tb.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(rec))

    # The operator pod is killed while the training pod runs; the Deployment starts another.
    def training() -> bool:
        job = "batch.kubernetes.io/job-name=movies-v1-train"
        out = tb.kubectl("get", "pods", "-n", ns, "-l", job, "-o", "json").stdout
        return any(p["status"].get("phase") == "Running" for p in json.loads(out)["items"])

    try:
        eventually(training, 300, "a Running training pod")
    except AssertionError:
        raise AssertionError(diagnosis(world, ns, release)) from None
    old = eventually(lambda: ready_pod(world, release), 60, "Ready operator pod")
    tb.kubectl(
        "delete", "pod", "-n", release.namespace, old["metadata"]["name"],
        "--grace-period=0", "--force", "--wait=false",
    )  # fmt: skip
    job = get(tb, "job", "movies-v1-train", ns)
    assert job is not None
    assert not job["status"].get("succeeded"), "the training ended before the operator was killed"
    eventually(lambda: ready_pod(world, release, not_uid=old["metadata"]["uid"]), 120,
               "Ready replacement operator pod")  # fmt: skip

    def ready() -> dict[str, Any] | None:
        obj = get(tb, "recommender", "movies", ns)
        cond = condition(obj, "Ready")
        return obj if cond and cond["status"] == "True" else None

    try:
        obj = eventually(ready, 600, "a Ready Recommender")
    except AssertionError:
        raise AssertionError(diagnosis(world, ns, release)) from None
    stable = obj["status"]["rollout"]["stable"]

    gateway = f"http://movies-gateway.{ns}.svc:{GATEWAY_PORT}/v1/recommendations"
    client = python_pod(
        "client",
        # A cold Triton's first calls may miss the gateway's scoring deadline (the documented
        # fallback answers them): ask until the models answer, for up to a minute.
        "import json, time, urllib.request\n"
        "for attempt in range(1, 61):\n"
        f"    with urllib.request.urlopen({gateway!r} + '?user_id=1', timeout=30) as r:\n"
        "        body = json.loads(r.read())\n"
        "    if body['fallback'] is None:\n"
        "        break\n"
        "    time.sleep(1)\n"
        "body['attempts'] = attempt\n"
        "open('/dev/termination-log', 'w').write(json.dumps(body))\n",
    )
    client["spec"]["containers"][0]["image"] = world.images["workloads"]
    tb.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(client))
    try:
        done = eventually(
            lambda: (
                (p := pod(world, ns, "client"))["status"].get("phase") in ("Succeeded", "Failed")
                and p
            ),
            180,
            "the client pod's answer",
        )
    except AssertionError:
        raise AssertionError(diagnosis(world, ns, release)) from None
    state = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert done["status"]["phase"] == "Succeeded", (state, diagnosis(world, ns, release))
    body = json.loads(state["message"])
    print(f"\nreal node: {stable} answered user 1 with {len(body['items'])} items: {body}")
    assert body["modelVersion"] == stable
    assert body["index"].startswith(f"{root}/artifacts/"), body
    # Triton scored it (no fallback, a scoring stage): the gateway found it by its name
    assert (body["fallback"], body["source"]) == (None, "live"), body
    assert body["timingsMs"]["scoring"] > 0, body
    assert body["items"], body

    # Every pod the operator made ran on the node, in containers, from the built images.
    pods = json.loads(tb.kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"]
    images_run = {
        c["image"] for p in pods for c in p["status"].get("containerStatuses", [])
        + p["status"].get("initContainerStatuses", [])
    }  # fmt: skip
    assert {p["spec"]["nodeName"] for p in pods} == {world.node_name}
    assert {world.images[k] for k in ("workloads", "trainer", "triton")} <= images_run, images_run
    # Nothing was created twice across the operator's restart (the audit log's accepted creates).
    kinds = {"jobs", "cronjobs", "deployments", "services", "configmaps", "modelversions"}
    creates = Counter(
        (ref["resource"], ref.get("name"))
        for e in audit_events(world)
        if e["verb"] == "create"
        and (ref := e["objectRef"]).get("namespace") == ns
        and ref.get("resource") in kinds
        and ref.get("subresource") is None
        and e["responseStatus"]["code"] == 201
    )
    assert ("jobs", "movies-v1-train") in creates, creates
    assert ("modelversions", stable) in creates, creates
    assert [k for k, n in creates.items() if n > 1] == [], creates
