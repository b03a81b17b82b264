"""The operator's Kubernetes client: plain dicts in and out, every request counted.

The operator renders every object it writes as a dict and needs few verbs, done right:
server-side apply under one field manager, status merge patches, paginated lists, reads.
Typed models would add a conversion per object and nothing the planners use, so this is a thin
layer over the httpx client that lightkube configures (``kubeconfig.Credentials``: TLS,
tokens, exec plugins, in-cluster service account, the retry after a 401). Requests are counted
by verb and kind, so benchmarks can report API requests per object.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import httpx2 as httpx
from prometheus_client import Counter

from recsys_operator import GROUP, VERSION
from recsys_operator.kubeconfig import Credentials

FIELD_MANAGER = "recsys-operator"
#: client-go's pager uses the same page size.
PAGE_SIZE = 500

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


#: A list's items (``list`` inside KubeClient is the method).
Objects = list[dict[str, Any]]

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
    ("autoscaling/v2", "HorizontalPodAutoscaler"): ResourceType(
        "autoscaling", "v2", "horizontalpodautoscalers"
    ),
    ("policy/v1", "PodDisruptionBudget"): ResourceType("policy", "v1", "poddisruptionbudgets"),
    ("coordination.k8s.io/v1", "Lease"): ResourceType("coordination.k8s.io", "v1", "leases"),
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
        """Conflicts, throttling, server trouble, missing permissions and refused credentials
        (401 even after fresh ones were fetched) pass with time or an administrator; a 4xx
        about the object itself does not."""
        return self.status in (401, 409, 429) or self.status >= 500 or self.rbac_denied


def _unfenced() -> None:
    """The fence of a process without leader election: every write may go."""


class KubeClient:
    """Raw-dict access to the API server. One instance per operator process.

    ``fence`` is called before every write but those of the leader election's own Lease, and
    raises to refuse it (``leader.Fence.check``): a replica that does not lead never writes.
    """

    def __init__(
        self,
        credentials: Credentials,
        field_manager: str = FIELD_MANAGER,
        *,
        trust_env: bool = False,
        page_size: int = PAGE_SIZE,
        fence: Callable[[], None] = _unfenced,
    ) -> None:
        self.credentials = credentials
        self.fence = fence
        self.server = credentials.server
        self.field_manager = field_manager
        self.page_size = page_size
        self._trust_env = trust_env
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            self._client = self.credentials.http_client(
                trust_env=self._trust_env,
                timeout=60,
                limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
                headers={"Accept": "application/json", "User-Agent": "recsys-operator"},
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

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
        """One API request (a retry after a 401 with fresh credentials is part of it)."""
        if method != "GET" and kind != "Lease":
            self.fence()
        API_REQUESTS.labels(method.lower(), kind).inc()
        resp = await self._http().request(
            method,
            path,
            params=dict(params) if params else None,
            content=None if body is None else json.dumps(body).encode(),
            headers=None if body is None else {"Content-Type": content_type},
        )
        text = resp.text
        if resp.status_code >= 400:
            try:
                payload = json.loads(text)
            except ValueError:
                payload = None
            if not isinstance(payload, dict):  # a proxy's or load balancer's page
                payload = {}
            raise ApiError(
                resp.status_code,
                str(payload.get("reason", resp.reason_phrase)),
                str(payload.get("message", text[:500])),
            )
        out: dict[str, Any] = json.loads(text) if text else {}
        return out

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
        *,
        page_size: int | None = None,
    ) -> list[dict[str, Any]]:
        """List, filtered on the server by labels and (for selectable fields) field values;
        every page of it (``page_size`` items a request, default ``self.page_size``)."""
        items, _ = await self.list_with_version(
            api_version, kind, namespace, labels, fields, page_size=page_size
        )
        return items

    async def list_with_version(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        labels: Mapping[str, str] | None = None,
        fields: Mapping[str, str] | None = None,
        *,
        page_size: int | None = None,
    ) -> tuple[Objects, str]:
        """Every page of a list, and the resourceVersion it was read at (a watch starts there).

        Pages (``limit``/``continue``) keep each answer small on a big cluster; they are one
        consistent snapshot. If the snapshot is compacted away mid-way (410 Gone, after about
        five minutes), the list starts again in one piece, as client-go's pager does.
        """
        rt = resource_type(api_version, kind)
        selectors: dict[str, str] = {}
        if labels:
            selectors["labelSelector"] = ",".join(f"{k}={v}" for k, v in labels.items())
        if fields:
            selectors["fieldSelector"] = ",".join(f"{k}={v}" for k, v in fields.items())
        limit = self.page_size if page_size is None else page_size
        items: Objects = []
        token = ""
        while True:
            params = dict(selectors)
            if limit:
                params["limit"] = str(limit)
            if token:
                params["continue"] = token
            try:
                out = await self.request("GET", rt.path(namespace), kind=kind, params=params)
            except ApiError as exc:
                if exc.status != 410 or not token:
                    raise
                items, token, limit = [], "", 0
                continue
            items.extend(out.get("items") or [])
            meta = out.get("metadata") or {}
            token = str(meta.get("continue") or "")
            if not token:
                break
        for item in items:  # list items come without apiVersion/kind
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items, str(meta.get("resourceVersion", ""))

    async def apply(
        self, obj: Mapping[str, Any], *, force: bool = True, field_manager: str | None = None
    ) -> dict[str, Any]:
        """Server-side apply under the operator's field manager (or ``field_manager``).

        ``force`` takes over fields another manager set (a user's ``kubectl edit`` of a child):
        the operator owns its children's spec, as every controller does.
        """
        meta = obj["metadata"]
        rt = resource_type(obj["apiVersion"], obj["kind"])
        params = {
            "fieldManager": field_manager or self.field_manager,
            "force": "true" if force else "false",
        }
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

    async def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """PUT the whole object; with ``metadata.resourceVersion`` set, the apiserver refuses it
        (409) when the object changed since it was read (optimistic concurrency)."""
        meta = obj["metadata"]
        rt = resource_type(obj["apiVersion"], obj["kind"])
        return await self.request(
            "PUT",
            rt.path(meta.get("namespace"), meta["name"]),
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
