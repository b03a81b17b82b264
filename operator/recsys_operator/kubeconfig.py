"""Which cluster, and as whom: the one place the operator loads its connection settings.

kopf's watches and the operator's own requests must authenticate alike, so the configuration is
loaded once (``load``) and both take what they need from it: kopf a ``kopf.ConnectionInfo``
from ``Credentials.login`` (its login handler), ``KubeClient`` an httpx client from
``Credentials.http_client``. Resolved twice, the two would disagree on all but the simplest
kubeconfig, and an exec plugin would run twice as often as it must.

lightkube does the parsing, TLS from files or inline base64 data, tokens, token files (re-read
on a 401, so a kubelet-rotated service-account token is picked up) and the in-cluster service
account. Added here, because lightkube lacks it:

- exec credential plugins (``users[].user.exec``, as EKS, GKE and AKS use) of
  ``client.authentication.k8s.io/v1``, which lightkube refuses. The token is kept until its
  ``expirationTimestamp`` (lightkube ignores it, and kopf must know it to log in again in
  time), the plugin runs again on a 401, gets ``KUBERNETES_EXEC_INFO`` and no terminal.
- ``KUBECONFIG`` naming several files, merged as kubectl merges them.

The lookup order is controller-runtime's: ``$KUBECONFIG``, then the in-cluster service account,
then ``~/.kube/config``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
from collections.abc import AsyncGenerator, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import kopf
import yaml
from lightkube import ConfigError, KubeConfig, SingleConfig
from lightkube.config.client_adapter import ConnectionParams
from lightkube.config.models import User

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = "~/.kube/config"
#: v1alpha1 left Kubernetes (and kubectl) in 1.24.
EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
#: A plugin that hangs (waiting for a browser login, say) must not wedge the operator.
EXEC_TIMEOUT_SECONDS = 120.0

#: Fields that name files, resolved against the kubeconfig that holds them (as kubectl does).
_FILE_FIELDS = {
    "clusters": ("certificate-authority",),
    "users": ("client-certificate", "client-key", "tokenFile"),
}
_SECTIONS = (("clusters", "cluster"), ("users", "user"), ("contexts", "context"))


def _resolve(value: str, base: Path) -> str:
    return value if Path(value).is_absolute() else str(base / value)


def merge_kubeconfigs(paths: Sequence[Path]) -> dict[str, Any]:
    """kubectl's merge: the first file that names a cluster, user or context (or sets the
    current context) wins; relative file paths are relative to the file that holds them."""
    merged: dict[str, Any] = {section: [] for section, _ in _SECTIONS}
    seen: dict[str, set[str]] = {section: set() for section, _ in _SECTIONS}
    current: str | None = None
    for path in paths:
        doc = yaml.safe_load(path.read_text()) or {}
        current = current or doc.get("current-context") or None
        for section, key in _SECTIONS:
            for entry in doc.get(section) or []:
                if entry["name"] in seen[section]:
                    continue
                seen[section].add(entry["name"])
                body = dict(entry.get(key) or {})
                for name in _FILE_FIELDS.get(section, ()):
                    if body.get(name):
                        body[name] = _resolve(body[name], path.parent)
                command = (body.get("exec") or {}).get("command", "")
                if os.sep in command:  # a bare name is looked up on the PATH
                    body["exec"] = {**body["exec"], "command": _resolve(command, path.parent)}
                merged[section].append({"name": entry["name"], key: body})
    merged["current-context"] = current
    return merged


@dataclass(frozen=True, eq=False)  # compared by identity: each plugin run is a new one
class ExecToken:
    token: str
    expiration: dt.datetime | None  # None: valid until the API server says otherwise (401)

    def valid(self) -> bool:
        return self.expiration is None or dt.datetime.now(dt.UTC) < self.expiration


class ExecPlugin:
    """A credential plugin of a kubeconfig user, and the last token it printed."""

    def __init__(self, spec: Mapping[str, Any], cluster: Mapping[str, Any]) -> None:
        self.api_version = str(spec.get("apiVersion", ""))
        if self.api_version not in EXEC_API_VERSIONS:
            raise ConfigError(
                f"exec plugin apiVersion {self.api_version!r} is not supported "
                f"(use one of {', '.join(EXEC_API_VERSIONS)})"
            )
        if spec.get("interactiveMode") == "Always":
            raise ConfigError(
                "the exec plugin needs a terminal (interactiveMode: Always), "
                "which an operator does not have"
            )
        self.command = [str(spec["command"]), *(str(a) for a in spec.get("args") or [])]
        self.env = {str(e["name"]): str(e["value"]) for e in spec.get("env") or []}
        self.install_hint = str(spec.get("installHint") or "")
        exec_spec: dict[str, Any] = {"interactive": False}
        if spec.get("provideClusterInfo"):
            exec_spec["cluster"] = _cluster_info(cluster)
        self.exec_info = json.dumps(
            {"apiVersion": self.api_version, "kind": "ExecCredential", "spec": exec_spec}
        )
        self._current: ExecToken | None = None
        self._handed_to_kopf: ExecToken | None = None
        self._lock = asyncio.Lock()

    async def token(self, *, stale: ExecToken | None = None) -> ExecToken:
        """The last token while it has not expired and is not ``stale`` (the one a 401 just
        refused); else the plugin's next one. Concurrent callers share one plugin run."""
        async with self._lock:
            current = self._current
            if current is None or current is stale or not current.valid():
                self._current = current = await self._run()
            return current

    async def token_for_kopf(self) -> ExecToken:
        """kopf logs in again only when its token expired or was refused, so the token it
        already holds is stale for it (a newer one the client fetched meanwhile is not)."""
        token = await self.token(stale=self._handed_to_kopf)
        self._handed_to_kopf = token
        return token

    async def _run(self) -> ExecToken:
        hint = f" ({self.install_hint})" if self.install_hint else ""
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command,
                env={**os.environ, **self.env, "KUBERNETES_EXEC_INFO": self.exec_info},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise ConfigError(f"exec plugin {self.command[0]!r} cannot run: {exc}{hint}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), EXEC_TIMEOUT_SECONDS)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ConfigError(
                f"exec plugin {self.command[0]!r} did not answer in {EXEC_TIMEOUT_SECONDS:.0f} s"
            ) from None
        if proc.returncode != 0:
            raise ConfigError(
                f"exec plugin {self.command[0]!r} exited {proc.returncode}: "
                f"{err.decode(errors='replace').strip()[-500:]}{hint}"
            )
        return self._parse(out)

    def _parse(self, out: bytes) -> ExecToken:
        what = f"exec plugin {self.command[0]!r}"
        try:
            cred = json.loads(out)
        except ValueError:
            raise ConfigError(f"{what} printed no JSON ExecCredential") from None
        if not isinstance(cred, dict) or cred.get("kind") != "ExecCredential":
            raise ConfigError(f"{what} printed no ExecCredential")
        if cred.get("apiVersion") != self.api_version:
            raise ConfigError(
                f"{what} answered {cred.get('apiVersion')!r}, "
                f"the kubeconfig asks for {self.api_version!r}"
            )
        status = cred.get("status") or {}
        if not status.get("token"):
            if status.get("clientCertificateData"):
                raise ConfigError(f"{what} returns a client certificate; only tokens are supported")
            raise ConfigError(f"{what} returned no token")
        expiration = None
        if status.get("expirationTimestamp"):
            expiration = dt.datetime.fromisoformat(str(status["expirationTimestamp"]))
            if expiration.tzinfo is None:
                expiration = expiration.replace(tzinfo=dt.UTC)
        return ExecToken(str(status["token"]), expiration)


