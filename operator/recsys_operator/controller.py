"""Wiring between kopf's watch streams, the cache and the reconcilers.

kopf watches; this module puts every delivered object into the cache (cache.py) and turns the
event into a key on the work queue (an event on a child enqueues its owner), and runs a bounded
pool of workers over the queue. Reconcilers are plain async functions
``(ctx, namespace, name) -> seconds-until-next-look | None``: level-based, they read the object
and its children from the cache and decide from that, never from the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx2 as httpx
import kopf

from recsys_operator import GROUP, VERSION
from recsys_operator.cache import Indexers, Store
from recsys_operator.kube import ApiError, KubeClient
from recsys_operator.labels import FEATURE_VIEW_LABEL, MANAGED_BY, RECOMMENDER_LABEL
from recsys_operator.metrics import PHASES, RECONCILE_DURATION, RECONCILE_ERRORS
from recsys_operator.online import OnlineStore
from recsys_operator.workqueue import Backoff, WorkQueue, run_workers

log = logging.getLogger(__name__)

API_VERSION = f"{GROUP}/{VERSION}"
PRIMARY_KINDS = ("FeatureView", "ModelVersion", "Recommender")
PLURALS = {
    "FeatureView": "featureviews",
    "ModelVersion": "modelversions",
    "Recommender": "recommenders",
}
#: Children the operator makes, watched (selected by label on the server) into the cache; a
#: change wakes their owner: (group, version, plural, kind).
CHILD_RESOURCES = (
    ("batch", "v1", "jobs", "Job"),
    ("batch", "v1", "cronjobs", "CronJob"),
    ("apps", "v1", "deployments", "Deployment"),
    ("", "v1", "configmaps", "ConfigMap"),
    ("", "v1", "services", "Service"),
    ("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler"),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
)

#: The field index of ModelVersions by the Recommender they belong to (``spec.recommenderRef``),
#: whether the operator made them or a user imported them without the operator's labels.
BY_RECOMMENDER = "spec.recommenderRef.name"
INDEXERS: Indexers = {
    (API_VERSION, "ModelVersion"): {
        BY_RECOMMENDER: lambda m: ((m.get("spec") or {}).get("recommenderRef") or {}).get("name"),
    },
}


def new_cache() -> Store:
    """The store the watches fill, with the field indexes the reconcilers query."""
    return Store(INDEXERS)


class Key(NamedTuple):
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass
class Context:
    """What every reconciler gets: the API, the queue (to wake other objects), the clock."""

    kube: KubeClient
    queue: WorkQueue[Key]
    #: What the watches delivered: reconciles read here, the API server only gets writes.
    cache: Store = field(default_factory=new_cache)
    images: Mapping[str, str] = field(default_factory=dict)
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    #: Who to wake when an object changes: a Recommender reads its FeatureViews, so an event on
    #: a FeatureView enqueues the Recommenders that named it at their last reconcile.
    dependents: dict[Key, set[Key]] = field(default_factory=dict)
    #: Redis clients, per Recommender store: the routing table, heartbeats, traffic counters.
    online: OnlineStore = field(init=False)
    #: For the analysis' Prometheus queries (``prometheus.py``).
    http: httpx.AsyncClient = field(init=False)

    def __post_init__(self) -> None:
        self.online = OnlineStore(self.kube)
        self.http = httpx.AsyncClient()

    def depends_on(self, dependent: Key, dependencies: Iterable[Key]) -> None:
        for deps in self.dependents.values():
            deps.discard(dependent)
        for dep in dependencies:
            self.dependents.setdefault(dep, set()).add(dependent)


Reconciler = Callable[[Context, str, str], Awaitable[float | None]]


def owner_keys(body: Mapping[str, Any]) -> list[Key]:
    """The primaries a child belongs to: its owner references to them, or, for a Job a CronJob
    made (owned by the CronJob), the primary its labels name."""
    meta = body.get("metadata", {})
    namespace = meta.get("namespace", "")
    keys = []
    for ref in meta.get("ownerReferences", []) or []:
        if ref.get("apiVersion") == f"{GROUP}/{VERSION}" and ref.get("kind") in PRIMARY_KINDS:
            keys.append(Key(ref["kind"], namespace, ref["name"]))
    if not keys:
        labels = meta.get("labels") or {}
        for label, kind in (
            (FEATURE_VIEW_LABEL, "FeatureView"),
            (RECOMMENDER_LABEL, "Recommender"),
        ):
            if labels.get(label):
                keys.append(Key(kind, namespace, labels[label]))
                break
    return keys


@dataclass
class Controller:
    reconcilers: Mapping[str, Reconciler]
    workers: int = 8
    resync_seconds: float = 600.0
    queue: WorkQueue[Key] = field(default_factory=lambda: WorkQueue(Backoff(base=2, cap=300)))
    cache: Store = field(default_factory=new_cache)
    ctx: Context | None = None
    _task: asyncio.Task[None] | None = None

    async def _reconcile(self, key: Key) -> float | None:
        assert self.ctx is not None
        started = time.monotonic()
        try:
            requeue = await self.reconcilers[key.kind](self.ctx, key.namespace, key.name)
        except Exception:
            RECONCILE_ERRORS.labels(key.kind).inc()
            raise
        finally:
            RECONCILE_DURATION.labels(key.kind).observe(time.monotonic() - started)
        if requeue is None:
            return self.resync_seconds
        return min(requeue, self.resync_seconds)

    def start(self, ctx: Context) -> None:
        self.ctx = ctx
        ctx.queue = self.queue
        ctx.cache = self.cache
        self._task = asyncio.create_task(run_workers(self.queue, self._reconcile, self.workers))

    async def stop(self, drain_seconds: float = 30.0) -> None:
        """Let the reconciles in flight finish (up to ``drain_seconds``), start no new one."""
        if self._task is not None:
            self.queue.shut_down()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), drain_seconds)
            except TimeoutError:
                log.warning(
                    "%d reconciles still running after %.0f s; cancelling",
                    self.queue.processing,
                    drain_seconds,
                )
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if self.ctx is not None:
            await self.ctx.online.close()
            await self.ctx.http.aclose()
            await self.ctx.kube.close()

    def on_primary_event(self, kind: str, body: Mapping[str, Any], event_type: str | None) -> None:
        meta = body.get("metadata", {})
        if event_type == "DELETED":
            self.cache.remove(API_VERSION, kind, meta["name"], meta.get("namespace"))
            # Children go with the owner (garbage collector); only our own books need it.
            PHASES.observe(kind, f"{meta.get('namespace')}/{meta['name']}", None)
            return
        self.cache.upsert({**body, "apiVersion": API_VERSION, "kind": kind})
        key = Key(kind, meta.get("namespace", ""), meta["name"])
        self.queue.add(key)
        for owner in owner_keys(body):  # a ModelVersion wakes its Recommender
            self.queue.add(owner)
        if self.ctx is not None:
            for dependent in self.ctx.dependents.get(key, ()):
                self.queue.add(dependent)

    async def prime(self, kube: KubeClient, namespaces: Sequence[str | None]) -> None:
        """List every watched kind once into the cache, before the first reconcile."""
        kinds = [(API_VERSION, kind, None) for kind in PRIMARY_KINDS] + [
            (f"{g}/{v}" if g else v, kind, {"app.kubernetes.io/managed-by": MANAGED_BY})
            for g, v, _plural, kind in CHILD_RESOURCES
        ]
        for api_version, kind, labels in kinds:
            for ns in namespaces:
                try:
                    items = await kube.list(api_version, kind, ns, labels)
                except ApiError as exc:
                    log.warning(
                        "cannot list %s in %s (%s); its watch fills the cache once it works",
                        kind,
                        ns or "all namespaces",
                        exc,
                    )
                    continue
                for item in items:
                    self.cache.upsert(item)
        log.info("cache primed with %d objects", len(self.cache))

    def on_child_event(
        self, api_version: str, kind: str, body: Mapping[str, Any], event_type: str | None
    ) -> None:
        meta = body.get("metadata", {})
        if event_type == "DELETED":
            self.cache.remove(api_version, kind, meta["name"], meta.get("namespace"))
        else:
            self.cache.upsert({**body, "apiVersion": api_version, "kind": kind})
        for owner in owner_keys(body):
            self.queue.add(owner)


def register(
    controller: Controller,
    registry: kopf.OperatorRegistry | None = None,
) -> None:
    """Register kopf handlers that keep ``controller``'s cache current and feed its queue.

    The handlers are coroutines although they never wait: kopf runs a plain function in a
    thread pool, and the cache and the work queue belong to the event loop (an ``asyncio.Event``
    set from another thread does not wake the loop, and a reconcile reading the cache would race
    the thread writing it)."""
    reg = registry or kopf.get_default_registry()

    for kind in PRIMARY_KINDS:

        async def primary(body: kopf.Body, type: str | None, _kind: str = kind, **_: Any) -> None:
            controller.on_primary_event(_kind, body, type)

        kopf.on.event(GROUP, VERSION, PLURALS[kind], registry=reg)(primary)

    for group, version, plural, kind in CHILD_RESOURCES:
        api_version = f"{group}/{version}" if group else version

        async def child(
            body: kopf.Body, type: str | None, _api: str = api_version, _kind: str = kind, **_: Any
        ) -> None:
            controller.on_child_event(_api, _kind, body, type)

        kopf.on.event(
            group,
            version,
            plural,
            registry=reg,
            labels={"app.kubernetes.io/managed-by": MANAGED_BY},
        )(child)


class RetryForever:
    """kopf's API retry delays, never exhausted. kopf stops the whole operator when a watch
    still fails after its last retry, so one watched namespace whose Role went missing (or was
    deleted with the namespace) would stop the reconciles of every other one. Like client-go's
    reflectors, keep retrying and logging instead; the delay grows to a minute and stays."""

    def __iter__(self) -> Iterator[float]:
        # A fresh iterator per request: kopf iterates the setting anew for each API call.
        return itertools.chain((1, 1, 2, 3, 5, 8, 13, 21, 34), itertools.repeat(60.0))


def configure_settings(settings: kopf.OperatorSettings) -> None:
    """Production settings, from the kopf pitfalls in the project notes."""
    # Watch streams can go silent without an error unless both timeouts are set.
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 660
    settings.watching.connect_timeout = 30
    # Unbounded by default: one asyncio worker per object floods the API on restart.
    settings.queueing.worker_limit = 32
    # A worker holds its slot while it idles, waiting for its object's next event (kopf's
    # default is 5 s): with 32 slots a burst of new objects was admitted at 32 per idle period
    # per kind, whatever the reconcilers could do. The handlers only fill the cache and the work
    # queue, so a worker has nothing to wait for once its backlog is empty.
    settings.queueing.idle_timeout = 0.1
    # Children are selected on the server: the operator never streams other teams' Jobs.
    selector = f"app.kubernetes.io/managed-by={MANAGED_BY}"
    for group, version, plural, _kind in CHILD_RESOURCES:
        settings.watching.label_selectors[group, version, plural] = selector
    # kopf would post a Kubernetes Event for every handler call, a write per watch event; the
    # reconcilers post the Events a user needs themselves.
    settings.posting.enabled = False
    # No runtime watch of CRDs and namespaces (kopf's "scanning"): that needs cluster-wide reads
    # a namespaced install does not grant, and kopf would retry them for a minute before serving.
    # The kinds are discovered once at start (the chart installs the CRDs first); the watched
    # namespaces are the exact names given by --namespace.
    settings.scanning.disabled = True
    settings.networking.error_backoffs = RetryForever()
    # No change-detecting handlers: no diff-base annotations, no progress in status.
    settings.persistence.finalizer = f"{GROUP}/finalizer"
