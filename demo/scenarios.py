"""``make demo DEMO_ARGS="--scenario rollout|rollback|drift"``: a canary, watched as it goes.

The scenarios run on the same parts as the closed loop (the testbed's control plane, a
redis-server, the operator, Job pods run as local processes, real Triton servers and two
gateway replicas played from the operator's Deployments) over a synthetic world whose users'
true tastes are known (tests/testbed/rollout_world.py), so simulated users click what they
really like and a better model earns more clicks:

- ``rollout``: the first version trains (torch, CPU) from the world's interactions and serves;
  a retrain trains a second one, rolled out as a canary through 25 % and 60 % with pauses,
  judged every 5 s on success rate, fallback rate and click-through rate against the stable,
  and promoted.
- ``rollback``: the same first version; the second is a model trained on a world with other
  tastes (imported, as a notebook's model would be). Its users click less, the sequential CTR
  check catches it, and the canary is aborted with all traffic back on the stable.
- ``drift``: a world whose late users' features moved (tests/testbed/drift_world.py), their
  features served from a FeatureView in Redis. Early users' traffic raises no alarm; late
  users' makes two drift checks in a row name the moved features; the operator's Drift
  retrain learns from the logged clicks (the log join), passes the gate and goes through the
  canary to the outcome the click analysis gives. The checks and the log join are started by
  hand (``kubectl create job --from=cronjob/...``), when the traffic is in place, and the
  demo says so.

The demo prints every step as the operator takes it, ``kubectl recsys status`` (the step, the
weights and the last analysis as a table) at each change, and how long each part took.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from recsys_operator.cli import table  # noqa: E402
from testbed.drift_world import (  # noqa: E402
    DRIFT,
    HOLDOUT,
    LATE_FROM,
    LOGGED_CLICKS,
    SAMPLE_SIZE,
    drift_recommender,
    user_feature_view,
    write_drift_world,
)
from testbed.local_serving import LocalServing, ServingPlayer  # noqa: E402
from testbed.rollout_world import (  # noqa: E402
    ANALYSIS,
    Models,
    Tally,
    Traffic,
    imported,
    recommender,
    train_models,
)

NAME = "shop"
STEPS = [
    {"setWeight": 25},
    {"pause": {"duration": "15s"}},
    {"setWeight": 60},
    {"pause": {"duration": "15s"}},
]


@dataclass(frozen=True)
class Cluster:
    """What a scenario needs of the demo's running parts."""

    kubectl: Callable[..., subprocess.CompletedProcess[str]]
    kubeconfig: Path
    kubectl_path: Path
    redis_url: str


def say(text: str) -> None:
    print(f"==> {text}", flush=True)


