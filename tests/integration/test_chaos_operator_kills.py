"""Chaos for the operator: SIGKILLed at seeded random moments while full lifecycles run,
behind an apiserver that is slow and restarts, and a training pod evicted.

Twenty Recommenders (each with its own FeatureView) go through materialize -> train -> index
-> serve -> retrain -> canary -> promote side by side in one namespace, the test playing the
workloads (their pods end with the summaries real workloads write) and kwok the serving pods.
Meanwhile one operator process is killed with SIGKILL at random moments (``CHAOS_SEED`` picks
them; the default seed is fixed, so a run repeats) and started again. The invariants are the
promise every controller-runtime operator makes: it resumes from the cluster's state.

- no child is created twice: the apiserver's audit log has at most one successful create of
  each object the operator made (a create that a restart repeats must meet AlreadyExists, or
  not be sent at all);
- no status goes backwards: each ModelVersion's phase only moves forward, each Recommender's
  observedGeneration never drops, its stable version only moves to a newer one, and no
  Recommender ever has a third ModelVersion;
- every lifecycle completes: each view's run is recorded, each Recommender serves v2 as
  stable (Healthy) after its canary.

The run ends with one line, ``trials / kills / invariant violations``, and fails on any
violation with each one listed.

The same lifecycles and invariants run with every request the operator sends held 500 ms by
a proxy (``testbed.slow_proxy``) and the apiserver restarted twice on its port
(``ControlPlane.restart_apiserver``): the operator's watches break and must resume, and the
process must not exit.

An eviction (the Eviction API, as a node drain sends it) of a training pod is an
infrastructure event, not a failure of the run: the Job's pod failure policy ignores pods with
the ``DisruptionTarget`` condition, so the pod is replaced and the ModelVersion goes on, even
with ``backoffLimit: 0``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from test_operator_lifecycle import apply_stack, index_summary, train_summary, wait_phase

from fixtures.kube import Testbed
from fixtures.operator import (
    OperatorProcess,
    condition,
    end_pod,
    eventually,
    finish_pod,
    get,
    materialize_summary,
)
from recsys_operator.api.modelversion import PHASES
from testbed.controlplane import run_kubectl
from testbed.processes import free_port
from testbed.slow_proxy import SlowProxy

pytestmark = [pytest.mark.testbed, pytest.mark.chaos, pytest.mark.slow]

TRIALS = 20
SEED = int(os.environ.get("CHAOS_SEED", "20261202"))
#: Kills happen this far apart (seconds, uniform), at most MAX_KILLS times; then the operator
#: is left running so that every lifecycle can end.
KILL_GAP = (1.5, 6.0)
MAX_KILLS = 15
DEADLINE_S = 420


def stack(i: int, redis_url: str) -> list[dict[str, Any]]:
    view, rec = f"users-{i}", f"rec-{i}"
    return [
        {
            "apiVersion": "recsys.dev/v1alpha1",
            "kind": "FeatureView",
            "metadata": {"name": view},
            "spec": {
                "entity": {"name": "user", "joinKeys": ["user_id"]},
                "source": {"path": "s3://data/users/"},
                "features": [{"name": "age", "dtype": "Int64"}],
                "onlineStore": {"redis": {"url": redis_url}},
                "materialization": {"cronJob": {"schedule": "@daily"}},
            },
        },
        {
            "apiVersion": "recsys.dev/v1alpha1",
            "kind": "Recommender",
            "metadata": {"name": rec},
            "spec": {
                "interactions": {"path": "s3://data/interactions/"},
                "featureViews": {"user": [{"name": view}]},
                "training": {
                    "evaluation": {
                        "k": 20,
                        "metrics": [{"name": "recallAtK", "thresholdRange": {"min": 0.05}}],
                    }
                },
                "serving": {
                    "triton": {"replicas": 1},
                    "gateway": {"replicas": 1},
                    # a canary step, then promotion: no traffic here, so each analysis is
                    # inconclusive, which holds nothing
                    "rollout": {"steps": [{"setWeight": 50}, {"pause": {"duration": "2s"}}]},
                },
                "stores": {
                    "redis": {"url": redis_url},
                    "artifacts": {"storageUri": "s3://models/movies"},
                },
            },
        },
    ]


class Killer(threading.Thread):
    """SIGKILLs the operator at seeded random moments and starts it again."""

    def __init__(self, operator: OperatorProcess, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.operator, self.rng = operator, rng
        self.stopping = threading.Event()
        self.kills = 0

    def run(self) -> None:
        while self.kills < MAX_KILLS and not self.stopping.wait(self.rng.uniform(*KILL_GAP)):
            self.operator.kill()
            self.kills += 1
            time.sleep(self.rng.uniform(0.0, 1.0))  # sometimes at once, sometimes a pause
            self.operator.start()


@dataclass
class Watch:
    """What the test saw of the objects' statuses, in order, and what broke the rules."""

    phases: dict[str, int] = field(default_factory=dict)
    generations: dict[str, int] = field(default_factory=dict)
    stables: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def observe(self, snap: dict[str, list[dict[str, Any]]]) -> None:
        for mv in snap["ModelVersion"]:
            name, phase = mv["metadata"]["name"], (mv.get("status") or {}).get("phase")
            if phase is None:
                continue
            if phase in ("Failed", "Rejected"):
                self.violations.append(f"ModelVersion {name} {phase}: {mv['status']}")
            rank = PHASES.index(phase)
            if rank < self.phases.get(name, -1):
                self.violations.append(
                    f"ModelVersion {name} went back to {phase} from {PHASES[self.phases[name]]}"
                )
            self.phases[name] = max(rank, self.phases.get(name, -1))
        per_rec = Counter(mv["spec"]["recommenderRef"]["name"] for mv in snap["ModelVersion"])
        for rec, n in per_rec.items():
            if n > 2:
                self.violations.append(f"{rec} has {n} ModelVersions (a version made twice)")
        for rec in snap["Recommender"]:
            name, status = rec["metadata"]["name"], rec.get("status") or {}
            gen = status.get("observedGeneration")
            if gen is not None:
                if gen < self.generations.get(name, 0):
                    self.violations.append(f"{name} observedGeneration dropped to {gen}")
                self.generations[name] = max(gen, self.generations.get(name, 0))
            stable = (status.get("rollout") or {}).get("stable")
            if stable:
                n = int(stable.rsplit("-v", 1)[1])
                if n < self.stables.get(name, 0):
                    self.violations.append(f"{name} stable went back to {stable}")
                self.stables[name] = max(n, self.stables.get(name, 0))


