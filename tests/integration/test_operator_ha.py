"""Two operator processes with leader election on the real control plane: only the holder of
the Lease writes, a killed leader is replaced, and a stalled one writes nothing when it wakes.

Each process runs with a ServiceAccount token of its own, so the apiserver's audit log (which
records every write with its user) tells whose each write was. The lease timings are shortened
(4 s lease, 3 s renew deadline, 0.5 s retry) to keep the test short; benchmarks/leader_failover.py
measures the failover with the chart's defaults.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_chart import token_kubeconfig

from fixtures.kube import Testbed
from fixtures.operator import OperatorProcess, eventually, get
from testbed.processes import free_port

pytestmark = pytest.mark.testbed

LEASE = "recsys-operator"
FAST = (
    "--leader-election-lease-duration", "4",
    "--leader-election-renew-deadline", "3",
    "--leader-election-retry-period", "0.5",
)  # fmt: skip

FV: dict[str, Any] = {
    "apiVersion": "recsys.dev/v1alpha1",
    "kind": "FeatureView",
    "metadata": {"name": "users"},
    "spec": {
        "entity": {"name": "user", "joinKeys": ["user_id"]},
        "source": {"path": "s3://data/users/"},
        "features": [{"name": "age", "dtype": "Int64"}],
        "onlineStore": {"redis": {"url": "redis://redis:6379/0"}},
        "materialization": {"cronJob": {"schedule": "0 3 * * *"}},
    },
}


@dataclass
class Replica:
    identity: str
    user: str
    proc: OperatorProcess

    def leader_gauge(self) -> float | None:
        url = f"http://127.0.0.1:{self.proc.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("recsys_operator_leader "):
                return float(line.split()[1])
        return None


@pytest.fixture
def replicas(
    testbed: Testbed, crds: None, namespace: str, tmp_path: Path
) -> Iterator[dict[str, Replica]]:
    """op-a and op-b, each its own ServiceAccount (admin of the test namespace only), not yet
    started; stopped at the end."""
    out: dict[str, Replica] = {}
    for identity in ("op-a", "op-b"):
        testbed.kubectl("create", "serviceaccount", identity, "-n", namespace)
        testbed.kubectl("create", "rolebinding", identity, "-n", namespace,
                        "--clusterrole=cluster-admin",
                        f"--serviceaccount={namespace}:{identity}")  # fmt: skip
        kubeconfig = token_kubeconfig(
            testbed, namespace, identity, tmp_path / f"{identity}.kubeconfig"
        )
        proc = OperatorProcess(
            namespace, kubeconfig, tmp_path / f"{identity}.log", free_port(),
            extra_args=("--leader-elect", "--leader-election-namespace", namespace,
                        "--leader-election-identity", identity, *FAST),
        )  # fmt: skip
        out[identity] = Replica(identity, f"system:serviceaccount:{namespace}:{identity}", proc)
    try:
        yield out
    finally:
        for replica in out.values():
            replica.proc.stop()


def holder(testbed: Testbed, namespace: str) -> str | None:
    lease = get(testbed, "lease", LEASE, namespace)
    return None if lease is None else str(lease["spec"].get("holderIdentity") or "")


def apply(testbed: Testbed, namespace: str, schedule: str) -> None:
    obj = json.loads(json.dumps(FV))
    obj["spec"]["materialization"]["cronJob"]["schedule"] = schedule
    testbed.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=json.dumps(obj))


def cron_schedule(testbed: Testbed, namespace: str) -> str | None:
    cron = get(testbed, "cronjob", "users-materialize", namespace)
    return None if cron is None else str(cron["spec"]["schedule"])


@dataclass(frozen=True)
class Write:
    user: str
    at: float
    verb: str
    resource: str
    subresource: str
    code: int

    @property
    def lease(self) -> bool:
        return self.resource == "leases"


def writes(testbed: Testbed, namespace: str, users: set[str]) -> list[Write]:
    """Every write ``users`` sent into ``namespace``, from the apiserver's audit log."""
    time.sleep(1.5)  # the audit backend flushes its batch every second
    out = []
    for line in testbed.audit_log.read_text().splitlines():
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        user = event["user"]["username"]
        if user not in users or ref.get("namespace") != namespace:
            continue
        at = dt.datetime.fromisoformat(event["requestReceivedTimestamp"]).timestamp()
        code = int((event.get("responseStatus") or {}).get("code", 0))
        out.append(Write(user, at, event["verb"], ref.get("resource", ""),
                         ref.get("subresource", ""), code))  # fmt: skip
    return sorted(out, key=lambda w: w.at)


def became_leader_at(all_writes: list[Write], user: str) -> float:
    """The first Lease write of ``user`` that the apiserver accepted: its acquisition (a
    candidate writes the Lease only to take it)."""
    return min(w.at for w in all_writes if w.user == user and w.lease and w.code < 300)


