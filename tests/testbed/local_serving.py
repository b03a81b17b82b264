"""Plays a Recommender's serving Deployments on this machine, from the objects the operator made.

The stand-in kubelet of ``local_runner.py`` runs Job pods; this does the same for the serving
pods, so the demo (and the tests) answer recommendation requests from what the operator
rendered, not from a hand-written config, and follow the rollout as it goes:

- each Triton Deployment: its init container's command runs here with the pod's ConfigMap
  and emptyDir volumes standing in as local folders (the repository is built from the
  version's artifact exactly as in the pod), then the testbed's ``tritonserver`` serves that
  folder. A Deployment that appears later (a canary) is started when it appears, and one
  the operator deletes is stopped;
- the gateway Deployment: ``spec.replicas`` processes of ``python -m recsys_workloads.gateway``
  with the gateway's ConfigMap, each with its pod name in ``HOSTNAME`` (the heartbeat's
  replica id), on free local ports.

Two things a pod gets from Kubernetes are played by hand, and only these: a path under a
volume's ``mountPath`` (in argv, and in the JSON config files the ConfigMaps hold) becomes the
local folder that stands in for the volume; and cluster DNS with kube-proxy (``ClusterDns``, a
stand-in): every Triton Service gets a loopback address of its own as its ClusterIP, its
Triton listens there on the Service's port, and each gateway process runs in a private mount
namespace whose ``/etc/hosts`` names the Services. So the routing table the operator publishes
in Redis, with the Services' cluster names, works here unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.controlplane import run_kubectl
from testbed.local_runner import local_argv, map_mount_paths
from testbed.processes import free_port
from testbed.triton_server import TritonServer, start_triton

RECOMMENDER_LABEL = "recsys.dev/recommender"
COMPONENT_LABEL = "app.kubernetes.io/component"
#: Gateway processes per Deployment at most (two cores).
MAX_GATEWAY_REPLICAS = 3
#: How often the player looks for Triton Deployments that came or went.
SYNC_SECONDS = 1.0


class ClusterDns:
    """Service names to loopback ClusterIPs, written as an ``/etc/hosts`` the gateway processes
    see in their own mount namespace (a stand-in for cluster DNS and kube-proxy)."""

    def __init__(self, path: Path, namespace: str) -> None:
        self.path, self.namespace = path, namespace
        self.addresses: dict[str, str] = {}
        base = Path("/etc/hosts").read_text() if Path("/etc/hosts").exists() else ""
        self.base = base if base.endswith("\n") or not base else base + "\n"
        self._write()

    def address(self, service: str) -> str:
        if service not in self.addresses:
            n = len(self.addresses) + 1
            # one /16 of loopback for the Services of this player (its pid keeps two apart)
            self.addresses[service] = f"127.{100 + os.getpid() % 100}.{n // 250}.{n % 250 + 2}"
            self._write()
        return self.addresses[service]

    def _write(self) -> None:
        lines = [
            f"{ip} {svc}.{self.namespace}.svc {svc}.{self.namespace}.svc.cluster.local\n"
            for svc, ip in self.addresses.items()
        ]
        text = self.base + "".join(lines)
        # In place, never by rename: the gateways' bind mounts point at this inode.
        with self.path.open("a+") as f:
            f.seek(0)
            f.truncate()
            f.write(text)

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run in a mount namespace of its own with this file as ``/etc/hosts``."""
        unshare = shutil.which("unshare")
        if unshare is None:
            raise RuntimeError("unshare (util-linux) is needed to play cluster DNS")
        flags = ["--mount"] if os.geteuid() == 0 else ["--map-root-user", "--mount"]
        script = 'mount --bind "$0" /etc/hosts && exec "$@"'
        return [unshare, *flags, "sh", "-c", script, str(self.path), *argv]


