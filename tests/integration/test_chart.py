"""The Helm chart: it lints, renders both watch scopes, refuses bad values with the field's
name, installs onto the real control plane, and grants exactly the RBAC the operator uses.

The proof of the RBAC is empirical: the chart is installed, a token is taken for its
ServiceAccount, and the real operator process runs locally with a kubeconfig that holds only
that token (the Deployment's own pod is played by kwok). A whole lifecycle (CronJob, training,
index, serving, a second version promoted, the first pruned) must complete with no RBAC denial
in the operator's log or in the apiserver's audit log, for a Role per namespace and for the
ClusterRole. Each rule's necessity was checked by removing it (see the chart's _rbac.tpl); one
removal is kept here as the failure path.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_operator_lifecycle import STACK as LIFECYCLE_STACK
from test_operator_lifecycle import (
    _online_store,  # noqa: F401 (autouse: the Recommender's Redis)
    index_summary,
    rollout,
    train_summary,
)
from test_operator_lifecycle import apply_stack as lifecycle_apply_stack

from fixtures.kube import Testbed
from fixtures.operator import (
    CRDS,
    REPO,
    OperatorProcess,
    condition,
    eventually,
    finish_pod,
    get,
    materialize,
)
from recsys_operator import images
from testbed.processes import free_port

pytestmark = pytest.mark.testbed

CHART = REPO / "charts" / "recsys-operator"
#: The Go-built helm reports no Kubernetes version of its own for offline rendering.
KUBE_VERSION = "1.36.3"
CRD_NAMES = ("featureviews.recsys.dev", "modelversions.recsys.dev", "recommenders.recsys.dev")
#: What an RBAC denial looks like in the operator's log: the apiserver's message ("... is
#: forbidden: User "system:serviceaccount:..." cannot patch resource ...") and kopf's warnings
#: when it falls back for lack of permissions.
RBAC_DENIAL = re.compile(r"cannot \w+ resource|is forbidden: User|Not enough permissions")


# --- helm -----------------------------------------------------------------------------------


@dataclass
class Helm:
    testbed: Testbed
    workdir: Path

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.testbed.helm_path), "--kubeconfig", str(self.testbed.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=180,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
        return result

    def values_file(self, values: Mapping[str, Any]) -> Path:
        path = self.workdir / f"values-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump(dict(values)))
        return path

    def template(
        self, values: Mapping[str, Any], *extra: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self(
            "template", "rel", str(CHART), "--namespace", "ops", "--kube-version", KUBE_VERSION,
            "--values", str(self.values_file(values)), *extra, check=check,
        )  # fmt: skip

    def render(self, values: Mapping[str, Any], *extra: str) -> list[dict[str, Any]]:
        return [d for d in yaml.safe_load_all(self.template(values, *extra).stdout) if d]

    @contextlib.contextmanager
    def installed(
        self, release: str, namespace: str, values: Mapping[str, Any]
    ) -> Iterator[subprocess.CompletedProcess[str]]:
        out = self(
            "install", release, str(CHART), "--namespace", namespace,
            "--values", str(self.values_file(values)), "--wait", "--timeout", "90s",
        )  # fmt: skip
        try:
            yield out
        finally:
            self("uninstall", release, "--namespace", namespace, "--wait", "--timeout", "60s",
                 check=False)  # fmt: skip


@pytest.fixture
def helm(testbed: Testbed, tmp_path: Path) -> Helm:
    return Helm(testbed, tmp_path)


def kinds(docs: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for doc in docs:
        out.setdefault(doc["kind"], []).append(doc)
    return out


def operator_container(docs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    (deployment,) = kinds(docs)["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


# --- rendering ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"watchNamespaces": ["team-a", "team-b"]},
        {"podDisruptionBudget": {"enabled": True}, "networkPolicy": {"enabled": True}},
        {"replicas": 2},
        {"leaderElection": {"enabled": False}},
    ],
    ids=["defaults", "namespaced", "optional-objects", "two-replicas", "no-leader-election"],
)
def test_lint_is_clean(helm: Helm, values: dict[str, Any]) -> None:
    out = helm("lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART),
               "--values", str(helm.values_file(values)))  # fmt: skip
    assert "0 chart(s) failed" in out.stdout
    assert "[WARNING]" not in out.stdout
    assert "[ERROR]" not in out.stdout


def test_defaults_watch_all_namespaces_with_a_cluster_role(helm: Helm) -> None:
    docs = helm.render({})
    by_kind = kinds(docs)
    assert set(by_kind) == {
        "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service",
        "Deployment",
    }  # fmt: skip
    # the leader election's Role, the only namespaced one
    assert [r["metadata"]["name"] for r in by_kind["Role"]] == [
        "rel-recsys-operator-leader-election"
    ]
    (binding,) = by_kind["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == by_kind["ClusterRole"][0]["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rel-recsys-operator", "namespace": "ops"}
    ]
    container = operator_container(docs)
    assert container["args"][:1] == ["--all-namespaces"]
    assert "--namespace" not in container["args"]
    flags = container["args"][1:]
    assert flags.pop(flags.index("--leader-elect")) == "--leader-elect"
    args = dict(zip(flags[0::2], flags[1::2], strict=True))
    assert args == {
        "--metrics-port": "8080", "--health-port": "8081", "--workers": "8",
        "--leader-election-name": "rel-recsys-operator", "--leader-election-namespace": "ops",
        "--leader-election-lease-duration": "15", "--leader-election-renew-deadline": "10",
        "--leader-election-retry-period": "2",
    }  # fmt: skip
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    (pod_name,) = [e for e in container["env"] if e["name"] == "POD_NAME"]
    assert pod_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # the references `make images` tags (images/build.sh) and the operator's own defaults
    assert env["RECSYS_WORKLOADS_IMAGE"] == images.reference("workloads")
    assert env["RECSYS_TRAINER_IMAGE"] == images.reference("trainer")
    assert env["RECSYS_GATEWAY_IMAGE"] == images.reference("workloads")
    assert env["RECSYS_TRITON_IMAGE"] == images.reference("triton")
    assert container["image"] == images.reference("operator")
    probe = container["livenessProbe"]["httpGet"]
    assert probe == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    (service,) = by_kind["Service"]
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"image": {"repository": "reg.example:5000/team/recsys-operator"}},
         {"operator": "reg.example:5000/team/recsys-operator:{v}",
          "RECSYS_WORKLOADS_IMAGE": "reg.example:5000/team/recsys-workloads:{v}",
          "RECSYS_TRAINER_IMAGE": "reg.example:5000/team/recsys-trainer:{v}",
          "RECSYS_GATEWAY_IMAGE": "reg.example:5000/team/recsys-workloads:{v}",
          "RECSYS_TRITON_IMAGE": "reg.example:5000/team/recsys-triton:{v}"}),
        ({"image": {"repository": "localhost/recsys-operator", "tag": "dev"}},
         {"operator": "localhost/recsys-operator:dev",
          "RECSYS_WORKLOADS_IMAGE": "localhost/recsys-workloads:dev",
          "RECSYS_TRAINER_IMAGE": "localhost/recsys-trainer:dev",
          "RECSYS_GATEWAY_IMAGE": "localhost/recsys-workloads:dev",
          "RECSYS_TRITON_IMAGE": "localhost/recsys-triton:dev"}),
        ({"workloadImages": {"triton": "nvcr.io/nvidia/tritonserver:25.01-py3"}},
         {"operator": "ghcr.io/recsys-dev/recsys-operator:{v}",
          "RECSYS_WORKLOADS_IMAGE": "ghcr.io/recsys-dev/recsys-workloads:{v}",
          "RECSYS_TRAINER_IMAGE": "ghcr.io/recsys-dev/recsys-trainer:{v}",
          "RECSYS_GATEWAY_IMAGE": "ghcr.io/recsys-dev/recsys-workloads:{v}",
          "RECSYS_TRITON_IMAGE": "nvcr.io/nvidia/tritonserver:25.01-py3"}),
    ],
    ids=["own-registry", "own-tag", "one-image-named"],
)  # fmt: skip
def test_workload_images_follow_the_operator_image(
    helm: Helm, values: dict[str, Any], expected: dict[str, str]
) -> None:
    """Empty workload images sit beside the operator's image with its tag, so one
    ``--set image.repository=...`` moves all four images to another registry."""
    container = operator_container(helm.render(values))
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    got = {"operator": container["image"]} | {k: env[k] for k in expected if k != "operator"}
    assert got == {k: v.format(v=images.VERSION) for k, v in expected.items()}


def test_the_pod_runs_with_least_privilege(helm: Helm) -> None:
    docs = helm.render({})
    (deployment,) = kinds(docs)["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    # With leader election the new pod waits as a standby while the old one still leads.
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }  # fmt: skip
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = operator_container(docs)["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_without_leader_election_one_operator_at_a_time(helm: Helm) -> None:
    docs = helm.render({"leaderElection": {"enabled": False}})
    (deployment,) = kinds(docs)["Deployment"]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # never two operators at once
    assert not [a for a in operator_container(docs)["args"] if a.startswith("--leader")]
    assert "Role" not in kinds(docs)


def test_leader_election_gets_exactly_its_lease_in_the_release_namespace(helm: Helm) -> None:
    values = {
        "replicas": 2,
        "watchNamespaces": ["team-a"],
        "leaderElection": {"enabled": True, "leaseDuration": 30, "renewDeadline": 20,
                           "retryPeriod": 4},
    }  # fmt: skip
    by_kind = kinds(helm.render(values))
    (role,) = [r for r in by_kind["Role"] if r["metadata"]["name"].endswith("-leader-election")]
    assert role["metadata"]["namespace"] == "ops"  # the release's, not a watched one
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": ["rel-recsys-operator"], "verbs": ["get", "update"]},
    ]  # fmt: skip
    (binding,) = [b for b in by_kind["RoleBinding"] if b["metadata"]["name"] == "rel-recsys-"
                  "operator-leader-election"]  # fmt: skip
    assert binding["metadata"]["namespace"] == "ops"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}  # fmt: skip
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rel-recsys-operator", "namespace": "ops"}
    ]
    # No other rule anywhere names leases.
    others = [r for r in by_kind["Role"] if r is not role]
    assert not [rule for r in others for rule in r["rules"] if "leases" in rule["resources"]]
    (deployment,) = by_kind["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    args = operator_container(list(by_kind["Deployment"]))["args"]
    assert args[args.index("--leader-election-lease-duration") + 1] == "30"
    assert args[args.index("--leader-election-renew-deadline") + 1] == "20"
    assert args[args.index("--leader-election-retry-period") + 1] == "4"
    # Two replicas: a budget keeps one through node drains.
    (pdb,) = by_kind["PodDisruptionBudget"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def test_a_single_replica_gets_no_budget_unless_asked(helm: Helm) -> None:
    assert "PodDisruptionBudget" not in kinds(helm.render({}))


def test_a_namespace_list_gets_a_role_in_each_and_nothing_cluster_wide(helm: Helm) -> None:
    docs = helm.render({"watchNamespaces": ["team-a", "team-b"], "leaderElection": {
        "enabled": False}})  # fmt: skip
    by_kind = kinds(docs)
    assert "ClusterRole" not in by_kind
    assert "ClusterRoleBinding" not in by_kind
    assert sorted(r["metadata"]["namespace"] for r in by_kind["Role"]) == ["team-a", "team-b"]
    for binding in by_kind["RoleBinding"]:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "rel-recsys-operator",
        }
        assert binding["subjects"][0]["namespace"] == "ops"  # the operator's own namespace
    args = operator_container(docs)["args"]
    assert args[:4] == ["--namespace", "team-a", "--namespace", "team-b"]
    assert "--all-namespaces" not in args


def test_rules_are_the_same_in_both_scopes_and_name_every_verb(helm: Helm) -> None:
    cluster_rules = kinds(helm.render({}))["ClusterRole"][0]["rules"]
    roles = [
        role
        for role in kinds(helm.render({"watchNamespaces": ["team-a", "team-b"]}))["Role"]
        if not role["metadata"]["name"].endswith("-leader-election")
    ]
    assert len(roles) == 2
    assert all(role["rules"] == cluster_rules for role in roles)
    for rule in cluster_rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
    granted = {
        (group, resource, verb)
        for rule in cluster_rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    # Read access to the world beyond the operator's own kinds and children stays out.
    assert not {r for _, r, _ in granted} & {"secrets", "namespaces", "nodes", "leases"}
    assert ("", "pods", "list") in granted
    assert ("", "pods", "get") not in granted


def test_redis_password_secrets_are_readable_by_name_only_when_listed(helm: Helm) -> None:
    listed = kinds(helm.render({"rbac": {"redisPasswordSecrets": ["redis-auth"]}}))
    (rule,) = [r for r in listed["ClusterRole"][0]["rules"] if "secrets" in r["resources"]]
    assert rule == {
        "apiGroups": [""], "resources": ["secrets"], "resourceNames": ["redis-auth"],
        "verbs": ["get"],
    }  # fmt: skip


def test_optional_objects_render_when_enabled(helm: Helm) -> None:
    values = {
        "podDisruptionBudget": {"enabled": True},
        "networkPolicy": {
            "enabled": True,
            "apiServerCIDRs": ["10.0.0.1/32"],
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}],
        },
        "metrics": {"port": 9090, "serviceMonitor": {"enabled": True, "labels": {"r": "p"}}},
        "priorityClassName": "system-cluster-critical",
        "nodeSelector": {"pool": "system"},
        "tolerations": [{"key": "dedicated", "operator": "Exists"}],
    }
    docs = helm.render(values, "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor")
    by_kind = kinds(docs)
    assert by_kind["PodDisruptionBudget"][0]["spec"]["maxUnavailable"] == 1
    policy = by_kind["NetworkPolicy"][0]["spec"]
    assert policy["ingress"][0]["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    api = policy["egress"][-1]
    assert api["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    assert {p["port"] for p in api["ports"]} == {443, 6443}
    monitor = by_kind["ServiceMonitor"][0]
    assert monitor["metadata"]["labels"]["r"] == "p"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    pod = by_kind["Deployment"][0]["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == {"pool": "system"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert {p["name"]: p["containerPort"] for p in pod["containers"][0]["ports"]} == {
        "metrics": 9090,
        "health": 8081,
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"replicas": 2, "leaderElection": {"enabled": False}},
            "replicas is 2 but leaderElection.enabled is false",
        ),
        ({"replicas": -1}, "at '/replicas': minimum: got -1, want 0"),
        (
            {"leaderElection": {"enabled": True, "renewDeadline": 15}},
            "leaderElection.renewDeadline (15) must be less than leaderElection.leaseDuration (15)",
        ),
        (
            {"leaderElection": {"enabled": True, "retryPeriod": 10}},
            "leaderElection.retryPeriod (10) must be less than leaderElection.renewDeadline (10)",
        ),
        (
            {"leaderElection": {"enabled": True, "leaseDuration": 0}},
            "at '/leaderElection/leaseDuration'",
        ),
        ({"watchNamespaces": ["Team_A"]}, "at '/watchNamespaces/0': 'Team_A' does not match"),
        ({"watchNamespaces": ["a", "a"]}, "at '/watchNamespaces'"),
        ({"watchNamespace": ["a"]}, "additional properties 'watchNamespace' not allowed"),
        ({"metrics": {"port": 70000}}, "at '/metrics/port': maximum"),
        ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy': value must be one of"),
        ({"workloadImages": {"triton": "a b"}}, "at '/workloadImages/triton'"),
        ({"logLevel": "trace"}, "at '/logLevel'"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "at '/podSecurityContext/runAsNonRoot'"),
        ({"health": {"port": 8080}}, "metrics.port and health.port are both 8080"),
        ({"serviceAccount": {"create": False}}, "serviceAccount.name is required"),
        (
            {"metrics": {"serviceMonitor": {"enabled": True}}},
            "does not serve monitoring.coreos.com/v1 ServiceMonitor",
        ),
    ],
    ids=lambda v: "" if isinstance(v, str) else json.dumps(v, separators=(",", ":")),
)
def test_bad_values_fail_with_the_field_named(
    helm: Helm, values: dict[str, Any], message: str
) -> None:
    out = helm.template(values, check=False)
    assert out.returncode != 0, out.stdout[:500]
    assert message in out.stderr, out.stderr


# --- on the control plane -------------------------------------------------------------------


@contextlib.contextmanager
def extra_namespace(testbed: Testbed, name: str) -> Iterator[str]:
    testbed.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        testbed.kubectl("delete", "namespace", name, "--wait=false", check=False)


def chart_values(watch: Sequence[str], testbed: Testbed) -> dict[str, Any]:
    # kwok plays the Deployment's pod on the local control plane; on a real cluster the image
    # would run an operator beside the one under test, so none is started there.
    replicas = 1 if testbed.control_plane is not None else 0
    return {"watchNamespaces": list(watch), "replicas": replicas}


def token_kubeconfig(testbed: Testbed, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig whose only credential is a token of ``account``: the operator can do what
    the chart's RBAC grants and nothing else."""
    current = json.loads(
        testbed.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout
    )
    token = testbed.kubectl(
        "create", "token", account, "-n", namespace, "--duration=1h"
    ).stdout.strip()
    cluster = current["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": cluster["name"], "user": account}}],
        "current-context": account,
    }
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    who = testbed.kubectl("--kubeconfig", str(path), "auth", "whoami", "-o", "json")
    assert json.loads(who.stdout)["status"]["userInfo"]["username"] == (
        f"system:serviceaccount:{namespace}:{account}"
    )
    return path


