"""Plays a Recommender's serving Deployments on this machine, from the objects the operator made.

The stand-in kubelet of ``local_runner.py`` runs Job pods; this does the same for the serving
pods, so the demo (and its end-to-end test) can answer a recommendation request from what the
operator rendered, not from a hand-written config:

- each Triton Deployment: its init container's command runs here with the pod's ConfigMap
  and emptyDir volumes standing in as local folders (the repository is built from the
  version's artifact exactly as in the pod), then the testbed's ``tritonserver`` serves that
  folder;
- the gateway Deployment: ``python -m recsys_workloads.gateway`` with the gateway's ConfigMap,
  on a free local port.

Two things a pod gets from Kubernetes are mapped by hand, and only these: a path under a
volume's ``mountPath`` (in argv, and in the JSON config files the ConfigMaps hold) becomes the
local folder that stands in for the volume, and a Triton Service's cluster DNS name in the
gateway's routing table becomes the local Triton's address.
"""

from __future__ import annotations

import json
import subprocess
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


@dataclass
class LocalServing:
    """The served Recommender: the gateway's base URL and everything started for it."""

    url: str
    tritons: dict[str, TritonServer] = field(default_factory=dict)
    gateway: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.gateway is not None and self.gateway.poll() is None:
            self.gateway.terminate()
            self.gateway.wait(15)
        for triton in self.tritons.values():
            triton.stop()


class ServingPlayer:
    def __init__(self, kubectl: Path, kubeconfig: Path, namespace: str, workdir: Path) -> None:
        self.kubectl, self.kubeconfig, self.namespace = kubectl, kubeconfig, namespace
        self.workdir = workdir

    def _get(self, *args: str) -> Any:
        out = run_kubectl(self.kubectl, self.kubeconfig, ["-n", self.namespace, "get", *args, "-o",
                                                          "json"]).stdout
        return json.loads(out)

    def _volumes(self, pod: Mapping[str, Any], container: Mapping[str, Any], root: Path
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
            code = subprocess.call(local_argv(builder, mounts), stdout=out,
                                   stderr=subprocess.STDOUT, cwd=root)
        if code != 0:
            raise RuntimeError(f"{name}: the repository init container exited {code}:\n"
                               + log.read_text()[-3000:])
        (main,) = pod["containers"]
        served = self._volumes(pod, main, root)
        repository = next(a.split("=", 1)[1] for a in local_argv(main, served)
                          if a.startswith("--model-repository="))
        return start_triton(Path(repository), timeout=600)

    def serve(self, recommender: str) -> LocalServing:
        deployments = self._get("deployment", "-l",
                                f"{RECOMMENDER_LABEL}={recommender}")["items"]
        serving = LocalServing(url="")
        endpoints: dict[str, str] = {}
        try:
            for dep in deployments:
                if dep["metadata"]["labels"].get(COMPONENT_LABEL) == "triton":
                    triton = self._triton(dep)
                    serving.tritons[dep["metadata"]["name"]] = triton
                    for port in self._get("service", dep["metadata"]["name"])["spec"]["ports"]:
                        if port["name"] == "http":
                            svc = f"{dep['metadata']['name']}.{self.namespace}.svc"
                            endpoints[f"{svc}:{port['port']}"] = triton.http_url
            (gateway,) = [d for d in deployments
                          if d["metadata"]["labels"].get(COMPONENT_LABEL) == "gateway"]
            serving.gateway, serving.url = self._gateway(gateway, endpoints)
            self._wait_ready(serving)
        except BaseException:
            serving.stop()
            raise
        return serving

    def _gateway(self, deployment: Mapping[str, Any], endpoints: Mapping[str, str]
                 ) -> tuple[subprocess.Popen[bytes], str]:
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        root = self.workdir / name
        (main,) = pod["containers"]
        mounts = self._volumes(pod, main, root)
        for path in [p for folder in mounts.values() for p in folder.glob("*.json")]:
            cfg = json.loads(path.read_text())
            for variant in ("stable", "canary"):
                target = (cfg.get("routing") or {}).get(variant)
                if target:
                    target["triton"] = endpoints[target["triton"]]
            path.write_text(json.dumps(cfg))
        port = free_port()
        argv = [a for a in local_argv(main, mounts) if not a.startswith("--port")]
        log = (root / "gateway.log").open("wb")
        proc = subprocess.Popen([*argv, f"--port={port}", "--host=127.0.0.1"], stdout=log,
                                stderr=subprocess.STDOUT, cwd=root)
        return proc, f"http://127.0.0.1:{port}"

    @staticmethod
    def _wait_ready(serving: LocalServing, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if serving.gateway is not None and serving.gateway.poll() is not None:
                raise RuntimeError(f"the gateway exited {serving.gateway.returncode}")
            try:
                with urllib.request.urlopen(f"{serving.url}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the gateway at {serving.url} was not ready within {timeout:.0f} s")
