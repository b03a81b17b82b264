"""Runs the operator's workload pods as local processes: a stand-in kubelet for Job pods.

kwok plays the nodes but runs no container. For the closed loop on one machine (the demo and
the end-to-end test) this runner picks up the operator's Job pods that kwok holds Running,
runs each one's command here (``python -m recsys_workloads.<workload> --config …``) with the
pod's ConfigMap volume and environment resolved, and ends the pod with the process's exit code
and termination message, exactly what the kubelet reports. The workload code, its config and
its summary are the real ones; only the container runtime is replaced by a subprocess.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from testbed.controlplane import run_kubectl

MANAGED = "app.kubernetes.io/managed-by=recsys-operator"


def map_mount_paths(value: Any, mounts: Mapping[str, Path]) -> Any:
    """``value`` (a string, or JSON made of lists and dicts) with every path under a volume's
    mountPath, bare or as ``--flag=PATH``, pointed at the local folder standing in for it."""
    if isinstance(value, dict):
        return {k: map_mount_paths(v, mounts) for k, v in value.items()}
    if isinstance(value, list):
        return [map_mount_paths(v, mounts) for v in value]
    if isinstance(value, str):
        flag, eq, path = value.partition("=") if value.startswith("--") else ("", "", value)
        for mount_path, local in mounts.items():
            if path == mount_path or path.startswith(mount_path + "/"):
                return f"{flag}{eq}{local}{path[len(mount_path) :]}"
    return value


def local_argv(container: Mapping[str, Any], mounts: Mapping[str, Path]) -> list[str]:
    """The container's command line for this machine: mount paths mapped, and ``python -m X``
    (or ``torchrun ... -m X``) run as the module with this Python."""
    argv = [
        str(a)
        for a in map_mount_paths(
            [*container.get("command", []), *container.get("args", [])], mounts
        )
    ]
    if "-m" in argv:
        return [sys.executable, *argv[argv.index("-m") :]]
    return argv


class LocalRunner:
    """Polls for held Job pods in ``namespace`` and runs them, one thread per pod."""

    def __init__(
        self,
        kubectl: Path,
        kubeconfig: Path,
        namespace: str,
        *,
        extra_env: Mapping[str, str] | None = None,
        poll: float = 1.0,
    ) -> None:
        self.kubectl, self.kubeconfig, self.namespace = kubectl, kubeconfig, namespace
        self.extra_env = dict(extra_env or {})
        self.poll = poll
        self.started: set[str] = set()
        self.finished: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.workdir = Path(tempfile.mkdtemp(prefix="recsys-local-runner-"))

    def _k(self, *args: str, input: str | None = None) -> str:
        return run_kubectl(
            self.kubectl, self.kubeconfig, ["-n", self.namespace, *args], input=input
        ).stdout

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                pods = json.loads(self._k("get", "pods", "-l", MANAGED, "-o", "json"))["items"]
            except subprocess.SubprocessError:
                pods = []
            for pod in pods:
                name = pod["metadata"]["name"]
                owners = {o["kind"] for o in pod["metadata"].get("ownerReferences", [])}
                if name in self.started or "Job" not in owners:
                    continue
                if pod["status"].get("phase") != "Running":
                    continue
                self.started.add(name)
                threading.Thread(target=self._run_pod, args=(pod,), daemon=True).start()
            self._stop.wait(self.poll)

    def _secret_value(self, name: str, key: str) -> str:
        secret = json.loads(self._k("get", "secret", name, "-o", "json"))
        return base64.b64decode(secret["data"][key]).decode()

    def _environment(self, container: Mapping[str, Any]) -> dict[str, str]:
        env = {**os.environ, **self.extra_env}
        for ref in container.get("envFrom", []) or []:
            if "secretRef" in ref:
                secret = json.loads(
                    self._k("get", "secret", ref["secretRef"]["name"], "-o", "json")
                )
                env |= {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        for var in container.get("env", []) or []:
            if "value" in var:
                env[var["name"]] = var["value"]
            elif "secretKeyRef" in var.get("valueFrom", {}):
                ref = var["valueFrom"]["secretKeyRef"]
                env[var["name"]] = self._secret_value(ref["name"], ref["key"])
            elif (
                var.get("valueFrom", {})
                .get("fieldRef", {})
                .get("fieldPath", "")
                .endswith("job-completion-index']")
            ):
                env[var["name"]] = "0"
        return env

    def _mounts(self, pod: Mapping[str, Any], root: Path) -> dict[str, Path]:
        """ConfigMap volumes written to files; returns mountPath -> local directory."""
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        out: dict[str, Path] = {}
        for mount in pod["spec"]["containers"][0].get("volumeMounts", []):
            vol = volumes.get(mount["name"], {})
            local = root / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            if "configMap" in vol:
                cm = json.loads(self._k("get", "configmap", vol["configMap"]["name"], "-o", "json"))
                for key, value in (cm.get("data") or {}).items():
                    (local / key).write_text(value)
            out[mount["mountPath"]] = local
        return out

    def _run_pod(self, pod: Mapping[str, Any]) -> None:
        name = pod["metadata"]["name"]
        container = pod["spec"]["containers"][0]
        root = self.workdir / name
        mounts = self._mounts(pod, root)
        term = root / "termination-log"
        argv = local_argv(container, mounts)
        started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with (root / "output.log").open("wb") as out:
            code = subprocess.call(
                [*argv, "--termination-log", str(term)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._environment(container),
                cwd=root,
            )
        message = term.read_text() if term.exists() else ""
        finished = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        status = {
            "phase": "Succeeded" if code == 0 else "Failed",
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container["image"],
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "started": False,
                    "state": {
                        "terminated": {
                            "exitCode": code,
                            "reason": "Completed" if code == 0 else "Error",
                            "message": message,
                            "startedAt": started,
                            "finishedAt": finished,
                        }
                    },
                }
            ],
        }
        self._k(
            "patch",
            "pod",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": status}),
        )
        self.finished[name] = code

    def wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.finished) < len(self.started):
            time.sleep(0.5)