def test_only_the_leader_reconciles_and_the_standby_takes_over_after_a_kill(
    testbed: Testbed, namespace: str, replicas: dict[str, Replica]
) -> None:
    a, b = replicas["op-a"], replicas["op-b"]
    a.proc.start()
    eventually(lambda: holder(testbed, namespace) == "op-a", 60, "op-a leads", operator=a.proc)
    b.proc.start()
    eventually(lambda: b.leader_gauge() == 0.0, 60, "op-b up as a standby", operator=b.proc)
    assert a.leader_gauge() == 1.0

    apply(testbed, namespace, "0 3 * * *")
    eventually(lambda: cron_schedule(testbed, namespace) == "0 3 * * *", 60, "the CronJob",
               operator=a.proc)  # fmt: skip
    eventually(
        lambda: (
            (get(testbed, "featureview", "users", namespace) or {})
            .get("status", {})
            .get("observedGeneration")
            == 1
        ),
        60,
        "the FeatureView's status",
        operator=a.proc,
    )
    time.sleep(3)  # op-b has seen every event by now; it must still have written nothing

    before = writes(testbed, namespace, {a.user, b.user})
    cron_writes = [w for w in before if w.resource == "cronjobs"]
    assert cron_writes
    assert {w.user for w in cron_writes} == {a.user}, cron_writes
    assert sum(w.code == 201 for w in cron_writes) == 1  # made once
    status_writes = [w for w in before if w.subresource == "status"]
    assert status_writes
    assert {w.user for w in status_writes} == {a.user}, status_writes
    # A standby only reads: not even a Lease write while the lease is held.
    assert not [w for w in before if w.user == b.user]

    killed_at = time.time()
    a.proc.kill()
    apply(testbed, namespace, "30 4 * * *")  # a change only the new leader can reconcile
    eventually(lambda: holder(testbed, namespace) == "op-b", 30, "op-b takes over",
               operator=b.proc)  # fmt: skip
    eventually(lambda: cron_schedule(testbed, namespace) == "30 4 * * *", 30,
               "the change reconciled by op-b", operator=b.proc)  # fmt: skip
    reconciled_at = time.time()
    eventually(lambda: b.leader_gauge() == 1.0, 10, "op-b's leader gauge", operator=b.proc)
    eventually(
        lambda: (
            (get(testbed, "featureview", "users", namespace) or {})
            .get("status", {})
            .get("observedGeneration")
            == 2
        ),
        30,
        "the new generation's status",
        operator=b.proc,
    )

    after = writes(testbed, namespace, {a.user, b.user})
    took_over = became_leader_at(after, b.user)
    assert killed_at < took_over
    # op-a wrote nothing after its kill; op-b nothing but the Lease before it held it.
    assert not [w for w in after if w.user == a.user and w.at > killed_at]
    early = [w for w in after if w.user == b.user and not w.lease and w.at < took_over]
    assert not early, early
    late = [w for w in after if w.user == b.user and not w.lease]
    assert any(w.resource == "cronjobs" for w in late), late
    assert any(w.subresource == "status" for w in late), late
    print(
        f"failover: lease taken {took_over - killed_at:.1f} s after the kill, "
        f"the change reconciled {reconciled_at - killed_at:.1f} s after it"
    )

    # A clean stop hands the lease over at once (an empty holder) instead of letting it expire.
    b.proc.stop()
    assert b.proc.popen is not None
    assert b.proc.popen.returncode == 0, b.proc.tail()
    assert holder(testbed, namespace) == ""


def test_a_stalled_leader_writes_nothing_when_it_wakes_and_exits(
    testbed: Testbed, namespace: str, replicas: dict[str, Replica]
) -> None:
    """SIGSTOP the leader past its lease (a long GC pause, a frozen node): the standby takes
    over; the old leader, resumed with a change waiting in its watch, must not write it."""
    a, b = replicas["op-a"], replicas["op-b"]
    a.proc.start()
    eventually(lambda: holder(testbed, namespace) == "op-a", 60, "op-a leads", operator=a.proc)
    b.proc.start()
    eventually(lambda: b.leader_gauge() == 0.0, 60, "op-b up as a standby", operator=b.proc)
    apply(testbed, namespace, "0 3 * * *")
    eventually(lambda: cron_schedule(testbed, namespace) == "0 3 * * *", 60, "the CronJob",
               operator=a.proc)  # fmt: skip

    assert a.proc.popen is not None
    stopped_at = time.time()
    os.killpg(a.proc.popen.pid, signal.SIGSTOP)
    try:
        eventually(lambda: holder(testbed, namespace) == "op-b", 30, "op-b takes over",
                   operator=b.proc)  # fmt: skip
        apply(testbed, namespace, "30 4 * * *")
        eventually(lambda: cron_schedule(testbed, namespace) == "30 4 * * *", 30,
                   "the change reconciled by op-b", operator=b.proc)  # fmt: skip
        apply(testbed, namespace, "45 5 * * *")  # both see it: only op-b may apply it
    finally:
        os.killpg(a.proc.popen.pid, signal.SIGCONT)
    code = a.proc.popen.wait(30)
    assert code == 1, a.proc.tail()
    assert "lost the leader lease" in a.proc.log.read_text()
    eventually(lambda: cron_schedule(testbed, namespace) == "45 5 * * *", 30,
               "the last change reconciled by op-b", operator=b.proc)  # fmt: skip
    after = writes(testbed, namespace, {a.user, b.user})
    woke = [w for w in after if w.user == a.user and w.at > stopped_at]
    # Nothing it sent was accepted. The one refusal allowed is its Lease renewal on waking,
    # which the apiserver turns down (409: op-b's update came first), and then it exits:
    # the attempt is how it learns the lease is gone, and it changes nothing.
    assert not [w for w in woke if w.code < 400], woke
    assert all(w.lease and w.code == 409 for w in woke), woke