class Scenario:
    def __init__(self, cluster: Cluster, ns: str) -> None:
        self.kubectl, self.cluster, self.ns = cluster.kubectl, cluster, ns
        self.started = time.monotonic()
        self.marks: list[tuple[str, float]] = []

    def mark(self, what: str) -> None:
        self.marks.append((what, time.monotonic() - self.started))

    def apply(self, obj: dict[str, Any]) -> None:
        self.kubectl("apply", "--server-side", "-n", self.ns, "-f", "-", input=json.dumps(obj))

    def rollout(self) -> dict[str, Any]:
        out = self.kubectl("get", "recommender", NAME, "-n", self.ns, "-o", "json", check=False)
        if out.returncode != 0:
            return {}
        status: dict[str, Any] = json.loads(out.stdout).get("status") or {}
        return status.get("rollout") or {}

    def status_table(self) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "recsys_operator.cli", "status", NAME, "-n", self.ns,
             "--kubeconfig", str(self.cluster.kubeconfig)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return done.stdout or done.stderr

    def follow(self, until: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """Print every change of the rollout (phase, step, weight, checks) until ``until``."""
        deadline = time.monotonic() + timeout
        seen: tuple[Any, ...] = ()
        while time.monotonic() < deadline:
            ro = self.rollout()
            key = (ro.get("phase"), ro.get("pauseReason"), ro.get("currentStepIndex"),
                   ro.get("canaryWeight"), ro.get("failedChecks"), len(ro.get("analysis") or []),
                   ro.get("stable"))  # fmt: skip
            if key != seen:
                seen = key
                say(f"t={time.monotonic() - self.started:5.1f}s  {ro.get('phase')}"
                    f"{' (' + ro['pauseReason'] + ')' if ro.get('pauseReason') else ''}: "
                    f"{ro.get('message', '')}")  # fmt: skip
                if ro.get("analysis") and ro.get("canary"):
                    print(self.status_table(), flush=True)
            if until(ro):
                return ro
            time.sleep(0.5)
        raise SystemExit(f"demo: the rollout did not finish within {timeout:.0f} s")


def run(scenario: str, cluster: Cluster, work: Path, ns: str, timeout: float) -> int:
    """Run ``scenario`` on a started cluster (demo/run_demo.py starts it)."""
    if scenario == "drift":
        return run_drift(cluster, work, ns, timeout)
    s = Scenario(cluster, ns)
    second = "shop-v2"
    say("a synthetic world: users with known tastes, their interactions as parquet")
    models: Models = train_models(work / "world", {second: "poor"} if scenario == "rollback"
                                  else {})  # fmt: skip
    s.mark("world written" + (" and the poor model trained" if scenario == "rollback" else ""))
    rec = recommender(NAME, models, cluster.redis_url, {"steps": STEPS, "analysis": ANALYSIS})
    spec = rec["spec"]
    spec["training"] = {
        "hyperParameters": {"epochs": 4, "batchSize": 512, "learningRate": 0.01},
        "evaluation": {
            "k": 10,
            "metrics": [{"name": "recallAtK", "thresholdRange": {"min": 0.01}}],
        },
    }
    say("applying the Recommender: the first version trains (torch, CPU) and serves")
    s.apply(rec)
    first = s.follow(lambda ro: bool(ro.get("stable")), timeout)
    s.mark(f"{first['stable']} trained, indexed and stable")
    cluster.kubectl("wait", "-n", ns, "--for=condition=Ready", f"recommender/{NAME}",
                    "--timeout=120s")  # fmt: skip
    say("serving: Triton and two gateway replicas from the operator's Deployments")
    player = ServingPlayer(cluster.kubectl_path, cluster.kubeconfig, ns, work / "serving")
    serving: LocalServing = player.serve(NAME)
    s.mark("serving")
    try:
        with Traffic(serving.urls, models.world) as traffic:
            time.sleep(3)
            if scenario == "rollout":
                say("retraining: a second version trains and becomes the canary")
                cluster.kubectl("annotate", "--overwrite", "-n", ns, f"recommender/{NAME}",
                                f"recsys.dev/retrain={int(time.time())}")  # fmt: skip
                canary = second
            else:
                say(f"importing {second}: a model trained on a world with other tastes")
                s.apply(imported(NAME, second, models))
                canary = second
            started = time.monotonic()
            end = s.follow(
                lambda ro: (
                    ro.get("phase") in ("Aborted",)
                    or (ro.get("phase") == "Healthy" and ro.get("stable") == canary)
                ),
                timeout,
            )
            s.mark(f"rollout {'promoted' if end['phase'] == 'Healthy' else 'aborted'}")
            took = time.monotonic() - started
            time.sleep(2)
        tally = traffic.tally
    finally:
        serving.stop()
    print(s.status_table(), flush=True)
    stable_v = first["stable"]
    say(f"traffic: {sum(tally.responses.values())} responses, {len(tally.failures)} failed; "
        f"CTR {stable_v} {tally.ctr(stable_v):.2%}, {canary} {tally.ctr(canary):.2%} "
        f"(clicks per item shown, from the users' true tastes)")  # fmt: skip
    if end["phase"] == "Healthy":
        say(
            f"{canary} promoted after {took:.0f} s of canary; {stable_v} stays ready for "
            "rollback (rollbackWindow)"
        )
    else:
        say(f"{canary} aborted after {took:.0f} s: {end.get('message')}")
    for what, at in s.marks:
        say(f"  {at:6.1f}s  {what}")
    return 0


# --- drift ------------------------------------------------------------------------------------

USER_VIEW = f"{NAME}-users"


class DriftScenario(Scenario):
    """The drift path's steps: checks and log joins started by hand, and what they found."""

    def get(self, kind: str, name: str) -> dict[str, Any]:
        out = self.kubectl("get", kind, name, "-n", self.ns, "-o", "json", check=False)
        return dict(json.loads(out.stdout)) if out.returncode == 0 else {}

    def condition(self, kind: str, name: str, type_: str) -> dict[str, Any]:
        conditions = (self.get(kind, name).get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c.get("type") == type_), {})

    def job_summary(self, job: str) -> dict[str, Any]:
        """The termination message of the Job's newest finished pod: the workload's summary."""
        pods = json.loads(
            self.kubectl("get", "pods", "-n", self.ns, "-l", f"job-name={job}", "-o", "json").stdout
        )["items"]
        pods.sort(key=lambda p: p["metadata"]["creationTimestamp"], reverse=True)
        for pod in pods:
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                message = ((cs.get("state") or {}).get("terminated") or {}).get("message")
                if message:
                    return dict(json.loads(message))
        return {}

    def start_job(self, cronjob: str, job: str) -> None:
        say(f"kubectl create job --from=cronjob/{cronjob} {job}   (started by hand rather than "
            "waiting for its schedule)")  # fmt: skip
        self.kubectl("create", "job", f"--from=cronjob/{cronjob}", job, "-n", self.ns)

    def log_join(self, job: str, timeout: float) -> dict[str, Any]:
        self.start_job(f"{NAME}-logjoin", job)
        self.kubectl("wait", "-n", self.ns, "--for=condition=Complete", f"job/{job}",
                     f"--timeout={int(timeout)}s")  # fmt: skip
        summary = self.job_summary(job)
        say(f"log join {job}: {summary.get('responses')} responses joined with their clicks into "
            f"{summary.get('rows')} rows ({summary.get('positives')} clicked) in "
            f"{', '.join(summary.get('partitions') or []) or 'no partition'}")  # fmt: skip
        return summary

    def drift_check(self, job: str, timeout: float) -> dict[str, Any]:
        """Run one check; print what it found and what the operator made of it."""
        self.start_job(f"{NAME}-drift", job)
        deadline = time.monotonic() + timeout
        while True:
            status = self.get("recommender", NAME).get("status") or {}
            drift: dict[str, Any] = status.get("drift") or {}
            if drift.get("lastCheckJob") == job:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: drift check {job} was not counted within {timeout:.0f} s")
            time.sleep(0.5)
        cond = self.condition("recommender", NAME, "Drifted")
        summary = self.job_summary(job)
        sample = summary.get("sample") or {}
        say(f"t={time.monotonic() - self.started:5.1f}s  drift check {job}: "
            f"{sample.get('size')} served entries of {summary.get('modelVersion')} "
            f"({sample.get('from')} .. {sample.get('to')}), {summary.get('method')} per feature, "
            f"threshold {summary.get('threshold')}")  # fmt: skip
        rows = [
            [f["name"], f"{f['value']:.3f}", "yes" if f["drifted"] else "no", f["bin"],
             f"{f['expected']:.3f}", f"{f['actual']:.3f}"]
            for f in summary.get("features") or []
        ]  # fmt: skip
        score = summary.get("score") or {}
        if score.get("value") is not None:
            rows.append(["score (ranker)", f"{score['value']:.3f}",
                         "yes" if score.get("drifted") else "no", str(score.get("bin")),
                         f"{score['expected']:.3f}", f"{score['actual']:.3f}"])  # fmt: skip
        headers = ["FEATURE", summary.get("method", "PSI"), "DRIFTED", "MOST MOVED BIN",
                   "TRAINING", "SERVED"]  # fmt: skip
        print("\n".join(table(headers, rows)), flush=True)
        say(f"status.drift: driftedFeatures={drift.get('driftedFeatures') or []}, "
            f"consecutiveBreaches={drift.get('consecutiveBreaches')}; "
            f"Drifted {cond.get('status')} ({cond.get('reason')}): "
            f"{cond.get('message')}")  # fmt: skip
        return {
            "job": job,
            "drifted": cond.get("status"),
            "driftedFeatures": drift.get("driftedFeatures") or [],
            "consecutiveBreaches": drift.get("consecutiveBreaches"),
            "scores": drift.get("scores") or {},
        }

    def drift_version(self, timeout: float) -> dict[str, Any]:
        """The ModelVersion the operator created with reason Drift."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.kubectl("get", "mv", "-n", self.ns, "-o", "json", check=False)
            if out.returncode == 0:
                for mv in json.loads(out.stdout)["items"]:
                    if mv["spec"].get("reason") == "Drift":
                        return dict(mv)
            time.sleep(0.5)
        raise SystemExit(f"demo: no ModelVersion with reason Drift within {timeout:.0f} s")

    def follow_version(self, name: str, timeout: float) -> dict[str, Any]:
        """Print every phase of the ModelVersion until it is Ready, Rejected or Failed."""
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            mv = self.get("mv", name)
            status = mv.get("status") or {}
            if status.get("phase") != seen:
                seen = status.get("phase")
                say(f"t={time.monotonic() - self.started:5.1f}s  {name} {seen}: "
                    f"{status.get('message', '')}")  # fmt: skip
            if seen in ("Ready", "Rejected", "Failed"):
                return mv
            time.sleep(0.5)
        raise SystemExit(f"demo: {name} did not finish within {timeout:.0f} s")


def trained_on(mv: dict[str, Any], batch: int, batch_end_us: int) -> int | None:
    """How many of the version's training interactions were logged ones: its profile counts
    the interactions before the holdout cutoff; the batch ones are older than any logged one,
    so once the training split reaches past them, the rest of it is logged clicks."""
    uri = str((mv.get("status") or {}).get("artifactUri") or "")
    profile = Path(uri.removeprefix("file://")) / "profile.json"
    if not uri.startswith("file://") or not profile.exists():
        return None
    trained = json.loads(profile.read_text())["interactions"]
    return int(trained["count"]) - batch if int(trained["lastTime"]) >= batch_end_us else 0


def last_ctr(rollout: dict[str, Any]) -> dict[str, Any]:
    """The click-through-rate result of the rollout's last analysis check (empty if none):
    a canary runs out of steps while the check is still Inconclusive when too few clicks
    could tell the two versions apart, and is promoted then (Inconclusive holds nothing)."""
    checks = rollout.get("analysis") or []
    metrics = checks[-1].get("metrics") or [] if checks else []
    return next((dict(m) for m in metrics if m.get("name") == "click-through-rate"), {})


def answered(tally: Tally, version: str) -> str:
    return (f"{tally.responses[version]} answers from {version}, {tally.clicks[version]} "
            f"clicks (CTR {tally.ctr(version):.2%}), {len(tally.failures)} failed")  # fmt: skip


def run_drift(cluster: Cluster, work: Path, ns: str, timeout: float) -> int:
    """The drift path, step by step (README, "What the demo runs")."""
    s = DriftScenario(cluster, ns)
    result: dict[str, Any] = {}
    say(f"a synthetic world whose later users' features shift (drift knob {DRIFT}): users who "
        f"appear late are younger and lean to other occupations")  # fmt: skip
    world = write_drift_world(work / "world")
    say(f"the first version learns from the {world.interactions} interactions of the "
        f"{len(world.early)} users present from the start; {len(world.late)} users appear in "
        f"the last {1 - LATE_FROM:.0%} of the period")  # fmt: skip
    s.mark("world written")
    say(f"applying FeatureView {USER_VIEW} (age, gender, occupation into Redis) and the "
        "Recommender (drift checks, log join): the first version trains (torch, CPU) and "
        "serves")  # fmt: skip
    s.apply(user_feature_view(USER_VIEW, world, cluster.redis_url))
    s.apply(drift_recommender(NAME, USER_VIEW, world, cluster.redis_url,
                              {"steps": STEPS, "analysis": ANALYSIS}))  # fmt: skip
    first = s.follow(lambda ro: bool(ro.get("stable")), timeout)
    stable_v = str(first["stable"])
    for what, args in (
        ("the Recommender Ready", ["--for=condition=Ready", f"recommender/{NAME}"]),
        ("the users' features in Redis", ["--for=condition=Materialized", f"fv/{USER_VIEW}"]),
        ("the users' histories seeded", ["--for=condition=Complete", "job", "-l",
                                         "app.kubernetes.io/component=history"]),
    ):  # fmt: skip
        cluster.kubectl("wait", "-n", ns, *args, "--timeout=300s")
        say(f"{what}")
    s.mark(f"{stable_v} trained, indexed and stable; features materialized")
    say("serving: Triton and two gateway replicas from the operator's Deployments")
    player = ServingPlayer(cluster.kubectl_path, cluster.kubeconfig, ns, work / "serving")
    serving: LocalServing = player.serve(NAME)
    s.mark("serving")
    wanted = SAMPLE_SIZE + 200
    try:
        say(f"unshifted traffic: the early users ask and click by their tastes, until "
            f"{wanted} answers")  # fmt: skip
        with Traffic(serving.urls, world.world, users=world.early) as early:
            early.wait_for(lambda t: sum(t.responses.values()) >= wanted, f"{wanted} answers",
                           timeout)  # fmt: skip
        say(f"early users: {answered(early.tally, stable_v)}")
        s.mark("unshifted traffic served")
        result["unshifted"] = s.drift_check(f"{NAME}-drift-unshifted", timeout)
        s.mark("drift check on unshifted traffic")
        # the retrain should learn from the log: enough clicks that they outnumber the holdout
        # the gate keeps (the newest share of all interactions, logged ones last)
        clicks = int(world.interactions * LOGGED_CLICKS)
        say(f"shifted traffic: now the late users ask, until {wanted} answers and "
            f"{clicks} clicks since the start")  # fmt: skip
        with Traffic(serving.urls, world.world, users=world.late) as late:
            late.wait_for(
                lambda t: sum(t.responses.values()) >= wanted
                and sum(t.clicks.values()) + sum(early.tally.clicks.values()) >= clicks,
                f"{wanted} answers and {clicks} clicks", timeout,
            )  # fmt: skip
            say(f"late users: {answered(late.tally, stable_v)}")
            s.mark("shifted traffic served")
            time.sleep(4)  # the attribution window (3 s): the last clicks count
            result["logJoin"] = s.log_join(f"{NAME}-logjoin-1", timeout)
            s.mark("log join")
            result["shifted"] = [
                s.drift_check(f"{NAME}-drift-shifted-{n}", timeout) for n in (1, 2)
            ]
            s.mark("two drift checks on shifted traffic")
            mv = s.drift_version(timeout)
        version = mv["metadata"]["name"]
        say(f"the operator created {version}, reason {mv['spec']['reason']} (trigger "
            f"{mv['metadata'].get('annotations', {}).get('recsys.dev/trigger')})")  # fmt: skip
        result["version"] = {"name": version, "reason": mv["spec"]["reason"]}
        mv = s.follow_version(version, timeout)
        status = mv.get("status") or {}
        lineage = status.get("lineage") or {}
        logged = lineage.get("logged") or {}
        learned = trained_on(mv, world.interactions, world.end_us)
        say(f"{version} lineage: {lineage.get('interactions')} batch interactions; logged "
            f"{logged.get('rows')} rows in partitions {logged.get('partitions')}, "
            f"{logged.get('interactions')} clicks as interactions, {learned} of them in its "
            f"training split (the newest {HOLDOUT:.0%} of all are the gate's holdout)")  # fmt: skip
        evaluation = status.get("evaluation") or {}
        say(f"{version} evaluation gate: passed={evaluation.get('passed')} "
            f"(recall@{evaluation.get('k')}={evaluation.get('recallAtK')}, "
            f"floor 0.01); phase {status.get('phase')}")  # fmt: skip
        result["version"] |= {
            "phase": status.get("phase"),
            "gatePassed": evaluation.get("passed"),
            "logged": logged,
            "loggedInTraining": learned,
        }
        s.mark(f"{version} trained on the log, gated, indexed")
        say("traffic from every user of the world (early, late and between) for the canary")
        with Traffic(serving.urls, world.world) as traffic:
            end: dict[str, Any] = {}
            if status.get("phase") == "Ready":
                started = time.monotonic()
                end = s.follow(
                    lambda ro: (
                        ro.get("phase") == "Aborted"
                        or (ro.get("phase") == "Healthy" and ro.get("stable") == version)
                    ),
                    timeout,
                )
                took = time.monotonic() - started
                s.mark(f"rollout {'promoted' if end['phase'] == 'Healthy' else 'aborted'}")
            time.sleep(2)
        tally = traffic.tally
    finally:
        serving.stop()
    if end:
        print(s.status_table(), flush=True)
        say(f"traffic: {sum(tally.responses.values())} responses, {len(tally.failures)} failed; "
            f"CTR {stable_v} {tally.ctr(stable_v):.2%}, {version} {tally.ctr(version):.2%} "
            "(every user of the world, during the canary)")  # fmt: skip
        ctr = last_ctr(end)
        say(f"the last click-through-rate check: {ctr.get('verdict')}: {ctr.get('message')}")
        if end["phase"] == "Healthy":
            say(f"{version} promoted after {took:.0f} s of canary")
        else:
            say(f"{version} aborted after {took:.0f} s: {end.get('message')}")
        result["ctrVerdict"] = ctr.get("verdict")
    result["failedRequests"] = {
        "unshifted": len(early.tally.failures),
        "shifted": len(late.tally.failures),
        "canary": len(tally.failures),
    }
    result["rollout"] = {"phase": end.get("phase"), "stable": end.get("stable"),
                         "message": end.get("message")}  # fmt: skip
    for what, at in s.marks:
        say(f"  {at:6.1f}s  {what}")
    say(f"result: {json.dumps(result, sort_keys=True)}")
    return 0