def _cluster_info(cluster: Mapping[str, Any]) -> dict[str, Any]:
    """The ``spec.cluster`` an exec plugin with ``provideClusterInfo`` receives."""
    info = {
        k: cluster[k]
        for k in ("server", "tls-server-name", "insecure-skip-tls-verify", "proxy-url")
        if k in cluster
    }
    if cluster.get("certificate-authority-data"):
        info["certificate-authority-data"] = cluster["certificate-authority-data"]
    elif cluster.get("certificate-authority"):
        ca = Path(cluster["certificate-authority"]).read_bytes()
        info["certificate-authority-data"] = base64.b64encode(ca).decode()
    for ext in cluster.get("extensions") or []:
        if ext.get("name") == "client.authentication.k8s.io/exec":
            info["config"] = ext.get("extension")
    return info


class ExecAuth(httpx.Auth):
    """Bearer token from the plugin; on a 401, one retry with the plugin's next token."""

    def __init__(self, plugin: ExecPlugin) -> None:
        self.plugin = plugin

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        raise RuntimeError("the operator's client is async only")

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self.plugin.token()
        request.headers["Authorization"] = f"Bearer {token.token}"
        response = yield request
        if response.status_code == 401:
            token = await self.plugin.token(stale=token)
            request.headers["Authorization"] = f"Bearer {token.token}"
            yield request


