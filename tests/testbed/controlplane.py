"""A real Kubernetes control plane on the loopback, for tests and the local demo.

etcd, kube-apiserver (TLS, Node and RBAC authorization, PodSecurity and NodeRestriction
admission, service-account tokens, an audit log of writes), kube-controller-manager,
kube-scheduler and kwok, which plays one fake Node with GPUs and moves pods through their phases.
Binaries come from ``build.sh`` (Go modules, cached).

kwok manages only the nodes annotated ``kwok.x-k8s.io/node=fake`` (the fake GPU node), so a real
kubelet can join the same control plane (``real_node.py``) and run its pods itself. For that the
apiserver must be reachable from inside a pod's network namespace: ``start(address=...)`` binds
and advertises it on the pod bridge's gateway address instead of 127.0.0.1, and the ``kubernetes``
Service then leads there.

Run by hand: ``python tests/testbed/controlplane.py up`` prints a kubeconfig path and keeps the
control plane up until interrupted.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the sibling modules importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from testbed.pki import Pki, issue_client, make_pki
from testbed.processes import (
    ComponentFailed,
    ProcessGroup,
    free_port,
    run_until_interrupted,
    wait_until,
)

HERE = Path(__file__).resolve().parent
#: Where Services get their ClusterIPs; a real node's pods are routed to it (and nowhere else).
SERVICE_CIDR = "10.96.0.0/16"
#: The ``kubernetes`` Service's ClusterIP: the first address of SERVICE_CIDR.
SERVICE_IP = "10.96.0.1"

#: The controllers the operator's workloads rely on. Node lifecycle stays off so the fake node
#: is never tainted; leader election is off so restarts never wait on stale leases.
CONTROLLERS = (
    "job-controller",
    "cronjob-controller",
    "deployment-controller",
    "replicaset-controller",
    "statefulset-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "ttl-after-finished-controller",
    "endpointslice-controller",
    "disruption-controller",
    "horizontal-pod-autoscaler-controller",
    # binds a claim to its PersistentVolume (the real node's pvc:// test); the scheduler holds
    # a pod whose claim is unbound
    "persistentvolume-binder-controller",
)

#: The apiserver's client name towards aggregated APIs (metrics.k8s.io).
FRONT_PROXY_CLIENT = "front-proxy-client"

#: Writes only, at Metadata level: enough to count a controller's writes, small enough to keep.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
- level: None
"""

FAKE_NODE = {
    "apiVersion": "v1",
    "kind": "Node",
    "metadata": {
        "name": "kwok-gpu-node-0",
        "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
        "labels": {
            "kubernetes.io/hostname": "kwok-gpu-node-0",
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
            "node-pool": "gpu",
            "nvidia.com/gpu.present": "true",
        },
    },
    "status": {
        "allocatable": {"cpu": "64", "memory": "512Gi", "pods": "250", "nvidia.com/gpu": "8"},
        "capacity": {"cpu": "64", "memory": "512Gi", "pods": "250", "nvidia.com/gpu": "8"},
    },
}