@contextlib.contextmanager
def operator_as(
    kubeconfig: Path, log: Path, scope_args: Sequence[str]
) -> Iterator[OperatorProcess]:
    proc = OperatorProcess("", kubeconfig, log, free_port(), scope_args=tuple(scope_args))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def _chart_stack(docs: list[dict[str, Any]]) -> None:
    """The lifecycle test's stack, promoted without canary steps or rollback window, keeping
    no history and trained without GPU placement."""
    spec = docs[1]["spec"]
    spec["serving"] = {"rollout": {"steps": [], "rollbackWindow": "0s"}}
    spec["revisionHistoryLimit"] = 0
    del spec["training"]["gpusPerNode"], spec["training"]["nodeSelector"]


def apply_stack(testbed: Testbed, ns: str) -> None:
    lifecycle_apply_stack(testbed, ns, _chart_stack)


def until(
    check: Callable[[], Any], what: str, operator: OperatorProcess, timeout: float = 60
) -> Any:
    """``eventually``, failing fast when the operator process has died."""

    def alive_check() -> Any:
        assert operator.popen is not None
        code = operator.popen.poll()
        assert code is None, f"the operator exited ({code}):\n{operator.tail()}"
        return check()

    return eventually(alive_check, timeout, what, operator=operator)


def phase(testbed: Testbed, ns: str, name: str) -> str | None:
    return ((get(testbed, "modelversion", name, ns) or {}).get("status") or {}).get("phase")


