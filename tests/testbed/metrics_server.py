"""metrics-server for the testbed: the resource metrics API (``metrics.k8s.io``) that the
HorizontalPodAutoscaler controller reads pod CPU from, scraped from the real node's kubelet.

Built from its Go module by build_metrics_server.sh and run as a process of this machine, not as
a pod: like the rest of the control plane, it is the cluster's plumbing, not a workload under
test. It is registered the way any cluster registers it: an ``APIService`` for
``v1beta1.metrics.k8s.io`` naming a Service in kube-system, whose endpoint is this process'
address (which must not be a loopback one: the API refuses those as endpoints; the real node's
bridge gateway is what the testbed uses). The apiserver dials that endpoint
(``--enable-aggregator-routing``) and proxies each request with the caller in request headers,
which metrics-server believes only from the apiserver's front-proxy certificate
(``controlplane.FRONT_PROXY_CLIENT``).

TLS is verified on every hop: the APIService's ``caBundle`` is the serving CA that signed
metrics-server's certificate, and metrics-server verifies the kubelet's serving certificate
(``real_node`` issues it from the same CA) and presents a client certificate the kubelet
trusts.

Order of use::

    metrics = metrics_server.start(cp)    # after real_node.start: it has a kubelet to scrape
    ...
    metrics.stop()
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.controlplane import ControlPlane
from testbed.pki import issue_client, issue_server
from testbed.processes import Process, ProcessGroup, built_by, free_port, wait_until

NAMESPACE = "kube-system"
NAME = "metrics-server"
API_SERVICE = "v1beta1.metrics.k8s.io"
#: How often it scrapes the kubelets (10 s is the least it accepts), and how long one scrape
#: may take, which it wants shorter than that.
RESOLUTION, SCRAPE_TIMEOUT = "10s", "5s"


@dataclass
class MetricsServer:
    cp: ControlPlane
    port: int
    process: Process
    procs: ProcessGroup
    workdir: Path

    def node_metrics(self) -> list[dict[str, Any]]:
        """``kubectl get --raw`` of the nodes' metrics: what the API serves now."""
        out = self.cp.kubectl("get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes", check=False)
        if out.returncode != 0:
            return []
        items: list[dict[str, Any]] = json.loads(out.stdout).get("items", [])
        return items

    def stop(self) -> None:
        self.cp.kubectl("delete", "apiservice", API_SERVICE, "--ignore-not-found", check=False)
        self.procs.stop_all()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _registration(address: str, port: int, ca_bundle: bytes) -> list[dict[str, Any]]:
    """The Service (no selector: its endpoint is this process, not a pod), its EndpointSlice
    and the APIService that points the aggregator at them."""
    labels = {"app.kubernetes.io/name": NAME}
    meta = {"name": NAME, "namespace": NAMESPACE, "labels": labels}
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]},
        },
        {
            # what the aggregator resolves the Service to (kube-aggregator's resolver reads
            # EndpointSlices); a Service without a selector has no controller-made slice
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                **meta,
                "labels": {
                    **labels,
                    "kubernetes.io/service-name": NAME,
                    "endpointslice.kubernetes.io/managed-by": "recsys-testbed",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": API_SERVICE, "labels": labels},
            "spec": {
                "group": "metrics.k8s.io",
                "version": "v1beta1",
                "service": {"namespace": NAMESPACE, "name": NAME, "port": 443},
                "caBundle": base64.b64encode(ca_bundle).decode(),
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    ]


def _available(cp: ControlPlane) -> bool:
    out = cp.kubectl(
        "get",
        "apiservice",
        API_SERVICE,
        "-o",
        "jsonpath={.status.conditions[?(@.type=='Available')].status}",
        check=False,
    )
    return out.stdout.strip() == "True"


def start(cp: ControlPlane, timeout: float = 90.0) -> MetricsServer:
    """Start metrics-server on the control plane's address, register it, and return once the
    aggregated API answers with at least one node's metrics (the real node's kubelet has been
    scraped: the autoscaler can read CPU from then on)."""
    binary = built_by("build_metrics_server.sh")
    workdir = Path(tempfile.mkdtemp(prefix="recsys-metrics-"))
    pki_dir = workdir / "pki"
    serving = issue_server(
        cp.pki, pki_dir, NAME, [f"{NAME}.{NAMESPACE}.svc", f"{NAME}.{NAMESPACE}", cp.address]
    )
    kubelet_client = issue_client(cp.pki, pki_dir, "metrics-server-kubelet-client")
    port = free_port()
    procs = ProcessGroup(workdir / "logs")
    process = procs.start(
        NAME,
        [
            str(binary),
            f"--bind-address={cp.address}",
            f"--secure-port={port}",
            f"--cert-dir={workdir / 'certs'}",
            f"--tls-cert-file={serving[0]}",
            f"--tls-private-key-file={serving[1]}",
            # The testbed's components all use its admin identity (controlplane.start).
            f"--kubeconfig={cp.kubeconfig}",
            f"--authentication-kubeconfig={cp.kubeconfig}",
            f"--authorization-kubeconfig={cp.kubeconfig}",
            "--kubelet-preferred-address-types=InternalIP",
            # the kubelet listens on a free port, not 10250: the one its node status reports
            "--kubelet-use-node-status-port",
            f"--kubelet-certificate-authority={cp.pki.serving_ca}",
            f"--kubelet-client-certificate={kubelet_client[0]}",
            f"--kubelet-client-key={kubelet_client[1]}",
            f"--metric-resolution={RESOLUTION}",
            f"--kubelet-request-timeout={SCRAPE_TIMEOUT}",
        ],
    )
    server = MetricsServer(cp, port, process, procs, workdir)
    try:
        cp.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "List",
                    "items": _registration(cp.address, port, cp.pki.serving_ca.read_bytes()),
                }
            ),
        )
        wait_until(process, lambda: _available(cp), timeout, "registered as metrics.k8s.io")
        wait_until(process, lambda: bool(server.node_metrics()), timeout, "serving node metrics")
    except BaseException:
        server.stop()
        raise
    return server
