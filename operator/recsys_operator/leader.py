"""Leader election on a ``coordination.k8s.io/v1`` Lease, so that the chart can run replicas.

Only the leader reconciles and writes; the other replicas keep their watches and cache warm and
wait. The semantics are client-go's ``leaderelection`` (read to understand, not copied):

- every candidate looks at the Lease each ``retry_period``;
- a Lease held by another candidate is taken over only when its record (holder and renew time)
  has not changed for ``lease_duration`` on the *observer's own* clock since it first saw that
  record; the renew time written in the Lease is not compared with the local clock, so clocks
  that disagree between nodes do not shorten a lease;
- the leader renews each ``retry_period``; when no renewal has succeeded for ``renew_deadline``
  it steps down. ``renew_deadline`` is shorter than ``lease_duration``, and the leader counts it
  from the moment it *sent* its last successful renewal (before the apiserver stamped it), so
  it has stopped before any standby may take over. Stepping down ends the process (the
  Deployment restarts it, clean, as a standby); until then the ``Fence`` refuses every write,
  so even a leader whose event loop stalled past its deadline writes nothing when it resumes;
- every write of the Lease is an update at the resourceVersion that was read, so two
  candidates that decide to take over at once cannot both succeed: the apiserver refuses one.

kopf's "peering" is not leader election: it lets an operator of higher priority pause others
(the ``KopfPeering`` resources, for development clusters), two operators of the same priority
both pause, and it has no renew deadline, so a paused-then-resumed process is never fenced.

The decision is ``decide``, a pure function of the Lease as read, the local clock and what this
candidate observed; ``LeaderElector`` only reads, writes and waits.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import logging
import socket
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from recsys_operator.kube import ApiError, KubeClient
from recsys_operator.metrics import LEADER

log = logging.getLogger(__name__)

LEASE_API_VERSION = "coordination.k8s.io/v1"


@dataclass(frozen=True)
class Timing:
    """Seconds; client-go's defaults. ``check`` names the flag to fix when they disagree."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def check(self) -> None:
        if self.retry_period <= 0:
            raise ValueError("--leader-election-retry-period must be above 0")
        if self.renew_deadline <= self.retry_period:
            raise ValueError(
                f"--leader-election-renew-deadline ({self.renew_deadline:g} s) must be longer "
                f"than --leader-election-retry-period ({self.retry_period:g} s): the leader "
                "needs more than one try to renew before it gives up"
            )
        if self.lease_duration <= self.renew_deadline:
            raise ValueError(
                f"--leader-election-lease-duration ({self.lease_duration:g} s) must be longer "
                f"than --leader-election-renew-deadline ({self.renew_deadline:g} s): a leader "
                "that cannot renew must stop before a standby may take over"
            )


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says (its spec), and the resourceVersion an update must name."""

    holder: str
    renew_time: str
    lease_duration: int
    acquire_time: str = ""
    transitions: int = 0
    resource_version: str = ""

    @classmethod
    def of(cls, lease: Mapping[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            renew_time=str(spec.get("renewTime") or ""),
            lease_duration=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=str(spec.get("acquireTime") or ""),
            transitions=int(spec.get("leaseTransitions") or 0),
            resource_version=str((lease.get("metadata") or {}).get("resourceVersion", "")),
        )

    @property
    def observed(self) -> tuple[str, str]:
        """What must change for a standby to restart its wait: a renewal changes it."""
        return (self.holder, self.renew_time)


class Action(enum.Enum):
    ACQUIRE = "acquire"  # write ourselves as holder (create the Lease, or take it over)
    RENEW = "renew"  # we lead: write a fresh renew time
    WAIT = "wait"  # another candidate holds a live lease
    STEP_DOWN = "step-down"  # we led and lost it, or could not renew in time


def decide(
    lease: LeaseRecord | None,
    identity: str,
    now: float,
    observed_at: float,
    last_renewed: float | None,
    timing: Timing,
) -> Action:
    """What this candidate does next.

    ``now``, ``observed_at`` (when this candidate first saw ``lease``'s current record) and
    ``last_renewed`` (when this candidate, as leader, sent its last successful write of the
    Lease; None while it does not lead) are readings of one local monotonic clock. ``lease`` is
    None when there is no Lease (or it could not be read: then a leader counts its deadline
    and a candidate's create fails harmlessly).
    """
    if last_renewed is not None:
        if now - last_renewed >= timing.renew_deadline:
            return Action.STEP_DOWN
        if lease is not None and lease.holder not in ("", identity):
            return Action.STEP_DOWN  # taken over: someone saw our lease expire
        return Action.RENEW
    if lease is None or not lease.holder:
        return Action.ACQUIRE  # no Lease yet, or released by a leader that shut down
    if lease.holder == identity:
        return Action.ACQUIRE  # ours from before a restart: take it back at once
    duration = lease.lease_duration or timing.lease_duration
    if now - observed_at < duration:
        return Action.WAIT
    return Action.ACQUIRE


def micro_time(now: dt.datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds)."""
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_spec(
    lease: LeaseRecord | None, identity: str, now: dt.datetime, duration: float
) -> dict[str, Any]:
    """The Lease's spec once ``identity`` has acquired or renewed it at ``now``."""
    stamp = micro_time(now)
    ours = lease is not None and lease.holder == identity
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": max(1, round(duration)),
        # Kept while the same holder renews (or takes back its own lease after a restart).
        "acquireTime": lease.acquire_time if ours and lease and lease.acquire_time else stamp,
        "renewTime": stamp,
        # Counts changes of holder, a release (empty holder) included, as client-go does.
        "leaseTransitions": (lease.transitions if lease else 0) + (0 if ours or not lease else 1),
    }


def _failed_start(task: asyncio.Task[None], on_lost: Callable[[], None]) -> None:
    """A leader that could not start reconciling holds the lease for nothing: end it, so that
    a standby (or this one, restarted) takes over."""
    if task.cancelled() or task.exception() is None:
        return
    log.error("could not start reconciling as the leader", exc_info=task.exception())
    on_lost()


class NotLeading(Exception):
    """A write was attempted by a replica that does not hold the lease (or may have lost it)."""


class Fence:
    """Lets writes through only while this process leads within its renew deadline.

    Without leader election the fence is always open (``Fence.open()``). The reconcilers' API
    writes (``KubeClient``) and Redis writes check it, so a leader whose deadline passed while
    its event loop was stalled refuses its writes before the step-down task gets to run.
    """

    def __init__(self, renew_deadline: float | None, clock: Callable[[], float]) -> None:
        self._deadline = renew_deadline
        self._clock = clock
        self._last_renewed: float | None = None

    @classmethod
    def open(cls) -> Fence:
        return cls(None, time.monotonic)

    def renewed(self, sent_at: float | None) -> None:
        self._last_renewed = sent_at

    def check(self) -> None:
        if self._deadline is None:
            return
        if self._last_renewed is None or self._clock() - self._last_renewed >= self._deadline:
            raise NotLeading("this replica does not hold the leader lease; the write is refused")


def default_identity() -> str:
    """client-go's convention outside a pod: host name and a random suffix, so two processes
    on one host never share an identity. The chart passes the pod's name."""
    return f"{socket.gethostname()}_{uuid.uuid4()}"


@dataclass
class Settings:
    namespace: str
    name: str
    identity: str
    timing: Timing


class LeaderElector:
    """Runs the election loop; calls ``on_started`` once on becoming leader and ``on_lost``
    when it steps down (which should end the process)."""

    def __init__(
        self,
        kube: KubeClient,
        settings: Settings,
        fence: Fence,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.fence = fence
        self._clock = clock
        self._wall = wall
        self._observed: tuple[str, str] | None = None
        self._observed_at = 0.0
        self._last_renewed: float | None = None

    @property
    def leading(self) -> bool:
        return self._last_renewed is not None

    async def _read(self) -> LeaseRecord | None:
        s = self.settings
        lease = await self.kube.get(LEASE_API_VERSION, "Lease", s.name, s.namespace)
        if lease is None:
            return None
        record = LeaseRecord.of(lease)
        if record.observed != self._observed:
            self._observed = record.observed
            self._observed_at = self._clock()
        return record

    async def _write(self, lease: LeaseRecord | None, action: Action) -> bool:
        """Create or update the Lease at the resourceVersion read; True when the write won."""
        s = self.settings
        meta: dict[str, str] = {"name": s.name, "namespace": s.namespace}
        if lease is not None:
            meta["resourceVersion"] = lease.resource_version
        body = {
            "apiVersion": LEASE_API_VERSION,
            "kind": "Lease",
            "metadata": meta,
            "spec": lease_spec(lease, s.identity, self._wall(), s.timing.lease_duration),
        }
        sent_at = self._clock()
        try:
            if lease is None:
                await self.kube.create(body)
            else:
                await self.kube.replace(body)
        except ApiError as exc:
            if exc.status == 409:  # another candidate wrote first (or the Lease exists)
                log.debug("lease %s/%s: %s lost the race: %s", s.namespace, s.name, action, exc)
            else:
                log.warning("lease %s/%s: cannot %s: %s", s.namespace, s.name, action.value, exc)
            return False
        except OSError as exc:
            log.warning("lease %s/%s: cannot %s: %s", s.namespace, s.name, action.value, exc)
            return False
        self._last_renewed = sent_at
        self.fence.renewed(sent_at)
        return True

    async def step(self) -> Action:
        """One look at the Lease and what it led to."""
        try:
            lease = await self._read()
            read_failed = False
        except (ApiError, OSError) as exc:
            log.warning("lease %s/%s: cannot read: %s", self.settings.namespace,
                        self.settings.name, exc)  # fmt: skip
            lease, read_failed = None, True
        action = decide(
            lease,
            self.settings.identity,
            self._clock(),
            self._observed_at,
            self._last_renewed,
            self.settings.timing,
        )
        if action in (Action.ACQUIRE, Action.RENEW) and not read_failed:
            await self._write(lease, action)
        if action is Action.STEP_DOWN:
            self._last_renewed = None
            self.fence.renewed(None)
        return action

    async def run(
        self,
        on_started: Callable[[], Coroutine[Any, Any, None]],
        on_lost: Callable[[], None],
    ) -> None:
        s = self.settings
        log.info("leader election on Lease %s/%s as %s", s.namespace, s.name, s.identity)
        LEADER.set(0)
        started: asyncio.Task[None] | None = None
        while True:
            action = await self.step()
            if action is Action.STEP_DOWN:
                LEADER.set(0)
                log.error(
                    "lost the leader lease %s/%s (%s); stopping so that a clean replica takes over",
                    s.namespace,
                    s.name,
                    "taken over"
                    if self._observed and self._observed[0] != s.identity
                    else f"no renewal for {s.timing.renew_deadline:g} s",
                )
                on_lost()
                return
            if self.leading and started is None:
                LEADER.set(1)
                log.info("became the leader (Lease %s/%s)", s.namespace, s.name)
                # Beside the loop: priming the cache must not hold back the next renewal.
                started = asyncio.create_task(on_started())
                started.add_done_callback(lambda task: _failed_start(task, on_lost))
            await asyncio.sleep(s.timing.retry_period)

    async def release(self) -> None:
        """On a clean shutdown, hand the lease over at once: an empty holder, which the next
        candidate takes at its next look instead of waiting out the lease."""
        if not self.leading:
            return
        s = self.settings
        self._last_renewed = None
        self.fence.renewed(None)
        LEADER.set(0)
        try:
            lease = await self.kube.get(LEASE_API_VERSION, "Lease", s.name, s.namespace)
            if lease is None or LeaseRecord.of(lease).holder != s.identity:
                return
            spec = dict(lease.get("spec") or {})
            spec.update({"holderIdentity": "", "leaseDurationSeconds": 1})
            await self.kube.replace({**lease, "spec": spec})
            log.info("released the leader lease %s/%s", s.namespace, s.name)
        except (ApiError, OSError) as exc:
            log.warning("could not release the lease %s/%s: %s", s.namespace, s.name, exc)