def walk_one_version(
    testbed: Testbed, ns: str, version: str, recall: float, operator: OperatorProcess
) -> None:
    def reached(want: str) -> Callable[[], bool]:
        return lambda: phase(testbed, ns, version) == want

    until(reached("Training"), f"{version} Training", operator)
    finish_pod(testbed, ns, f"{version}-train", exit_code=0,
               summary=train_summary(version, recall))  # fmt: skip
    until(reached("Indexing"), f"{version} Indexing", operator)
    finish_pod(testbed, ns, f"{version}-index", exit_code=0, summary=index_summary(version))
    until(reached("Ready"), f"{version} Ready", operator)
    until(lambda: rollout(testbed, ns).get("stable") == version, f"{version} stable", operator)
    until(lambda: get(testbed, "deployment", f"movies-triton-{version}", ns),
          f"{version}'s Triton Deployment", operator)  # fmt: skip


def walk_the_lifecycle(testbed: Testbed, ns: str, operator: OperatorProcess) -> None:
    """Every verb of the chart's rules in use: children applied (create through server-side
    apply, then patch), Jobs created and their pods listed, status patched, Events created, a
    second version promoted, the first one pruned and its Triton Deployment and Service deleted.
    """
    apply_stack(testbed, ns)
    until(lambda: get(testbed, "cronjob", "users-materialize", ns), "the CronJob", operator)
    fv = until(
        lambda: condition(get(testbed, "featureview", "users", ns), "Ready"),
        "FeatureView status", operator,
    )  # fmt: skip
    assert (fv["status"], fv["reason"]) == ("False", "NotMaterialized"), fv
    # A run the operator did not start (as the CronJob's are): its pod listed, status patched.
    materialize(testbed, ns)

    def live() -> Any:
        ready = condition(get(testbed, "featureview", "users", ns), "Ready")
        return ready if ready and ready["status"] == "True" else None

    until(live, "FeatureView Ready once its data is live", operator)
    for version, recall in (("movies-v1", 0.12), ("movies-v2", 0.15)):
        walk_one_version(testbed, ns, version, recall, operator)
        if version == "movies-v1":
            testbed.kubectl("annotate", "-n", ns, "recommender/movies", "recsys.dev/retrain=1")
    until(lambda: get(testbed, "modelversion", "movies-v1", ns) is None,
          "movies-v1 pruned (revisionHistoryLimit 0)", operator)  # fmt: skip
    until(
        lambda: get(testbed, "deployment", "movies-triton-movies-v1", ns) is None
        and get(testbed, "service", "movies-triton-movies-v1", ns) is None,
        "movies-v1's Triton Deployment and Service removed", operator,
    )  # fmt: skip
    rec = get(testbed, "recommender", "movies", ns)
    assert rec is not None
    assert rec["status"]["rollout"]["stable"] == "movies-v2"
    events = testbed.kubectl("get", "events", "-n", ns, "-o", "json").stdout
    reasons = {e["reason"] for e in json.loads(events)["items"]}
    assert {"TrainingRequested", "Promoted", "VersionPruned"} <= reasons, reasons


