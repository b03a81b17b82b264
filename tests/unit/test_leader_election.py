"""The leader election's decisions, without a cluster: one row per case."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from recsys_operator.leader import (
    Action,
    Fence,
    LeaseRecord,
    NotLeading,
    Timing,
    decide,
    lease_spec,
)

ME = "op-a"
TIMING = Timing(lease_duration=15, renew_deadline=10, retry_period=2)


def held(by: str, duration: int = 15) -> LeaseRecord:
    return LeaseRecord(holder=by, renew_time="2026-12-02T12:00:00.000000Z", lease_duration=duration)


@pytest.mark.parametrize(
    ("case", "lease", "now", "observed_at", "last_renewed", "want"),
    [
        ("no Lease yet: create it", None, 100.0, 0.0, None, Action.ACQUIRE),
        ("released (empty holder): take it at once", held(""), 100.0, 99.0, None, Action.ACQUIRE),
        ("ours from before a restart: take it back", held(ME), 100.0, 99.0, None, Action.ACQUIRE),
        ("another holder, just renewed: wait", held("op-b"), 100.0, 99.0, None, Action.WAIT),
        ("another holder, seen 14.9 s unchanged: wait", held("op-b"), 114.9, 100.0, None,
         Action.WAIT),
        ("another holder, seen 15 s unchanged: take over", held("op-b"), 115.0, 100.0, None,
         Action.ACQUIRE),
        ("the Lease's own duration counts, not ours", held("op-b", duration=60), 130.0, 100.0,
         None, Action.WAIT),
        ("leader, renewed 2 s ago: renew", held(ME), 102.0, 100.0, 100.0, Action.RENEW),
        ("leader, last good renewal 9.9 s ago: keep trying", held(ME), 109.9, 100.0, 100.0,
         Action.RENEW),
        ("leader, no renewal for the renew deadline: step down", held(ME), 110.0, 100.0, 100.0,
         Action.STEP_DOWN),
        ("leader, the Lease could not be read: keep trying within the deadline", None, 105.0,
         100.0, 100.0, Action.RENEW),
        ("leader, the Lease could not be read past the deadline: step down", None, 111.0, 100.0,
         100.0, Action.STEP_DOWN),
        ("leader, another holder took it: step down", held("op-b"), 103.0, 102.0, 100.0,
         Action.STEP_DOWN),
        ("leader, released by an administrator: renew it", held(""), 103.0, 102.0, 100.0,
         Action.RENEW),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)  # fmt: skip
def test_decide(
    case: str,
    lease: LeaseRecord | None,
    now: float,
    observed_at: float,
    last_renewed: float | None,
    want: Action,
) -> None:
    assert decide(lease, ME, now, observed_at, last_renewed, TIMING) is want


NOW = dt.datetime(2026, 12, 2, 12, 0, 5, 250000, tzinfo=dt.UTC)
EARLIER = "2026-12-02T11:00:00.000000Z"


@pytest.mark.parametrize(
    ("case", "lease", "acquire_time", "transitions"),
    [
        ("created", None, "2026-12-02T12:00:05.250000Z", 0),
        ("renewed by its holder: acquire time kept",
         LeaseRecord(ME, EARLIER, 15, EARLIER, 3), EARLIER, 3),
        ("taken over from another holder: one more transition",
         LeaseRecord("op-b", EARLIER, 15, EARLIER, 3), "2026-12-02T12:00:05.250000Z", 4),
        ("taken after a release: one more transition",
         LeaseRecord("", EARLIER, 1, EARLIER, 4), "2026-12-02T12:00:05.250000Z", 5),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)  # fmt: skip
def test_lease_spec(
    case: str, lease: LeaseRecord | None, acquire_time: str, transitions: int
) -> None:
    assert lease_spec(lease, ME, NOW, 15.0) == {
        "holderIdentity": ME,
        "leaseDurationSeconds": 15,
        "acquireTime": acquire_time,
        "renewTime": "2026-12-02T12:00:05.250000Z",
        "leaseTransitions": transitions,
    }


def test_lease_record_reads_a_lease_object() -> None:
    record = LeaseRecord.of(
        {
            "metadata": {"name": "recsys-operator", "resourceVersion": "42"},
            "spec": {
                "holderIdentity": "op-b",
                "leaseDurationSeconds": 15,
                "acquireTime": EARLIER,
                "renewTime": "2026-12-02T12:00:00.000000Z",
                "leaseTransitions": 2,
            },
        }
    )
    assert record == LeaseRecord("op-b", "2026-12-02T12:00:00.000000Z", 15, EARLIER, 2, "42")
    # A Lease another tool created bare still reads (no holder: free to take).
    assert LeaseRecord.of({"metadata": {}, "spec": {}}).holder == ""


@pytest.mark.parametrize(
    ("timing", "message"),
    [
        (Timing(15, 10, 0), "--leader-election-retry-period must be above 0"),
        (Timing(15, 2, 2), "--leader-election-renew-deadline (2 s) must be longer than"),
        (Timing(10, 10, 2), "--leader-election-lease-duration (10 s) must be longer than"),
    ],
    ids=["no-retry-period", "deadline-not-above-retry", "lease-not-above-deadline"],
)
def test_timing_that_cannot_be_safe_is_refused_with_the_flag(timing: Timing, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        timing.check()


def test_the_fence_closes_at_the_renew_deadline_without_the_loop_running() -> None:
    clock = [100.0]
    fence = Fence(10.0, lambda: clock[0])
    with pytest.raises(NotLeading):
        fence.check()  # never renewed
    fence.renewed(100.0)
    clock[0] = 109.9
    fence.check()
    clock[0] = 110.0
    with pytest.raises(NotLeading):
        fence.check()
    fence.renewed(None)  # stepped down or released
    clock[0] = 100.0
    with pytest.raises(NotLeading):
        fence.check()
    Fence.open().check()  # no election: always open