def snapshot(testbed: Testbed, ns: str) -> dict[str, list[dict[str, Any]]]:
    out = testbed.kubectl(
        "get", "featureviews,modelversions,recommenders,pods,cronjobs", "-n", ns, "-o", "json"
    )
    snap: dict[str, list[dict[str, Any]]] = {
        k: [] for k in ("FeatureView", "ModelVersion", "Recommender", "Pod", "CronJob")
    }
    for item in json.loads(out.stdout)["items"]:
        snap[item["kind"]].append(item)
    return snap


def operator_creates(audit_log: Path, ns: str) -> Counter[tuple[str, str]]:
    """The operator's successful creates in ``ns`` (by resource and name; Events aside), from
    the apiserver's audit log: a create, or a server-side apply that made the object."""
    time.sleep(1.5)  # the audit backend flushes its batch every second
    creates: Counter[tuple[str, str]] = Counter()
    for line in audit_log.read_text().splitlines():
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if (
            ref.get("namespace") != ns
            or not str(event.get("userAgent", "")).startswith("recsys-operator")
            or ref.get("resource") == "events"
            or ref.get("subresource")
            or event["verb"] not in ("create", "patch")
            or int((event.get("responseStatus") or {}).get("code", 0)) != 201
        ):
            continue
        creates[(ref["resource"], ref.get("name", ""))] += 1
    return creates


def apply_stacks(testbed: Testbed, ns: str, trials: int, redis_url: str) -> None:
    docs = [doc for i in range(trials) for doc in stack(i, redis_url)]
    testbed.kubectl(
        "apply", "--server-side", "-n", ns, "-f", "-",
        input="\n---\n".join(json.dumps(d) for d in docs),
    )  # fmt: skip


