"""Cluster DNS for the real node: CoreDNS with its ``kubernetes`` plugin, the server kubeadm,
kind and every managed cluster run, so a pod finds a Service as ``<service>.<namespace>.svc``
(the operator's gateway reaches each version's Triton that way).

Built from its Go module by build_coredns.sh and run as a process of this machine, like
metrics-server: cluster plumbing, not a workload under test. It listens on the pod bridge's
gateway address, which the kubelet hands every pod as its nameserver (``clusterDNS``); pods
reach it on-link, no Service in between. It answers only for the cluster's zones: there is no
``forward``, so a name outside the cluster is refused at once and nothing leaves the machine.
It reads Services and EndpointSlices with the testbed's admin identity, as the other testbed
components do.

Order of use::

    cluster_dns.start(node_procs, cp, address, workdir)   # before the kubelet starts pods
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

from testbed.controlplane import ControlPlane
from testbed.processes import Process, ProcessGroup, built_by, free_port, wait_until

DOMAIN = "cluster.local"
PORT = 53


def corefile(address: str, kubeconfig: Path, ready_port: int) -> str:
    """The cluster's zones from the API, with a short cache; ``ready`` answers 200 once the
    plugin has listed every Service (before that a lookup could miss a name that exists)."""
    return f"""{DOMAIN}:{PORT} in-addr.arpa:{PORT} {{
    bind {address}
    errors
    ready 127.0.0.1:{ready_port}
    kubernetes {DOMAIN} in-addr.arpa {{
        kubeconfig {kubeconfig}
        pods disabled
    }}
    cache 5
}}
"""


def _ready(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as reply:
        return bool(reply.status == 200)


def start(procs: ProcessGroup, cp: ControlPlane, address: str, workdir: Path) -> Process:
    """CoreDNS on ``address``:53, one more of ``procs``, returned once it has synced with the
    API (the node stops it with the rest)."""
    binary = built_by("build_coredns.sh")
    ready_port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "Corefile").write_text(corefile(address, cp.kubeconfig, ready_port))
    process = procs.start("coredns", [str(binary), "-conf", str(workdir / "Corefile")])
    wait_until(process, lambda: _ready(ready_port), 60, "synced with the API")
    return process