def denials_in_audit_log(testbed: Testbed, user: str) -> list[str]:
    """Writes RBAC refused to ``user`` (the local control plane audits every write)."""
    if testbed.control_plane is None:
        return []
    time.sleep(1.5)  # the audit backend flushes its batch every second
    out = []
    for line in testbed.control_plane.audit_log.read_text().splitlines():
        entry = json.loads(line)
        # RBAC's own verdict; a 403 from admission (a namespace being deleted, a quota) is not it.
        decision = (entry.get("annotations") or {}).get("authorization.k8s.io/decision")
        if entry["user"]["username"] == user and decision == "forbid":
            out.append(f"{entry['verb']} {entry['requestURI']}")
    return out


def assert_no_denials(testbed: Testbed, operator: OperatorProcess, user: str) -> None:
    text = operator.log.read_text()
    denied = [line for line in text.splitlines() if RBAC_DENIAL.search(line)]
    assert not denied, "RBAC denials in the operator log:\n" + "\n".join(denied[:10])
    audit = denials_in_audit_log(testbed, user)
    assert not audit, f"the apiserver refused {user}: {audit[:10]}"


def test_install_creates_the_crds_and_the_operator_objects(
    testbed: Testbed, helm: Helm, namespace: str
) -> None:
    if testbed.control_plane is None:
        pytest.skip(
            "only with RECSYS_TEST_KUBECONFIG (an existing cluster): this test deletes the "
            "recsys.dev CRDs first; make test's own control plane always runs it"
        )
    # FeatureViews and Recommenders earlier tests left with the operator's finalizers (their
    # operator and Redis are gone, so nobody will remove them) would hold the CRD's deletion
    # forever.
    for plural in ("featureviews", "recommenders"):
        held = testbed.kubectl("get", plural, "-A", "-o", "json", check=False)
        for obj in json.loads(held.stdout)["items"] if held.returncode == 0 else []:
            if obj["metadata"].get("finalizers"):
                testbed.kubectl("patch", plural, obj["metadata"]["name"], "-n",
                                obj["metadata"]["namespace"], "--type=merge", "-p",
                                '{"metadata":{"finalizers":null}}', check=False)  # fmt: skip
    # A clean slate, so that the objects checked below are the ones helm made.
    testbed.kubectl("delete", "crd", *CRD_NAMES, "--ignore-not-found", "--wait=true",
                    timeout=120)  # fmt: skip
    with extra_namespace(testbed, f"{namespace}-w") as watched:
        release = f"crd-{uuid.uuid4().hex[:6]}"
        values = chart_values([watched], testbed)
        with helm.installed(release, namespace, values) as out:
            assert "Watching: " + watched in out.stdout  # NOTES.txt
            for name in CRD_NAMES:
                crd = json.loads(testbed.kubectl("get", "crd", name, "-o", "json",
                                                 "--show-managed-fields").stdout)  # fmt: skip
                managers = {m["manager"] for m in crd["metadata"]["managedFields"]}
                assert managers & {"helm", "Helm"}, managers
                established = condition(crd, "Established")
                assert established is not None
                assert established["status"] == "True"
                shipped = yaml.safe_load((CRDS / f"recsys.dev_{crd['spec']['names']['plural']}"
                                          ".yaml").read_text())  # fmt: skip
                assert (
                    crd["spec"]["versions"][0]["schema"]
                    == (shipped["spec"]["versions"][0]["schema"])
                )
            fullname = f"{release}-recsys-operator"
            assert get(testbed, "serviceaccount", fullname, namespace) is not None
            assert get(testbed, "role", fullname, watched) is not None
            binding = get(testbed, "rolebinding", fullname, watched)
            assert binding is not None
            assert binding["subjects"][0] == {
                "kind": "ServiceAccount", "name": fullname, "namespace": namespace,
            }  # fmt: skip
            assert get(testbed, "service", f"{fullname}-metrics", namespace) is not None
            deployment = get(testbed, "deployment", fullname, namespace)
            assert deployment is not None
            # helm --wait returned: the pod was admitted (and, with kwok, became available).
            want = values["replicas"]
            assert deployment["status"].get("availableReplicas", 0) == want
        # Helm leaves CRDs in place on uninstall, so users' objects survive.
        assert testbed.kubectl("get", "crd", *CRD_NAMES).returncode == 0


