"""A small async Kubernetes client over raw dicts, on the credentials kopf already resolved.

Why not a full client library: the operator touches a dozen kinds, always as plain dicts it
renders itself, and needs three verbs done right (server-side apply with a fixed field manager,
status merge patches, reads). The official client alone dominates a kopf operator's memory; this
module is a few hundred lines on aiohttp, which kopf brings anyway. Every request is counted by
verb, so benchmarks can report API requests per object.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
import kopf
from prometheus_client import Counter

from recsys_operator import GROUP, VERSION

FIELD_MANAGER = "recsys-operator"
SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")

API_REQUESTS = Counter(
    "recsys_operator_api_requests_total",
    "Requests the operator sent to the Kubernetes API, by verb and kind.",
    ["verb", "kind"],
)


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace)}"
        base += f"/{self.plural}"
        if name:
            base += f"/{quote(name)}"
        if sub:
            base += f"/{sub}"
        return base


#: The kinds the operator reads or writes, by (apiVersion, kind).
RESOURCES: dict[tuple[str, str], ResourceType] = {
    ("v1", "ConfigMap"): ResourceType("", "v1", "configmaps"),
    ("v1", "Secret"): ResourceType("", "v1", "secrets"),
    ("v1", "Service"): ResourceType("", "v1", "services"),
    ("v1", "Pod"): ResourceType("", "v1", "pods"),
    ("v1", "Event"): ResourceType("", "v1", "events"),
    ("v1", "Namespace"): ResourceType("", "v1", "namespaces", namespaced=False),
    ("apps/v1", "Deployment"): ResourceType("apps", "v1", "deployments"),
    ("batch/v1", "Job"): ResourceType("batch", "v1", "jobs"),
    ("batch/v1", "CronJob"): ResourceType("batch", "v1", "cronjobs"),
    (f"{GROUP}/{VERSION}", "Recommender"): ResourceType(GROUP, VERSION, "recommenders"),
    (f"{GROUP}/{VERSION}", "FeatureView"): ResourceType(GROUP, VERSION, "featureviews"),
    (f"{GROUP}/{VERSION}", "ModelVersion"): ResourceType(GROUP, VERSION, "modelversions"),
}


def resource_type(api_version: str, kind: str) -> ResourceType:
    try:
        return RESOURCES[(api_version, kind)]
    except KeyError:
        raise ValueError(f"the operator does not handle {kind} in {api_version}") from None


class ApiError(Exception):
    """A non-2xx answer; ``status`` is the HTTP code, ``reason`` Kubernetes' reason word."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def rbac_denied(self) -> bool:
        """RBAC said no (not an admission webhook): fixing the Role makes a retry succeed."""
        return self.status == 403 and " cannot " in self.message

    @property
    def retryable(self) -> bool:
        """Conflicts, throttling, server trouble and missing permissions pass with time (or an
        administrator); a 4xx about the object itself does not."""
        return self.status in (409, 429) or self.status >= 500 or self.rbac_denied


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    ctx = ssl.create_default_context(
        cafile=str(info.ca_path) if info.ca_path else None,
        cadata=info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data,
    )
    if info.certificate_path and info.private_key_path:
        ctx.load_cert_chain(str(info.certificate_path), str(info.private_key_path))
    elif info.certificate_data and info.private_key_data:
        raise ValueError("inline client certificates are not supported; use file paths")
    return ctx


class KubeClient:
    """Raw-dict access to the API server. One instance per operator process."""

    def __init__(self, info: kopf.ConnectionInfo, field_manager: str = FIELD_MANAGER) -> None:
        self.server = info.server.rstrip("/")
        self.field_manager = field_manager
        headers = {"Accept": "application/json", "User-Agent": "recsys-operator"}
        self._scheme = info.scheme or "Bearer"
        self._token = info.token
        # In a pod the kubelet rotates the projected service-account token (about hourly);
        # read it again rather than keep the one from start-up until it expires.
        self._token_path = (
            SERVICE_ACCOUNT_TOKEN if info.token and SERVICE_ACCOUNT_TOKEN.exists() else None
        )
        self._token_read = time.monotonic()
        self._headers = headers
        self._ssl = _ssl_context(info)
        self._session: aiohttp.ClientSession | None = None

    def _auth(self) -> dict[str, str]:
        if self._token_path is not None and time.monotonic() - self._token_read > 60:
            self._token = self._token_path.read_text().strip()
            self._token_read = time.monotonic()
        return {"Authorization": f"{self._scheme} {self._token}"} if self._token else {}

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=32),
                timeout=aiohttp.ClientTimeout(total=60),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        kind: str,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        API_REQUESTS.labels(method.lower(), kind).inc()
        session = await self._http()
        data = None if body is None else json.dumps(body)
        headers = self._auth()
        if data is not None:
            headers["Content-Type"] = content_type
        async with session.request(
            method, self.server + path, params=params, data=data, headers=headers
        ) as resp:
            text = await resp.text()
            payload: dict[str, Any] = json.loads(text) if text else {}
            if resp.status >= 400:
                raise ApiError(
                    resp.status,
                    str(payload.get("reason", resp.reason or "")),
                    str(payload.get("message", text[:500])),
                )
            return payload

    async def get(
        self, api_version: str, kind: str, name: str, namespace: str | None
    ) -> dict[str, Any] | None:
        rt = resource_type(api_version, kind)
        try:
            return await self.request("GET", rt.path(namespace, name), kind=kind)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        labels: Mapping[str, str] | None = None,
        fields: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """List, filtered on the server by labels and (for selectable fields) field values."""
        rt = resource_type(api_version, kind)
        params: dict[str, str] = {}
        if labels:
            params["labelSelector"] = ",".join(f"{k}={v}" for k, v in labels.items())
        if fields:
            params["fieldSelector"] = ",".join(f"{k}={v}" for k, v in fields.items())
        out = await self.request("GET", rt.path(namespace), kind=kind, params=params or None)
        items: list[dict[str, Any]] = out.get("items", [])
        for item in items:  # list items come without apiVersion/kind
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    async def apply(self, obj: Mapping[str, Any], *, force: bool = True) -> dict[str, Any]:
        """Server-side apply under the operator's field manager.

        ``force`` takes over fields another manager set (a user's ``kubectl edit`` of a child):
        the operator owns its children's spec, as every controller does.
        """
        meta = obj["metadata"]
        rt = resource_type(obj["apiVersion"], obj["kind"])
        params = {"fieldManager": self.field_manager, "force": "true" if force else "false"}
        return await self.request(
            "PATCH",
            rt.path(meta.get("namespace"), meta["name"]),
            kind=obj["kind"],
            params=params,
            body=obj,
            content_type="application/apply-patch+yaml",
        )

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        rt = resource_type(obj["apiVersion"], obj["kind"])
        return await self.request(
            "POST",
            rt.path(meta.get("namespace")),
            kind=obj["kind"],
            params={"fieldManager": self.field_manager},
            body=obj,
        )

    async def delete(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None,
        propagation: Literal["Background", "Foreground", "Orphan"] = "Background",
    ) -> bool:
        """Delete; False when it was already gone."""
        rt = resource_type(api_version, kind)
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        try:
            await self.request("DELETE", rt.path(namespace, name), kind=kind, body=body)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def patch_status(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None,
        status: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Merge-patch the status subresource (never the spec, which is the user's)."""
        rt = resource_type(api_version, kind)
        return await self.request(
            "PATCH",
            rt.path(namespace, name, "status"),
            kind=kind,
            params={"fieldManager": self.field_manager},
            body={"status": status},
            content_type="application/merge-patch+json",
        )
