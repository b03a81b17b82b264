"""``make demo DEMO_ARGS="--scenario rollout|rollback"``: a canary rollout, watched as it goes.

Both scenarios run on the same parts as the closed loop (the testbed's control plane, a
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

from testbed.local_serving import LocalServing, ServingPlayer  # noqa: E402
from testbed.rollout_world import (  # noqa: E402
    ANALYSIS,
    Models,
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