def test_pod_security_restricted_admits_the_operator_pod(
    testbed: Testbed, helm: Helm, namespace: str, crds: None
) -> None:
    if testbed.control_plane is None:
        pytest.skip(
            "only with RECSYS_TEST_KUBECONFIG (an existing cluster, no kwok to play the "
            "operator's pod); make test's own control plane always runs it"
        )
    enforce = "pod-security.kubernetes.io/enforce=restricted"
    testbed.kubectl("label", "namespace", namespace, enforce)
    release = f"psa-{uuid.uuid4().hex[:6]}"
    with helm.installed(release, namespace, chart_values([namespace], testbed)):
        pods = json.loads(testbed.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)[
            "items"
        ]
        assert [p["status"]["phase"] for p in pods] == ["Running"]


def test_a_role_per_namespace_is_all_the_operator_needs(
    testbed: Testbed, helm: Helm, namespace: str, crds: None, tmp_path: Path
) -> None:
    """Two watched namespaces (repeated --namespace), one not watched."""
    release = f"ns-{uuid.uuid4().hex[:6]}"
    account = f"{release}-recsys-operator"
    with (
        extra_namespace(testbed, f"{namespace}-a") as team_a,
        extra_namespace(testbed, f"{namespace}-b") as team_b,
        extra_namespace(testbed, f"{namespace}-c") as unwatched,
        helm.installed(release, namespace, chart_values([team_a, team_b], testbed)),
    ):
        kubeconfig = token_kubeconfig(testbed, namespace, account, tmp_path / "sa.kubeconfig")
        # As the chart's Deployment runs it: leader election on the chart's Lease, so the
        # Lease's Role is part of what is proven enough (kwok's pod of the Deployment runs no
        # operator, so this process is the only candidate).
        args = ["--namespace", team_a, "--namespace", team_b, "--leader-elect",
                "--leader-election-namespace", namespace, "--leader-election-name", account,
                "--leader-election-identity", "test-process"]  # fmt: skip
        with operator_as(kubeconfig, tmp_path / "operator.log", args) as operator:
            for ns in (team_b, unwatched):
                first = next(yaml.safe_load_all(LIFECYCLE_STACK))  # a FeatureView alone
                testbed.kubectl("apply", "--server-side", "-n", ns, "-f", "-",
                                input=json.dumps(first))  # fmt: skip
            walk_the_lifecycle(testbed, team_a, operator)
            until(lambda: get(testbed, "cronjob", "users-materialize", team_b),
                  "the second watched namespace's CronJob", operator)  # fmt: skip
            assert get(testbed, "cronjob", "users-materialize", unwatched) is None
            assert "status" not in (get(testbed, "featureview", "users", unwatched) or {})
            assert_no_denials(testbed, operator, f"system:serviceaccount:{namespace}:{account}")
            lease = get(testbed, "lease", account, namespace)
            assert lease is not None
            assert lease["spec"]["holderIdentity"] == "test-process"