def build_binaries() -> Path:
    """Run build.sh (a no-op when the pinned binaries are cached) and return their folder."""
    out = subprocess.run(
        ["bash", str(HERE / "build.sh")], check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    return Path(out.strip().splitlines()[-1])


@dataclass
class ControlPlane:
    """A started control plane; ``stop()`` ends every process it started and removes its files."""

    bin_dir: Path
    workdir: Path
    procs: ProcessGroup
    pki: Pki
    server: str
    kubeconfig: Path
    audit_log: Path
    #: Where the apiserver listens (``start``'s ``address``).
    address: str = "127.0.0.1"
    startup_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    _keep_workdir: bool = False

    @property
    def kubectl_path(self) -> Path:
        return self.bin_dir / "kubectl"

    @property
    def helm_path(self) -> Path:
        return self.bin_dir / "helm"

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return run_kubectl(
            self.kubectl_path, self.kubeconfig, args, input=input, check=check, timeout=timeout
        )

    def restart_apiserver(self) -> float:
        """Stop kube-apiserver and start it again on its port (etcd keeps the state); returns
        the seconds until it was ready again. Clients' connections and watches break."""
        t0 = time.monotonic()
        (old,) = [p for p in self.procs.processes if p.name == "kube-apiserver"]
        new = self.procs.restart(old)
        port = int(self.server.rsplit(":", 1)[1])
        wait_until(new, lambda: _https_ok(self.address, port, "/readyz", self.pki), 120, "ready")
        return time.monotonic() - t0

    def stop(self) -> None:
        self.procs.stop_all()
        if not self._keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def run_kubectl(
    kubectl: Path | str,
    kubeconfig: Path,
    args: Sequence[str],
    *,
    input: str | None = None,
    check: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(kubectl), "--kubeconfig", str(kubeconfig), *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise subprocess.CalledProcessError(
            result.returncode, result.args, output=result.stdout, stderr=result.stderr
        )
    return result


def kubeconfig_for(server: str, ca: Path, cert: Path, key: Path) -> str:
    """A kubeconfig (JSON) for the client certificate ``cert``; the admin's, or a node's."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "testbed",
                    "cluster": {"server": server, "certificate-authority": str(ca)},
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {"client-certificate": str(cert), "client-key": str(key)},
                }
            ],
            "contexts": [{"name": "testbed", "context": {"cluster": "testbed", "user": "admin"}}],
            "current-context": "testbed",
        },
        indent=1,
    )


def _https_ok(address: str, port: int, path: str, pki: Pki) -> bool:
    ctx = ssl.create_default_context(cafile=str(pki.serving_ca))
    ctx.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    conn = http.client.HTTPSConnection(address, port, context=ctx, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    finally:
        conn.close()


def _http_ok(port: int, path: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    finally:
        conn.close()


def _insecure_ok(port: int, path: str) -> bool:
    """Health of a component serving TLS with its own self-signed certificate."""
    ctx = ssl._create_unverified_context()
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    finally:
        conn.close()


def start(
    bin_dir: Path | None = None, workdir: Path | None = None, address: str = "127.0.0.1"
) -> ControlPlane:
    """Start every component, wait for each to be healthy, and register the fake GPU node.

    ``address``: where the apiserver listens and what it advertises (the ``kubernetes``
    Service's endpoint). The default keeps it on the loopback; a real node's pods need an
    address of this machine that their network namespaces reach, such as the pod bridge's
    gateway (``real_node.PodNetwork``), which must exist before this is called."""
    t0 = time.monotonic()
    bin_dir = bin_dir or build_binaries()
    keep = workdir is not None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="recsys-testbed-"))
    procs = ProcessGroup(workdir / "logs")
    timings: dict[str, float] = {}
    try:
        names = ["localhost", "127.0.0.1", "kubernetes.default.svc", SERVICE_IP]
        pki = make_pki(workdir / "pki", [*names, address] if address not in names else names)
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        etcd = procs.start(
            "etcd",
            [
                str(bin_dir / "etcd"),
                "--name=testbed",
                f"--data-dir={workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=testbed=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        wait_until(etcd, lambda: _http_ok(etcd_port, "/health"), 30, "healthy")
        timings["etcd"] = time.monotonic() - t0

        # The apiserver's identity towards kubelets (logs, exec); a real node trusts the client CA.
        kubelet_client = issue_client(pki, workdir / "pki", "kube-apiserver-kubelet-client")
        # Its identity towards aggregated APIs (metrics.k8s.io from metrics-server): the caller
        # is passed on in request headers, which an aggregated server believes only from this
        # certificate's name (``--requestheader-allowed-names``), though the client CA signs it.
        front_proxy = issue_client(pki, workdir / "pki", FRONT_PROXY_CLIENT)
        audit_log = workdir / "audit.log"
        (workdir / "audit-policy.yaml").write_text(AUDIT_POLICY)
        apiserver = procs.start(
            "kube-apiserver",
            [
                str(bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--bind-address={address}",
                f"--advertise-address={address}",
                f"--secure-port={api_port}",
                f"--cert-dir={workdir / 'apiserver-certs'}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.client_ca}",
                f"--kubelet-client-certificate={kubelet_client[0]}",
                f"--kubelet-client-key={kubelet_client[1]}",
                # Node: a kubelet may read and write only what concerns its own node's pods.
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,PodSecurity,"
                "NodeRestriction,"
                "LimitRanger,ResourceQuota,DefaultStorageClass,MutatingAdmissionWebhook,"
                "ValidatingAdmissionWebhook,ValidatingAdmissionPolicy,"
                # As on OpenShift: setting blockOwnerDeletion needs update on the owner's
                # finalizers, so the chart's RBAC is tested against the stricter clusters.
                "OwnerReferencesPermissionEnforcement",
                # It taints new nodes not-ready until the node-lifecycle controller lifts the
                # taint; that controller stays off here (it would also taint the fake node).
                "--disable-admission-plugins=TaintNodesByCondition",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.sa_public}",
                f"--service-account-signing-key-file={pki.sa_private}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # logs and exec reach a kubelet at its node's IP: a node name is not in any DNS.
                "--kubelet-preferred-address-types=InternalIP",
                f"--requestheader-client-ca-file={pki.client_ca}",
                f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={front_proxy[0]}",
                f"--proxy-client-key-file={front_proxy[1]}",
                # An aggregated server runs on this machine, not behind a ClusterIP: dial the
                # address its Service's endpoints name.
                "--enable-aggregator-routing=true",
                "--allow-privileged=true",
                f"--audit-policy-file={workdir / 'audit-policy.yaml'}",
                f"--audit-log-path={audit_log}",
                "--audit-log-mode=batch",
                "--audit-log-batch-max-wait=1s",
                "--audit-log-format=json",
                "--v=0",
            ],
        )
        wait_until(apiserver, lambda: _https_ok(address, api_port, "/readyz", pki), 120, "ready")
        timings["kube-apiserver"] = time.monotonic() - t0
        server = f"https://{address}:{api_port}"
        kubeconfig = workdir / "kubeconfig"
        kubeconfig.write_text(kubeconfig_for(server, pki.serving_ca, pki.admin_cert, pki.admin_key))
        kubeconfig.chmod(0o600)

        cm_port, sched_port, kwok_port = free_port(), free_port(), free_port()
        cm = procs.start(
            "kube-controller-manager",
            [
                str(bin_dir / "kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={cm_port}",
                f"--cert-dir={workdir / 'cm-certs'}",
                "--leader-elect=false",
                f"--controllers={','.join(CONTROLLERS)}",
                f"--service-account-private-key-file={pki.sa_private}",
                f"--root-ca-file={pki.serving_ca}",
                "--use-service-account-credentials=false",
                "--concurrent-job-syncs=10",
                "--concurrent-gc-syncs=10",
                # The autoscaler's loop and its scale-down memory, shortened from 15 s and
                # 5 min so a test sees a scale-up and the way back within a minute or two.
                "--horizontal-pod-autoscaler-sync-period=5s",
                "--horizontal-pod-autoscaler-downscale-stabilization=30s",
            ],
        )
        scheduler = procs.start(
            "kube-scheduler",
            [
                str(bin_dir / "kube-scheduler"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={sched_port}",
                f"--cert-dir={workdir / 'scheduler-certs'}",
                "--leader-elect=false",
            ],
        )
        kwok = procs.start(
            "kwok",
            [
                str(bin_dir / "kwok"),
                f"--kubeconfig={kubeconfig}",
                # Only the fake node: a real kubelet's node and pods are its own.
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--server-address=127.0.0.1:{kwok_port}",
                *(f"--config={p}" for p in _kwok_stages(bin_dir, workdir)),
            ],
            cwd=workdir,
        )
        run_kubectl(
            bin_dir / "kubectl", kubeconfig, ["apply", "-f", "-"], input=json.dumps(FAKE_NODE)
        )
        wait_until(cm, lambda: _insecure_ok(cm_port, "/healthz"), 60, "healthy")
        wait_until(scheduler, lambda: _insecure_ok(sched_port, "/healthz"), 60, "healthy")
        wait_until(kwok, lambda: _node_ready(bin_dir, kubeconfig), 60, "managing the fake node")
        wait_until(cm, lambda: _default_sa(bin_dir, kubeconfig), 60, "creating service accounts")
        timings["all"] = time.monotonic() - t0
        return ControlPlane(
            bin_dir=bin_dir,
            workdir=workdir,
            procs=procs,
            pki=pki,
            server=server,
            kubeconfig=kubeconfig,
            audit_log=audit_log,
            address=address,
            startup_seconds=timings["all"],
            timings=timings,
            _keep_workdir=keep,
        )
    except BaseException:
        procs.stop_all()
        if not keep:
            # Keep the logs of a failed start next to the message that names them.
            shutil.rmtree(workdir / "etcd", ignore_errors=True)
        raise


#: Pods with this label are left Running by kwok: a test plays their workload and completes them
#: itself, with the exit code and termination message it wants (see ``finish_pod``).
HELD_BY_TEST = '.metadata.labels["app.kubernetes.io/managed-by"]'
HELD_VALUE = "recsys-operator"


def _kwok_stages(bin_dir: Path, workdir: Path) -> list[Path]:
    """kwok's "fast" stages, except that the operator's Job pods are not completed by kwok."""
    out = workdir / "kwok-stages"
    out.mkdir(exist_ok=True)
    paths = []
    for src in sorted((bin_dir / "kwok-stages").glob("*.yaml")):
        if src.name == "kustomization.yaml":
            continue
        stage = yaml.safe_load(src.read_text())
        if stage["metadata"]["name"] == "pod-complete":
            stage["spec"]["selector"]["matchExpressions"].append(
                {"key": HELD_BY_TEST, "operator": "NotIn", "values": [HELD_VALUE]}
            )
        dst = out / src.name
        dst.write_text(yaml.safe_dump(stage))
        paths.append(dst)
    return paths


def _node_ready(bin_dir: Path, kubeconfig: Path) -> bool:
    out = run_kubectl(
        bin_dir / "kubectl",
        kubeconfig,
        [
            "get",
            "node",
            FAKE_NODE["metadata"]["name"],  # type: ignore[index]
            "-o",
            "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
        ],
        check=False,
    )
    return out.stdout.strip() == "True"


def _default_sa(bin_dir: Path, kubeconfig: Path) -> bool:
    out = run_kubectl(
        bin_dir / "kubectl",
        kubeconfig,
        ["get", "serviceaccount", "default", "-n", "default"],
        check=False,
    )
    return out.returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "build"])
    parser.add_argument("--workdir", type=Path, help="keep state and logs here")
    args = parser.parse_args(argv)
    if args.command == "build":
        print(build_binaries())
        return 0
    try:
        cp = start(workdir=args.workdir)
    except ComponentFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"control plane up in {cp.startup_seconds:.1f} s")
    print(f"export KUBECONFIG={cp.kubeconfig}")
    print(f"kubectl: {cp.kubectl_path}")
    return run_until_interrupted(cp.procs.processes, cp.stop)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