@dataclass
class LocalServing:
    """The served Recommender: its gateways' base URLs and everything started for it."""

    url: str
    urls: list[str] = field(default_factory=list)
    tritons: dict[str, TritonServer] = field(default_factory=dict)
    gateways: list[subprocess.Popen[bytes]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    follower: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def gateway(self) -> subprocess.Popen[bytes] | None:
        return self.gateways[0] if self.gateways else None

    def stop(self) -> None:
        self.stopping.set()
        if self.follower is not None:
            self.follower.join(30)
        for proc in self.gateways:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.gateways:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        with self.lock:
            for triton in self.tritons.values():
                triton.stop()
            self.tritons.clear()


class ServingPlayer:
    def __init__(self, kubectl: Path, kubeconfig: Path, namespace: str, workdir: Path) -> None:
        self.kubectl, self.kubeconfig, self.namespace = kubectl, kubeconfig, namespace
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.dns = ClusterDns(workdir / "hosts", namespace)
        #: Why a Triton Deployment could not be played, by name (reported, retried on change).
        self.failures: dict[str, str] = {}

    def _get(self, *args: str) -> Any:
        out = run_kubectl(
            self.kubectl, self.kubeconfig, ["-n", self.namespace, "get", *args, "-o", "json"]
        ).stdout
        return json.loads(out)

    def _volumes(
        self, pod: Mapping[str, Any], container: Mapping[str, Any], root: Path
    ) -> dict[str, Path]:
        """The container's volumes as local folders (ConfigMaps written out, JSON files with
        mount paths mapped); returns mountPath -> folder."""
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            local = root / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = local
        for mount in container.get("volumeMounts", []):
            vol = volumes.get(mount["name"], {})
            if "configMap" in vol:
                cm = self._get("configmap", vol["configMap"]["name"])
                for key, text in (cm.get("data") or {}).items():
                    if key.endswith(".json"):
                        text = json.dumps(map_mount_paths(json.loads(text), mounts))
                    (mounts[mount["mountPath"]] / key).write_text(text)
        return mounts

    def _triton(self, deployment: Mapping[str, Any]) -> TritonServer:
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        root = self.workdir / name
        (builder,) = pod["initContainers"]
        mounts = self._volumes(pod, builder, root)
        log = root / "repository.log"
        with log.open("wb") as out:
            code = subprocess.call(
                local_argv(builder, mounts), stdout=out, stderr=subprocess.STDOUT, cwd=root
            )
        if code != 0:
            raise RuntimeError(
                f"{name}: the repository init container exited {code}:\n" + log.read_text()[-3000:]
            )
        (main,) = pod["containers"]
        served = self._volumes(pod, main, root)
        repository = next(
            a.split("=", 1)[1]
            for a in local_argv(main, served)
            if a.startswith("--model-repository=")
        )
        ports = self._get("service", name)["spec"]["ports"]
        http_port = next(p["port"] for p in ports if p["name"] == "http")
        return start_triton(
            Path(repository), timeout=600, address=self.dns.address(name), http_port=http_port
        )

    def _triton_deployments(self, recommender: str) -> list[dict[str, Any]]:
        items = self._get(
            "deployment", "-l", f"{RECOMMENDER_LABEL}={recommender},{COMPONENT_LABEL}=triton"
        )["items"]
        return list(items)

    def sync(self, serving: LocalServing, recommender: str) -> None:
        """Start the Tritons of Deployments that appeared, stop those of Deployments gone."""
        deployments = {d["metadata"]["name"]: d for d in self._triton_deployments(recommender)}
        for name in [n for n in serving.tritons if n not in deployments]:
            with serving.lock:
                serving.tritons.pop(name).stop()
        for name, dep in deployments.items():
            if name in serving.tritons or serving.stopping.is_set():
                continue
            try:
                triton = self._triton(dep)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                self.failures[name] = str(exc)
                continue
            with serving.lock:
                if serving.stopping.is_set():
                    triton.stop()
                    return
                serving.tritons[name] = triton

    def serve(self, recommender: str, follow: bool = True) -> LocalServing:
        """Start the Recommender's Tritons and gateways; with ``follow``, keep its Tritons in
        step with its Deployments (a canary's comes, a replaced version's goes) until stop."""
        serving = LocalServing(url="")
        try:
            self.sync(serving, recommender)
            if self.failures:
                raise RuntimeError("; ".join(self.failures.values()))
            (gateway,) = self._get(
                "deployment", "-l", f"{RECOMMENDER_LABEL}={recommender},{COMPONENT_LABEL}=gateway"
            )["items"]
            self._gateways(serving, gateway)
            self._wait_ready(serving)
        except BaseException:
            serving.stop()
            raise
        if follow:

            def follow_deployments() -> None:
                while not serving.stopping.wait(SYNC_SECONDS):
                    try:
                        self.sync(serving, recommender)
                    except (RuntimeError, subprocess.SubprocessError, ValueError):
                        continue  # the API server is busy or going away: look again

            serving.follower = threading.Thread(target=follow_deployments, daemon=True)
            serving.follower.start()
        return serving

    def _gateways(self, serving: LocalServing, deployment: Mapping[str, Any]) -> None:
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        replicas = max(1, min(int(deployment["spec"].get("replicas", 1)), MAX_GATEWAY_REPLICAS))
        (main,) = pod["containers"]
        for n in range(replicas):
            root = self.workdir / f"{name}-{n}"
            mounts = self._volumes(pod, main, root)
            port = free_port()
            argv = [a for a in local_argv(main, mounts) if not a.startswith("--port")]
            log = (root / "gateway.log").open("wb")
            env = {**os.environ, "HOSTNAME": f"{name}-{n}"}
            proc = subprocess.Popen(
                self.dns.wrap([*argv, f"--port={port}", "--host=127.0.0.1"]),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=root,
                env=env,
            )
            serving.gateways.append(proc)
            serving.urls.append(f"http://127.0.0.1:{port}")
        serving.url = serving.urls[0]

    @staticmethod
    def _wait_ready(serving: LocalServing, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(serving.urls)
        while waiting and time.monotonic() < deadline:
            for proc in serving.gateways:
                if proc.poll() is not None:
                    raise RuntimeError(f"a gateway exited {proc.returncode}")
            for url in list(waiting):
                try:
                    with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
                        if resp.status == 200:
                            waiting.remove(url)
                except (urllib.error.URLError, OSError):
                    pass
            time.sleep(0.5)
        if waiting:
            raise RuntimeError(f"the gateways at {waiting} were not ready within {timeout:.0f} s")