def test_two_replicas_run_under_a_disruption_budget(
    testbed: Testbed, helm: Helm, namespace: str, crds: None
) -> None:
    if testbed.control_plane is None:
        pytest.skip(
            "only with RECSYS_TEST_KUBECONFIG (an existing cluster, no kwok to play the "
            "operator's pods); make test's own control plane always runs it"
        )
    release = f"ha-{uuid.uuid4().hex[:6]}"
    with helm.installed(release, namespace, {"watchNamespaces": [namespace], "replicas": 2}):
        fullname = f"{release}-recsys-operator"
        deployment = get(testbed, "deployment", fullname, namespace)
        assert deployment is not None
        assert deployment["status"].get("availableReplicas", 0) == 2
        # The disruption controller counts the healthy pods: one of the two may go.
        pdb = eventually(
            lambda: (
                (p := get(testbed, "pdb", fullname, namespace))
                and p.get("status", {}).get("currentHealthy") == 2
                and p
            ),
            60,
            "the budget's status",
        )
        assert pdb["status"]["disruptionsAllowed"] == 1
        assert get(testbed, "role", f"{fullname}-leader-election", namespace) is not None


def test_the_cluster_role_is_all_the_operator_needs(
    testbed: Testbed, helm: Helm, namespace: str, crds: None, tmp_path: Path
) -> None:
    release = f"all-{uuid.uuid4().hex[:6]}"
    account = f"{release}-recsys-operator"
    with (
        extra_namespace(testbed, f"{namespace}-a") as team_a,
        helm.installed(release, namespace, chart_values([], testbed)),
    ):
        testbed.kubectl("get", "clusterrole,clusterrolebinding", account)
        kubeconfig = token_kubeconfig(testbed, namespace, account, tmp_path / "sa.kubeconfig")
        with operator_as(kubeconfig, tmp_path / "operator.log", ["--all-namespaces"]) as operator:
            walk_the_lifecycle(testbed, team_a, operator)
            # and its deletion: the writers go, then the keyspace, then the finalizer
            testbed.kubectl("delete", "recommender", "movies", "-n", team_a, "--wait=false")
            until(lambda: get(testbed, "recommender", "movies", team_a) is None,
                  "the Recommender deleted", operator, timeout=120)  # fmt: skip
            assert_no_denials(testbed, operator, f"system:serviceaccount:{namespace}:{account}")


