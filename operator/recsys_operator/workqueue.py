"""A rate-limited work queue of object keys, as controller-runtime has and kopf does not.

kopf delivers every watch event to a handler; a controller wants something else: one reconcile
per object at a time, bursts collapsed into one pass over the latest state, failures retried
with exponential backoff, and "look again at time T" for schedules and deadlines. Events from
children (a Job finishing) only *enqueue* the owner's key; a bounded pool of workers reconciles
keys. No per-object timers, so kopf adds no finalizers for them.

What client-go's queue adds beside that is here too: depth, time-in-queue, work-duration and
retry metrics; a terminal error that stops retrying a key until its next event (retrying the
same input cannot help); and a drain on shutdown, so a stopped operator finishes the reconciles
it started instead of cutting them between a create and its status write.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from prometheus_client import Counter, Gauge, Histogram

K = TypeVar("K", bound=Hashable)

DEPTH = Gauge("recsys_operator_workqueue_depth", "Keys ready and waiting for a worker.")
ADDS = Counter("recsys_operator_workqueue_adds_total", "Keys made ready (bursts collapse).")
QUEUE_LATENCY = Histogram(
    "recsys_operator_workqueue_queue_duration_seconds",
    "How long a key waited between ready and picked up by a worker.",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60),
)
WORK_DURATION = Histogram(
    "recsys_operator_workqueue_work_duration_seconds",
    "How long processing one key took, reconcile included.",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60),
)
RETRIES = Counter("recsys_operator_workqueue_retries_total", "Keys retried with backoff.")
TERMINAL = Counter(
    "recsys_operator_workqueue_terminal_errors_total",
    "Reconciles that ended in a terminal error: not retried until the key's next event.",
)


class TerminalError(Exception):
    """A reconcile failure that retrying the same input cannot fix (an object the operator
    cannot parse, say). The key is not retried with backoff; its next event brings it back."""


class ShutDown(Exception):
    """The queue was shut down: no more keys are handed out."""


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Per-key exponential backoff: ``base * 2**failures``, capped at ``cap`` seconds."""

    base: float = 1.0
    cap: float = 300.0

    def delay(self, failures: int) -> float:
        return float(min(self.cap, self.base * (2 ** max(0, failures - 1))))


@dataclass
class WorkQueue(Generic[K]):
    """Keys waiting to be reconciled; a key is never processed by two workers at once.

    ``add`` makes a key ready now; ``add_after`` makes it ready later (the earliest wins);
    ``failed`` schedules a retry with backoff; ``forget`` resets a key's failure count.
    A key added while it is being processed is processed again afterwards (dirty set).
    """

    backoff: Backoff = field(default_factory=Backoff)
    clock: Callable[[], float] = time.monotonic
    _ready: deque[K] = field(default_factory=deque)
    _queued: set[K] = field(default_factory=set)
    _processing: set[K] = field(default_factory=set)
    _dirty: set[K] = field(default_factory=set)
    _delayed: list[tuple[float, int, K]] = field(default_factory=list)
    _due: dict[K, float] = field(default_factory=dict)
    _failures: dict[K, int] = field(default_factory=dict)
    _counter: int = 0
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _ready_since: dict[K, float] = field(default_factory=dict)
    _shutting_down: bool = False

    def add(self, key: K) -> None:
        if key in self._processing:
            self._dirty.add(key)
            return
        if key not in self._queued:
            ADDS.inc()
            self._queued.add(key)
            self._ready.append(key)
            self._ready_since[key] = self.clock()
            DEPTH.set(len(self._ready))
            self._wakeup.set()

    def add_after(self, key: K, seconds: float) -> None:
        if seconds <= 0:
            self.add(key)
            return
        due = self.clock() + seconds
        if key in self._due and self._due[key] <= due:
            return
        self._due[key] = due
        self._counter += 1
        heapq.heappush(self._delayed, (due, self._counter, key))
        self._wakeup.set()

    def failed(self, key: K) -> float:
        """Record a failure and schedule the retry; returns the delay chosen."""
        RETRIES.inc()
        self._failures[key] = self._failures.get(key, 0) + 1
        delay = self.backoff.delay(self._failures[key])
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    def __len__(self) -> int:
        return len(self._ready)

    def _promote_due(self) -> float | None:
        """Move due delayed keys to ready; return seconds until the next one, if any."""
        now = self.clock()
        while self._delayed:
            due, _, key = self._delayed[0]
            if self._due.get(key) != due:  # superseded by an earlier add_after
                heapq.heappop(self._delayed)
                continue
            if due > now:
                return due - now
            heapq.heappop(self._delayed)
            del self._due[key]
            self.add(key)
        return None

    def shut_down(self) -> None:
        """Hand out no more keys; workers finish what they hold, then :func:`run_workers`
        returns."""
        self._shutting_down = True
        self._wakeup.set()

    @property
    def processing(self) -> int:
        return len(self._processing)

    async def get(self) -> K:
        """The next ready key; raises :class:`ShutDown` once the queue is shut down."""
        while True:
            if self._shutting_down:
                raise ShutDown
            wait = self._promote_due()
            if self._ready:
                key = self._ready.popleft()
                self._queued.discard(key)
                self._processing.add(key)
                DEPTH.set(len(self._ready))
                QUEUE_LATENCY.observe(self.clock() - self._ready_since.pop(key, self.clock()))
                return key
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=wait)

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)


async def run_workers(
    queue: WorkQueue[K],
    reconcile: Callable[[K], Awaitable[float | None]],
    workers: int,
) -> None:
    """Process keys with ``workers`` concurrent tasks until the queue is shut down; then return
    once the keys in hand are done.

    ``reconcile`` returns seconds until it wants to look again (None: only on events), raises
    :class:`TerminalError` when a retry cannot help, and raises anything else to ask for a retry
    with backoff.
    """

    async def worker() -> None:
        while True:
            try:
                key = await queue.get()
            except ShutDown:
                return
            started = time.monotonic()
            try:
                requeue = await reconcile(key)
            except asyncio.CancelledError:
                raise
            except TerminalError as exc:
                TERMINAL.inc()
                queue.forget(key)
                log.error("reconcile of %s failed for good (until its next change): %s", key, exc)
            except Exception:
                delay = queue.failed(key)
                log.exception("reconcile of %s failed; retrying in %.0f s", key, delay)
            else:
                queue.forget(key)
                if requeue is not None:
                    queue.add_after(key, requeue)
            finally:
                WORK_DURATION.observe(time.monotonic() - started)
                queue.done(key)

    await asyncio.gather(*(worker() for _ in range(workers)))