def drive(
    testbed: Testbed, ns: str, trials: int, watch: Watch, keep_going: Callable[[bool], bool]
) -> None:
    """Play every lifecycle's outside parts (the workloads' pods, the scheduler's run, the
    user's retrain) until ``keep_going(all lifecycles ended)`` says stop, or DEADLINE_S."""
    ended: set[str] = set()
    materialized: set[str] = set()
    retrained: set[str] = set()
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        snap = snapshot(testbed, ns)
        watch.observe(snap)
        # the workloads: every running Job pod ends as its workload would
        for pod in snap["Pod"]:
            name, job = pod["metadata"]["name"], pod["metadata"]["labels"].get("job-name", "")
            if name in ended or pod["status"].get("phase") != "Running" or not job:
                continue
            if job.endswith("-train"):
                version = job.removesuffix("-train")
                summary = train_summary(version, 0.15 if version.endswith("-v2") else 0.12)
            elif job.endswith("-index"):
                summary = index_summary(job.removesuffix("-index"))
            elif "-materialize-" in job:
                mark = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                summary = materialize_summary(ns, job.split("-materialize-")[0], mark)
            else:
                continue
            end_pod(testbed, ns, name, exit_code=0, summary=summary)
            ended.add(name)
        # the scheduler's part: one materialization of each view, once its CronJob exists
        for cron in snap["CronJob"]:
            view = cron["metadata"]["name"].removesuffix("-materialize")
            if cron["metadata"]["name"].endswith("-materialize") and view not in materialized:
                testbed.kubectl(
                    "create", "job", f"{view}-materialize-run",
                    f"--from=cronjob/{view}-materialize", "-n", ns,
                )  # fmt: skip
                materialized.add(view)
        # the user's part: a retrain once v1 serves
        done = 0
        for rec in snap["Recommender"]:
            name = rec["metadata"]["name"]
            ro = (rec.get("status") or {}).get("rollout") or {}
            if ro.get("stable") == f"{name}-v1" and name not in retrained:
                testbed.kubectl("annotate", "-n", ns, f"recommender/{name}", "recsys.dev/retrain=a")
                retrained.add(name)
            done += ro.get("stable") == f"{name}-v2" and ro.get("phase") == "Healthy"
        recorded = sum(
            bool((fv.get("status") or {}).get("lastMaterialization")) for fv in snap["FeatureView"]
        )
        if not keep_going(done == trials and recorded == trials):
            return
        time.sleep(0.3)


def judge(testbed: Testbed, ns: str, watch: Watch) -> tuple[list[str], Counter[tuple[str, str]]]:
    """Every invariant violation seen (statuses backwards, objects created twice, lifecycles
    not ended), and the operator's creates."""
    snap = snapshot(testbed, ns)
    watch.observe(snap)
    unfinished = [
        f"{rec['metadata']['name']}: {(rec.get('status') or {}).get('rollout')}"
        for rec in snap["Recommender"]
        if ((rec.get("status") or {}).get("rollout") or {}).get("stable")
        != f"{rec['metadata']['name']}-v2"
    ] + [
        f"FeatureView {fv['metadata']['name']} has no run recorded"
        for fv in snap["FeatureView"]
        if not (fv.get("status") or {}).get("lastMaterialization")
    ]
    creates = operator_creates(testbed.audit_log, ns)
    twice = [f"{r}/{n} created {c} times" for (r, n), c in sorted(creates.items()) if c > 1]
    return watch.violations + twice + unfinished, creates


