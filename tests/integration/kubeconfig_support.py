"""Kubeconfigs of every kind a user brings, made from the testbed's own: inline data,
token only, an exec credential plugin (a script that counts its runs), a service-account
directory as a pod has it."""

from __future__ import annotations

import base64
import datetime as dt
import json
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fixtures.kube import Testbed

EXEC_API_VERSION = "client.authentication.k8s.io/v1"


def flattened(testbed: Testbed) -> dict[str, Any]:
    """The current context with every file inlined, as ``kubectl config view --raw --flatten
    --minify`` gives a laptop user."""
    out = testbed.kubectl("config", "view", "--raw", "--flatten", "--minify", "-o", "json")
    config: dict[str, Any] = json.loads(out.stdout)
    return config


def write(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def with_user(testbed: Testbed, user: dict[str, Any], path: Path) -> Path:
    """The testbed's cluster (CA inline) and ``user`` as the only credential."""
    cluster = flattened(testbed)["clusters"][0]
    return write(
        path,
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [cluster],
            "users": [{"name": "u", "user": user}],
            "contexts": [{"name": "c", "context": {"cluster": cluster["name"], "user": "u"}}],
            "current-context": "c",
        },
    )


def reader_token(testbed: Testbed, namespace: str, account: str = "reader") -> str:
    """A token of a ServiceAccount that may read the ConfigMaps of ``namespace``."""
    testbed.kubectl("create", "serviceaccount", account, "-n", namespace)
    testbed.kubectl(
        "create", "role", account, "--verb=get,list", "--resource=configmaps", "-n", namespace
    )
    testbed.kubectl(
        "create", "rolebinding", account, f"--role={account}",
        f"--serviceaccount={namespace}:{account}", "-n", namespace,
    )  # fmt: skip
    return testbed.kubectl(
        "create", "token", account, "-n", namespace, "--duration=1h"
    ).stdout.strip()


@dataclass
class ExecPluginScript:
    """A credential plugin that prints ``tokens[n]`` on its n-th run (the last one from then
    on), valid for ``lifetime`` seconds, and appends the time of each run to ``runs_file``."""

    path: Path
    runs_file: Path
    exec_info_file: Path

    @classmethod
    def write(cls, directory: Path, tokens: list[str], lifetime: float) -> ExecPluginScript:
        directory.mkdir(parents=True, exist_ok=True)
        plugin = cls(directory / "plugin.py", directory / "runs", directory / "exec-info.json")
        plugin.path.write_text(
            f"#!{sys.executable}\n"
            + textwrap.dedent(f"""
                import datetime as dt, json, os, pathlib
                runs = pathlib.Path({str(plugin.runs_file)!r})
                n = len(runs.read_text().splitlines()) if runs.exists() else 0
                with runs.open("a") as f:
                    f.write(dt.datetime.now(dt.timezone.utc).isoformat() + "\\n")
                pathlib.Path({str(plugin.exec_info_file)!r}).write_text(
                    os.environ.get("KUBERNETES_EXEC_INFO", ""))
                tokens = {tokens!r}
                expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds={lifetime})
                print(json.dumps({{
                    "apiVersion": {EXEC_API_VERSION!r},
                    "kind": "ExecCredential",
                    "status": {{
                        "token": tokens[min(n, len(tokens) - 1)],
                        "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    }},
                }}))
            """)
        )
        plugin.path.chmod(0o755)
        return plugin

    def user(self) -> dict[str, Any]:
        return {
            "exec": {
                "apiVersion": EXEC_API_VERSION,
                "command": str(self.path),
                "interactiveMode": "Never",
                "provideClusterInfo": True,
            }
        }

    def runs(self) -> list[dt.datetime]:
        if not self.runs_file.exists():
            return []
        return [dt.datetime.fromisoformat(line) for line in self.runs_file.read_text().split()]

    def exec_info(self) -> dict[str, Any]:
        info: dict[str, Any] = json.loads(self.exec_info_file.read_text())
        return info


def service_account_dir(testbed: Testbed, token: str, namespace: str, path: Path) -> Path:
    """What the kubelet mounts into a pod: token, namespace, the cluster's CA."""
    path.mkdir(parents=True, exist_ok=True)
    cluster = flattened(testbed)["clusters"][0]["cluster"]
    (path / "ca.crt").write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    (path / "namespace").write_text(namespace)
    (path / "token").write_text(token)
    return path


def server_host_port(testbed: Testbed) -> tuple[str, str]:
    """KUBERNETES_SERVICE_HOST and _PORT as a pod sees them, for the testbed's apiserver."""
    url = urlsplit(flattened(testbed)["clusters"][0]["cluster"]["server"])
    assert url.hostname is not None
    return url.hostname, str(url.port or 443)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
