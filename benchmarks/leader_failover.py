"""Failover time of the operator's leader election, on the real control plane of the testbed.

Two operator processes (identities op-a and op-b) run with ``--leader-elect`` against a fresh
testbed control plane. For each trial the leader is killed with SIGKILL (no hand-over: the
lease must expire), a FeatureView is changed at once, and the script measures the seconds from
the kill until the standby's write of the Lease that took it over, and until the write of the
CronJob with the new schedule, both as the apiserver's audit log stamps them (so the figure
does not include the script's own polling, which is slow on a loaded machine). The killed
process is then restarted and becomes the next standby.

    .venv/bin/python benchmarks/leader_failover.py --trials 5                       # chart defaults
    .venv/bin/python benchmarks/leader_failover.py --trials 5 --lease 4 --renew 3 --retry 0.5

Reported, not asserted (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from testbed import controlplane  # noqa: E402
from testbed.controlplane import ControlPlane  # noqa: E402

NS = "bench"
LEASE = "recsys-operator"


def fv(schedule: str) -> dict[str, Any]:
    return {
        "apiVersion": "recsys.dev/v1alpha1",
        "kind": "FeatureView",
        "metadata": {"name": "users", "namespace": NS},
        "spec": {
            "entity": {"name": "user", "joinKeys": ["user_id"]},
            "source": {"path": "s3://data/users/"},
            "features": [{"name": "age", "dtype": "Int64"}],
            "onlineStore": {"redis": {"url": "redis://redis:6379/0"}},
            "materialization": {"cronJob": {"schedule": schedule}},
        },
    }


def start(cp: ControlPlane, identity: str, timing: list[str]) -> subprocess.Popen[bytes]:
    log = (cp.workdir / f"{identity}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "recsys_operator", "--namespace", NS, "--metrics-port", "0",
         "--health-port", "0", "--leader-elect", "--leader-election-namespace", NS,
         "--leader-election-identity", identity, *timing],
        env={**os.environ, "KUBECONFIG": str(cp.kubeconfig), "PYTHONUNBUFFERED": "1"},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def electing(cp: ControlPlane, identity: str) -> bool:
    """Whether the process has started its election loop (it then watches the Lease)."""
    log = cp.workdir / f"{identity}.log"
    return log.exists() and "leader election on Lease" in log.read_text()


def holder(cp: ControlPlane) -> str:
    out = cp.kubectl("get", "lease", LEASE, "-n", NS, "-o", "json", check=False)
    if out.returncode != 0:
        return ""
    return str(json.loads(out.stdout)["spec"].get("holderIdentity", ""))


def schedule(cp: ControlPlane) -> str:
    out = cp.kubectl("get", "cronjob", "users-materialize", "-n", NS, "-o", "json", check=False)
    return str(json.loads(out.stdout)["spec"]["schedule"]) if out.returncode == 0 else ""


def first_write_after(cp: ControlPlane, since: float, resource: str) -> float:
    """When the apiserver received the first successful write of ``resource`` in the namespace
    after ``since`` (wall clock, seconds)."""
    time.sleep(1.5)  # the audit backend flushes its batch every second
    for line in cp.audit_log.read_text().splitlines():
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if ref.get("namespace") != NS or ref.get("resource") != resource:
            continue
        if int((event.get("responseStatus") or {}).get("code", 0)) >= 300:
            continue
        at = dt.datetime.fromisoformat(event["requestReceivedTimestamp"]).timestamp()
        if at > since:
            return at
    raise LookupError(f"no write of {resource} after the kill")


def wait(check: Any, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(0.1)
    raise TimeoutError("no failover within the timeout")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--lease", type=float, default=15)
    parser.add_argument("--renew", type=float, default=10)
    parser.add_argument("--retry", type=float, default=2)
    args = parser.parse_args()
    timing = [
        "--leader-election-lease-duration", str(args.lease),
        "--leader-election-renew-deadline", str(args.renew),
        "--leader-election-retry-period", str(args.retry),
    ]  # fmt: skip
    cp = controlplane.start()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        cp.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cp.kubectl("wait", "--for=condition=Established", "-f", str(REPO / "crds"))
        cp.kubectl("create", "namespace", NS)
        procs["op-a"] = start(cp, "op-a", timing)
        wait(lambda: holder(cp) == "op-a")
        procs["op-b"] = start(cp, "op-b", timing)
        wait(lambda: electing(cp, "op-b"))
        cp.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(fv("0 0 * * *")))
        wait(lambda: schedule(cp) == "0 0 * * *")
        rows = []
        load = os.getloadavg()[0]
        for trial in range(1, args.trials + 1):
            # Let the standby watch the lease for a while, as in a steady state.
            time.sleep(args.lease + 2 * args.retry)
            leader = holder(cp)
            standby = "op-b" if leader == "op-a" else "op-a"
            killed = time.time()
            os.killpg(procs[leader].pid, signal.SIGKILL)
            procs[leader].wait(10)
            want = f"{trial} 0 * * *"
            cp.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(fv(want)))
            wait(lambda s=standby: holder(cp) == s)
            wait(lambda w=want: schedule(cp) == w)
            # The dead leader writes nothing: the first Lease write after the kill is the
            # standby's takeover, the first CronJob write its reconcile of the change.
            took = first_write_after(cp, killed, "leases") - killed
            done = first_write_after(cp, killed, "cronjobs") - killed
            rows.append((took, done))
            print(f"trial {trial}: {leader} killed; {standby} holds the lease after {took:.2f} s, "
                  f"the change reconciled after {done:.2f} s", flush=True)  # fmt: skip
            (cp.workdir / f"{leader}.log").unlink()
            procs[leader] = start(cp, leader, timing)  # the next standby
            wait(lambda s=leader: electing(cp, s))
        took_all = [r[0] for r in rows]
        done_all = [r[1] for r in rows]
        print(
            f"lease {args.lease:g}/{args.renew:g}/{args.retry:g} s, {len(rows)} trials: "
            f"lease taken median {statistics.median(took_all):.2f} s "
            f"(min {min(took_all):.2f}, max {max(took_all):.2f}); change reconciled median "
            f"{statistics.median(done_all):.2f} s (min {min(done_all):.2f}, "
            f"max {max(done_all):.2f}); load average at the start {load:.1f} on "
            f"{os.cpu_count()} CPUs"
        )
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
        cp.stop()


if __name__ == "__main__":
    main()