def test_a_killed_operator_resumes_every_lifecycle_from_the_cluster(
    testbed: Testbed, crds: None, namespace: str, redis_url: str, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    operator = OperatorProcess(
        namespace, testbed.kubeconfig, tmp_path / "operator.log", free_port()
    )
    apply_stacks(testbed, namespace, TRIALS, redis_url)
    operator.start()
    killer = Killer(operator, rng)
    killer.start()
    watch = Watch()
    kills_in_flight: int | None = None  # kills before every lifecycle had ended

    def keep_going(done: bool) -> bool:
        nonlocal kills_in_flight
        if done and kills_in_flight is None:
            kills_in_flight = killer.kills
        return not (done and killer.kills >= MAX_KILLS)

    try:
        drive(testbed, namespace, TRIALS, watch, keep_going)
    finally:
        killer.stopping.set()
        killer.join(15)
        tail = operator.tail()
        operator.stop()
    violations, creates = judge(testbed, namespace, watch)
    print(
        f"\nchaos (seed {SEED}): operator SIGKILL, {TRIALS} lifecycles / {killer.kills} kills "
        f"({kills_in_flight} while lifecycles ran) / {len(violations)} invariant violations; "
        f"{len(creates)} objects created, {len(watch.phases)} versions watched"
    )
    # the checks saw something: every lifecycle's children were created, under kills
    assert len(creates) >= TRIALS * 10, sorted(creates)
    assert kills_in_flight is not None
    assert kills_in_flight >= 5, kills_in_flight
    assert not violations, "\n".join([*violations, "operator log:", tail])


SLOW_TRIALS = 3
#: What the proxy adds to every request the operator sends.
API_DELAY_S = 0.5
#: Seconds into the run at which the apiserver is restarted.
RESTARTS_AT = (15.0, 40.0)


def test_behind_a_slow_apiserver_that_restarts_the_operator_carries_on(
    testbed: Testbed, crds: None, namespace: str, redis_url: str, tmp_path: Path
) -> None:
    """Every request the operator sends waits 500 ms in a proxy, and the apiserver is
    restarted twice while three lifecycles run: its watches break and must resume, and the
    same invariants hold (nothing created twice, no status backwards, every lifecycle ends),
    with the same operator process throughout."""
    if testbed.control_plane is None:
        # an existing cluster's apiserver is not this test's to restart; `make test` always
        # runs its own control plane, so this skips only with RECSYS_TEST_KUBECONFIG set
        pytest.skip(
            "restarting the apiserver needs the local control plane (RECSYS_TEST_KUBECONFIG is set)"
        )
    cp = testbed.control_plane
    api = urllib.parse.urlsplit(cp.server)
    proxy = SlowProxy(api.hostname or "127.0.0.1", api.port or 443, API_DELAY_S).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        cp.kubeconfig.read_text().replace(cp.server, f"https://127.0.0.1:{proxy.port}")
    )
    began = time.monotonic()
    run_kubectl(cp.kubectl_path, kubeconfig, ["get", "--raw", "/readyz"])
    assert time.monotonic() - began >= API_DELAY_S, "the proxy does not slow requests"
    operator = OperatorProcess(namespace, kubeconfig, tmp_path / "operator.log", free_port())
    apply_stacks(testbed, namespace, SLOW_TRIALS, redis_url)
    t0 = time.monotonic()
    operator.start()
    restarts: list[float] = []

    def keep_going(done: bool) -> bool:
        if len(restarts) < len(RESTARTS_AT) and time.monotonic() - t0 >= RESTARTS_AT[len(restarts)]:
            restarts.append(cp.restart_apiserver())
        return not (done and len(restarts) == len(RESTARTS_AT))

    watch = Watch()
    try:
        drive(testbed, namespace, SLOW_TRIALS, watch, keep_going)
        took = time.monotonic() - t0
        assert operator.popen is not None
        exited = operator.popen.poll()
    finally:
        tail = operator.tail()
        operator.stop()
        proxy.stop()
    violations, creates = judge(testbed, namespace, watch)
    print(
        f"\nchaos: apiserver +{API_DELAY_S * 1000:.0f} ms per request, restarted "
        f"{len(restarts)} times (ready again in {', '.join(f'{r:.1f}' for r in restarts)} s): "
        f"{SLOW_TRIALS} lifecycles in {took:.0f} s / {len(violations)} invariant violations"
    )
    assert exited is None, f"the operator exited ({exited})\n{tail}"
    assert len(creates) >= SLOW_TRIALS * 10, sorted(creates)
    assert not violations, "\n".join([*violations, "operator log:", tail])


def test_an_evicted_training_pod_is_replaced_and_the_version_does_not_fail(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    def no_retries(docs: list[dict[str, Any]]) -> None:
        docs[1]["spec"]["training"]["backoffLimit"] = 0

    apply_stack(testbed, namespace, no_retries)
    wait_phase(testbed, namespace, "movies-v1", "Training", operator)

    def running() -> list[str]:
        out = testbed.kubectl(
            "get", "pods", "-n", namespace, "-l", "job-name=movies-v1-train", "-o", "json"
        )
        return [
            p["metadata"]["name"]
            for p in json.loads(out.stdout)["items"]
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        ]

    (first,) = eventually(running, 60, "the training pod running", operator=operator)
    eviction = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": first, "namespace": namespace},
    }
    testbed.kubectl(
        "create", "--raw", f"/api/v1/namespaces/{namespace}/pods/{first}/eviction", "-f", "-",
        input=json.dumps(eviction),
    )  # fmt: skip
    evicted = get(testbed, "pod", first, namespace)
    if evicted is not None:  # kwok has not removed it yet: end it as the kubelet would
        assert condition(evicted, "DisruptionTarget") is not None, evicted["status"]
        testbed.kubectl(
            "patch", "pod", first, "-n", namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"phase": "Failed"}}), check=False,
        )  # fmt: skip
    eventually(
        lambda: [p for p in running() if p != first], 90, "a replacement pod", operator=operator
    )
    job = get(testbed, "job", "movies-v1-train", namespace) or {}
    assert condition(job, "Failed") is None, job.get("status")
    assert phase_of(testbed, namespace) == "Training"
    finish_pod(testbed, namespace, "movies-v1-train", exit_code=0,
               summary=train_summary("movies-v1", 0.12))  # fmt: skip
    wait_phase(testbed, namespace, "movies-v1", "Indexing", operator)


def phase_of(testbed: Testbed, ns: str) -> str | None:
    return ((get(testbed, "modelversion", "movies-v1", ns) or {}).get("status") or {}).get("phase")