def test_a_missing_rule_is_reported_and_the_rest_keeps_working(
    testbed: Testbed, helm: Helm, namespace: str, crds: None, tmp_path: Path
) -> None:
    """Without the CronJob rule the FeatureView says which permission is missing, the log
    names it, the Recommender still trains, and the operator outlives kopf's default retry
    budget for the failing watch (which would otherwise end the process for everyone)."""
    release = f"neg-{uuid.uuid4().hex[:6]}"
    account = f"{release}-recsys-operator"
    with (
        extra_namespace(testbed, f"{namespace}-a") as team_a,
        helm.installed(release, namespace, chart_values([team_a], testbed)),
    ):
        role = json.loads(testbed.kubectl("get", "role", account, "-n", team_a, "-o",
                                          "json").stdout)  # fmt: skip
        kept = [r for r in role["rules"] if "cronjobs" not in r["resources"]]
        assert len(kept) == len(role["rules"]) - 1
        role["rules"] = kept
        testbed.kubectl("replace", "-f", "-", input=json.dumps(role))
        kubeconfig = token_kubeconfig(testbed, namespace, account, tmp_path / "sa.kubeconfig")
        args = ["--namespace", team_a]
        with operator_as(kubeconfig, tmp_path / "operator.log", args) as operator:
            started = time.monotonic()
            apply_stack(testbed, team_a)

            def refused() -> dict[str, Any] | None:
                ready = condition(get(testbed, "featureview", "users", team_a), "Ready")
                return ready if ready and ready["reason"] == "Forbidden" else None

            ready = until(refused, "the FeatureView reports the refusal", operator)
            assert 'cannot patch resource "cronjobs" in API group "batch"' in ready["message"]
            assert account in ready["message"]
            # Everything that needs no CronJob goes on.
            until(lambda: phase(testbed, team_a, "movies-v1") == "Training",
                  "movies-v1 Training despite the FeatureView's refusal", operator)  # fmt: skip
            assert get(testbed, "cronjob", "users-materialize", team_a) is None
            # kopf's own watch of CronJobs is refused too: logged, retried, never fatal. With
            # kopf's default retries the 9th failure ends the operator (about 55 s in).
            until(
                lambda: re.search(
                    r'Request attempt #9 failed; will retry: GET \S+/cronjobs.*'
                    r'cannot list resource \\?"cronjobs\\?"',
                    operator.log.read_text(),
                ),
                "kopf retrying the CronJob watch past its default budget", operator, timeout=90,
            )  # fmt: skip
            assert time.monotonic() - started > 50
            # The pattern the passing scopes are checked with does see a denial.
            assert RBAC_DENIAL.search(operator.log.read_text())
            assert operator.popen is not None
            assert operator.popen.poll() is None