@dataclass
class Credentials:
    """The loaded configuration: one cluster, one user (lightkube's view of the context)."""

    config: SingleConfig
    #: Where it came from, for the start-up log: ``in-cluster`` or the kubeconfig path(s).
    source: str
    exec_plugin: ExecPlugin | None = field(default=None)

    @property
    def server(self) -> str:
        return str(self.config.cluster.server).rstrip("/")

    @property
    def user(self) -> User:
        return self.config.user or User()

    def http_client(
        self,
        *,
        trust_env: bool = False,
        timeout: float = 60,
        limits: httpx.Limits | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.AsyncClient:
        """An httpx client with this server's TLS and this user's authentication."""
        params = ConnectionParams(timeout=httpx.Timeout(timeout), trust_env=trust_env)
        kwargs = params.httpx_params(self.config._replace(user=self.user))
        if self.exec_plugin is not None:
            kwargs["auth"] = ExecAuth(self.exec_plugin)
        return httpx.AsyncClient(
            **kwargs, limits=limits or httpx.Limits(), headers=dict(headers or {})
        )

    async def login(self, *, trust_env: bool = False) -> kopf.ConnectionInfo:
        """The same credentials in kopf's terms; kopf calls this at start, when the token's
        ``expiration`` passes and after a 401, so each call gives the freshest token."""
        cluster, user = self.config.cluster, self.user

        def path(value: str | None) -> str | None:
            return str(self.config.abs_file(value)) if value else None

        token: str | None = None
        expiration: dt.datetime | None = None
        if self.exec_plugin is not None:
            exec_token = await self.exec_plugin.token_for_kopf()
            token, expiration = exec_token.token, exec_token.expiration
        elif user.token_file:  # in-cluster too: the kubelet rotates this file
            token = _read_token(str(path(user.token_file)))
        elif user.token:
            token = user.token
        # kopf takes inline data as base64 (the kubeconfig's form) or PEM.
        return kopf.ConnectionInfo(
            server=self.server,
            ca_path=path(cluster.certificate_auth),
            ca_data=cluster.certificate_auth_data,
            insecure=cluster.insecure or None,
            certificate_path=path(user.client_cert),
            certificate_data=user.client_cert_data,
            private_key_path=path(user.client_key),
            private_key_data=user.client_key_data,
            username=user.username,
            password=user.password,
            scheme="Bearer" if token else None,
            token=token,
            default_namespace=self.config.context.namespace,
            trust_env=trust_env,
            expiration=expiration,
        )


def _read_token(path: str) -> str:
    return Path(path).read_text().strip()


def _in_cluster(service_account: Path) -> bool:
    return (service_account / "token").is_file() and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def from_files(paths: Sequence[Path], context: str | None = None) -> Credentials:
    found = [p for p in paths if p.is_file()]  # kubectl skips the missing ones
    if not found:
        raise ConfigError(f"no kubeconfig file at {os.pathsep.join(map(str, paths))}")
    raw = merge_kubeconfigs(found)
    kubeconfig = KubeConfig.from_dict(raw, fname=found[0])
    try:
        config = kubeconfig.get(context)
    except KeyError as exc:
        raise ConfigError(f"the kubeconfig context names no {exc} entry") from None
    if config is None:  # only with a default, which is not given
        raise ConfigError("the kubeconfig sets no current context")
    plugin = None
    if config.user is not None and config.user.exec is not None:
        users = {u["name"]: u["user"] for u in raw["users"]}
        clusters = {c["name"]: c["cluster"] for c in raw["clusters"]}
        assert config.context.user is not None  # a user was found by this name
        plugin = ExecPlugin(users[config.context.user]["exec"], clusters[config.context.cluster])
    if config.user is not None and config.user.auth_provider:
        raise ConfigError(
            "auth-provider users are not supported (kubectl dropped them in "
            "1.26); use the provider's exec plugin"
        )
    return Credentials(config, os.pathsep.join(map(str, found)), plugin)


def load(
    kubeconfig: str | None = None,
    *,
    service_account: Path = SERVICE_ACCOUNT,
    context: str | None = None,
) -> Credentials:
    """``kubeconfig`` (default ``$KUBECONFIG``, a path list), else the in-cluster service
    account, else ``~/.kube/config``. Raises ``lightkube.ConfigError`` saying what is wrong."""
    if kubeconfig is None:
        kubeconfig = os.environ.get("KUBECONFIG", "")
    if kubeconfig:
        paths = [Path(p).expanduser() for p in kubeconfig.split(os.pathsep) if p]
        return from_files(paths, context)
    if _in_cluster(service_account):
        config = KubeConfig.from_service_account(service_account).get()
        assert config is not None
        return Credentials(config, "in-cluster")
    default = Path(DEFAULT_KUBECONFIG).expanduser()
    if default.is_file():
        return from_files([default], context)
    raise ConfigError(
        "no kubeconfig ($KUBECONFIG or ~/.kube/config) and no in-cluster service account"
    )
