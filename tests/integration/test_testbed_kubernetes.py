"""Proof that the control plane is real: each test here fails against a mock API server.

Controllers really run (Jobs complete, Deployments get ready replicas, the garbage collector
cascades), the apiserver really enforces (server-side-apply conflicts, optimistic concurrency,
structural schemas, CEL, Pod Security, RBAC).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap

from fixtures.kube import Testbed

pytestmark = pytest.mark.testbed


def eventually(check: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} did not hold within {timeout} s")


def get_json(testbed: Testbed, *args: str) -> dict:  # type: ignore[type-arg]
    return json.loads(testbed.kubectl("get", *args, "-o", "json").stdout)


def apply(testbed: Testbed, obj: dict, namespace: str | None = None) -> None:  # type: ignore[type-arg]
    ns = ["-n", namespace] if namespace else []
    testbed.kubectl("apply", *ns, "-f", "-", input=json.dumps(obj))


def test_job_is_scheduled_on_the_fake_node_and_completes(testbed: Testbed, namespace: str) -> None:
    apply(
        testbed,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "train"},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "main",
                                "image": "example.invalid/train:1",
                                "resources": {"limits": {"nvidia.com/gpu": "1"}},
                            }
                        ],
                    }
                },
            },
        },
        namespace,
    )
    testbed.kubectl(
        "wait", "-n", namespace, "--for=condition=Complete", "job/train", "--timeout=90s"
    )
    pods = get_json(testbed, "pods", "-n", namespace, "-l", "job-name=train")["items"]
    assert len(pods) == 1
    assert pods[0]["spec"]["nodeName"] == "kwok-gpu-node-0"
    assert pods[0]["status"]["phase"] == "Succeeded"


def test_deployment_gets_ready_replicas(testbed: Testbed, namespace: str) -> None:
    labels = {"app": "web"}
    apply(
        testbed,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "web", "image": "example.invalid/web:1"}]},
                },
            },
        },
        namespace,
    )
    testbed.kubectl("rollout", "status", "-n", namespace, "deployment/web", "--timeout=90s")
    assert get_json(testbed, "deployment", "web", "-n", namespace)["status"]["readyReplicas"] == 2


def test_deleting_an_owner_garbage_collects_its_children(testbed: Testbed, namespace: str) -> None:
    apply(
        testbed, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}}, namespace
    )
    owner_uid = get_json(testbed, "configmap", "owner", "-n", namespace)["metadata"]["uid"]
    apply(
        testbed,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "child",
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}
                ],
            },
        },
        namespace,
    )
    testbed.kubectl("delete", "configmap", "owner", "-n", namespace)

    def child_gone() -> bool:
        out = testbed.kubectl("get", "configmap", "child", "-n", namespace, check=False)
        return "NotFound" in out.stderr

    eventually(child_gone, 60, "garbage collection of the child")


def test_server_side_apply_conflict_is_409(testbed: Testbed, namespace: str) -> None:
    client = testbed.client(namespace)
    cm = ConfigMap(metadata=ObjectMeta(name="shared", namespace=namespace), data={"k": "one"})
    client.apply(cm, field_manager="manager-a")
    cm_b = ConfigMap(metadata=ObjectMeta(name="shared", namespace=namespace), data={"k": "two"})
    with pytest.raises(ApiError) as err:
        client.apply(cm_b, field_manager="manager-b")
    assert err.value.status.code == 409
    assert "manager-a" in (err.value.status.message or "")
    # Forcing takes ownership: the conflict was about ownership, not a broken request.
    assert client.apply(cm_b, field_manager="manager-b", force=True).data == {"k": "two"}


def test_update_with_stale_resource_version_is_409(testbed: Testbed, namespace: str) -> None:
    client = testbed.client(namespace)
    created = client.create(ConfigMap(metadata=ObjectMeta(name="cas"), data={"v": "1"}))
    first = client.get(ConfigMap, "cas")
    first.data = {"v": "2"}
    client.replace(first)
    stale = created  # still carries the resourceVersion from before the replace
    stale.data = {"v": "3"}
    with pytest.raises(ApiError) as err:
        client.replace(stale)
    assert err.value.status.code == 409
    assert client.get(ConfigMap, "cas").data == {"v": "2"}


def _crd(group: str, schema: dict, validations: list | None = None) -> dict:  # type: ignore[type-arg]
    spec_schema = dict(schema)
    if validations:
        spec_schema["x-kubernetes-validations"] = validations
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "properties": {"spec": spec_schema}}
                    },
                }
            ],
        },
    }


def test_non_structural_crd_is_rejected(testbed: Testbed) -> None:
    group = f"g{uuid.uuid4().hex[:8]}.recsys-tests.dev"
    untyped = {"properties": {"replicas": {"type": "integer"}}}  # object fields without a type
    out = testbed.kubectl("create", "-f", "-", input=json.dumps(_crd(group, untyped)), check=False)
    assert out.returncode != 0
    assert "must not be empty for specified object fields" in out.stderr


def test_cel_rule_rejects_with_its_message(testbed: Testbed, namespace: str) -> None:
    group = f"g{uuid.uuid4().hex[:8]}.recsys-tests.dev"
    schema = {
        "type": "object",
        "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
    }
    rule = {"rule": "self.min <= self.max", "message": "spec.min must not exceed spec.max"}
    testbed.kubectl("create", "-f", "-", input=json.dumps(_crd(group, schema, [rule])))
    testbed.kubectl("wait", "--for=condition=Established", f"crd/widgets.{group}", "--timeout=30s")
    try:

        def widget(lo: int, hi: int, name: str) -> str:
            return json.dumps(
                {
                    "apiVersion": f"{group}/v1",
                    "kind": "Widget",
                    "metadata": {"name": name},
                    "spec": {"min": lo, "max": hi},
                }
            )

        ok = testbed.kubectl(
            "create", "-n", namespace, "-f", "-", input=widget(1, 2, "good"), check=False
        )
        assert ok.returncode == 0, ok.stderr
        bad = testbed.kubectl(
            "create", "-n", namespace, "-f", "-", input=widget(3, 2, "bad"), check=False
        )
        assert bad.returncode != 0
        assert "spec.min must not exceed spec.max" in bad.stderr
    finally:
        testbed.kubectl("delete", "crd", f"widgets.{group}", "--wait=false", check=False)


def test_privileged_pod_is_refused_under_restricted_pod_security(
    testbed: Testbed, namespace: str
) -> None:
    testbed.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "root"},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "example.invalid/x:1",
                    "securityContext": {"privileged": True},
                }
            ]
        },
    }
    out = testbed.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(pod), check=False)
    assert out.returncode != 0
    assert "violates PodSecurity" in out.stderr
    assert "privileged" in out.stderr


def _token_kubeconfig(testbed: Testbed, token: str, path: Path) -> Path:
    config = json.loads(testbed.kubeconfig.read_text())
    config["users"] = [{"name": "sa", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "sa"
    path.write_text(json.dumps(config))
    return path


def test_service_account_needs_a_role(testbed: Testbed, namespace: str, tmp_path: Path) -> None:
    testbed.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    token = testbed.kubectl("create", "token", "reader", "-n", namespace).stdout.strip()
    kubeconfig = _token_kubeconfig(testbed, token, tmp_path / "sa.kubeconfig")

    def list_configmaps() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(testbed.kubectl_path),
                "--kubeconfig",
                str(kubeconfig),
                "get",
                "configmaps",
                "-n",
                namespace,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )

    denied = list_configmaps()
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr
    assert f"system:serviceaccount:{namespace}:reader" in denied.stderr

    testbed.kubectl(
        "create", "role", "cm-reader", "-n", namespace, "--verb=get,list", "--resource=configmaps"
    )
    testbed.kubectl(
        "create",
        "rolebinding",
        "cm-reader",
        "-n",
        namespace,
        "--role=cm-reader",
        f"--serviceaccount={namespace}:reader",
    )
    eventually(lambda: list_configmaps().returncode == 0, 30, "RBAC to take effect")
