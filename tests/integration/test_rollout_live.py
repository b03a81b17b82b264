"""Canary rollouts on real parts: the operator, the control plane, Redis, FAISS index builds
run as their Job pods run them, real Triton servers and gateway replicas played from the
Deployments the operator made, and users of a synthetic world asking for recommendations and
clicking what their true tastes make them click (``testbed.rollout_world``).

Each test imports a stable and a canary ModelVersion trained outside the operator (a model
trained on the world, or on a world with other tastes, which earns fewer clicks), rolls the
canary out under load and checks what the rollout decided, what the traffic saw, and what
Argo CD's own health check says at each phase. Figures (weight propagation, abort to all
traffic on stable) are printed; ``benchmarks/README.md`` records them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from argocd.health import argocd_health

from fixtures.kube import Testbed
from fixtures.operator import OperatorProcess, eventually, get
from recsys_contract.keyspace import GatewayKeys
from recsys_contract.traffic import Heartbeat, live
from testbed.local_runner import LocalRunner
from testbed.local_serving import LocalServing, ServingPlayer
from testbed.prometheus_server import start_prometheus
from testbed.rollout_world import (
    ANALYSIS,
    Models,
    Traffic,
    imported,
    recommender,
    train_models,
)

pytestmark = [pytest.mark.testbed, pytest.mark.triton, pytest.mark.slow]

REC = "live"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    root = tmp_path_factory.mktemp("rollout-world")
    return train_models(
        root, {"good-v1": "good", "good-v2": "good", "poor-v1": "poor", "poor-v2": "poor"}
    )


@dataclass
class Stage:
    """One running rollout: what a test drives and watches."""

    testbed: Testbed
    ns: str
    operator: OperatorProcess
    models: Models
    redis_url: str
    runner: LocalRunner
    player: ServingPlayer
    serving: LocalServing | None = None
    health: dict[str, set[tuple[str, str]]] = field(default_factory=dict)

    @property
    def keys(self) -> GatewayKeys:
        return GatewayKeys.of(f"{self.ns}.{REC}")

    def apply(self, obj: dict[str, Any]) -> None:
        self.testbed.kubectl(
            "apply", "--server-side", "-n", self.ns, "-f", "-", input=json.dumps(obj)
        )

    def rec(self) -> dict[str, Any]:
        return get(self.testbed, "recommender", REC, self.ns) or {}

    def rollout(self) -> dict[str, Any]:
        obj = self.rec()
        ro: dict[str, Any] = (obj.get("status") or {}).get("rollout") or {}
        phase = ro.get("phase")
        if phase:  # what Argo CD shows, at every phase the test sees
            self.health.setdefault(phase, set()).add(argocd_health("Recommender", obj))
        return ro

    def wait(self, what: str, check: Callable[[dict[str, Any]], bool], timeout: float = 180
             ) -> dict[str, Any]:  # fmt: skip
        def holds() -> dict[str, Any] | None:
            ro = self.rollout()
            return ro if check(ro) else None

        try:
            return eventually(holds, timeout, what, operator=self.operator)  # type: ignore[no-any-return]
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nrollout: {json.dumps(self.rollout())}") from None

    def beats(self) -> dict[str, Heartbeat]:
        client = redis.Redis.from_url(self.redis_url)
        try:
            raw = client.hgetall(self.keys.replicas)
        finally:
            client.close()
        return live({k.decode(): Heartbeat.from_json(v) for k, v in raw.items()}, time.time())

    def start(self, stable: str, rollout: dict[str, Any]) -> None:
        """The stable version imported and serving, the gateways and its Triton played."""
        self.apply(imported(REC, stable, self.models))
        self.apply(recommender(REC, self.models, self.redis_url, rollout))
        self.wait(f"{stable} stable", lambda ro: ro.get("stable") == stable, 240)
        self.testbed.kubectl("wait", "-n", self.ns, "--for=condition=Ready",
                             f"recommender/{REC}", "--timeout=120s")  # fmt: skip
        self.serving = self.player.serve(REC)

    def traffic(self) -> Traffic:
        assert self.serving is not None
        return Traffic(self.serving.urls, self.models.world)

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "recsys_operator.cli", *args, REC, "-n", self.ns,
             "--kubeconfig", str(self.testbed.kubeconfig)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    def until_every_replica(self, check: Callable[[Heartbeat], bool], timeout: float = 30
                            ) -> float:  # fmt: skip
        """Seconds until every live gateway replica's heartbeat passes ``check``."""
        assert self.serving is not None
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            beats = self.beats()
            if len(beats) == len(self.serving.urls) and all(check(b) for b in beats.values()):
                return time.monotonic() - start
            time.sleep(0.05)
        raise AssertionError(f"replicas did not all get there in {timeout} s: {self.beats()}")


@pytest.fixture
def stage(
    testbed: Testbed, namespace: str, operator: OperatorProcess, models: Models, redis_url: str,
    tmp_path: Path,
) -> Iterator[Stage]:  # fmt: skip
    runner = LocalRunner(testbed.kubectl_path, testbed.kubeconfig, namespace)
    runner.start()
    player = ServingPlayer(testbed.kubectl_path, testbed.kubeconfig, namespace, tmp_path / "pods")
    s = Stage(testbed, namespace, operator, models, redis_url, runner, player)
    try:
        yield s
    finally:
        if s.serving is not None:
            s.serving.stop()
        runner.stop()


def events(stage: Stage, reason: str) -> int:
    out = stage.testbed.kubectl(
        "get", "events", "-n", stage.ns, "--field-selector",
        f"involvedObject.kind=Recommender,reason={reason}", "-o", "json",
    ).stdout  # fmt: skip
    return len(json.loads(out)["items"])


def test_a_better_model_is_promoted_through_every_step_without_a_failed_request(
    stage: Stage,
) -> None:
    steps = [
        {"setWeight": 25}, {"pause": {"duration": "12s"}},
        {"setWeight": 60}, {"pause": {"duration": "12s"}},
    ]  # fmt: skip
    stage.start("poor-v1", {"steps": steps, "analysis": ANALYSIS})
    # a real Prometheus scraping the gateway replicas, and a metric read from it
    assert stage.serving is not None
    prom = start_prometheus([u.removeprefix("http://") for u in stage.serving.urls])
    success = (
        'sum(rate(recsys_gateway_requests_total{variant="{{variant}}",code="200"}[{{interval}}]))'
        ' / sum(rate(recsys_gateway_requests_total{variant="{{variant}}"}[{{interval}}])) * 100'
    )
    analysis = {**ANALYSIS, "metrics": [*ANALYSIS["metrics"], {  # type: ignore[list-item]
        "name": "gateway-success-rate", "interval": "10s", "thresholdRange": {"min": 99},
        "prometheus": {"address": prom.address, "query": success}}]}  # fmt: skip
    stage.apply(recommender(REC, stage.models, stage.redis_url,
                            {"steps": steps, "analysis": analysis}))  # fmt: skip
    propagation: list[float] = []
    with stage.traffic() as traffic:
        stage.apply(imported(REC, "good-v2", stage.models))
        for weight in (25, 60):
            stage.wait(f"canary at {weight}%", lambda ro, w=weight: ro.get("canaryWeight") == w)
            propagation.append(stage.until_every_replica(lambda b, w=weight: b.canary_weight == w))
        done = stage.wait("promoted", lambda ro: ro.get("phase") == "Healthy"
                          and ro.get("stable") == "good-v2", 240)  # fmt: skip
        stage.until_every_replica(lambda b: b.stable == "good-v2" and b.canary is None)
        time.sleep(2)  # traffic after the promotion too
    prom.stop()
    tally = traffic.tally
    print(f"weight change seen by every replica after {[f'{s:.2f}' for s in propagation]} s; "
          f"CTR poor {tally.ctr('poor-v1'):.4f} good {tally.ctr('good-v2'):.4f}; "
          f"responses {dict(tally.responses)}")  # fmt: skip
    assert tally.failures == [], "a request failed during the rollout"
    assert tally.fallbacks["good-v2"] == 0
    assert tally.ctr("good-v2") > tally.ctr("poor-v1"), "the better model earns more clicks"
    assert done["previousStable"] == "poor-v1"
    assert done["failedChecks"] == 0
    assert done["analysis"], "checks ran"
    verdicts = {m["name"]: m["verdict"] for r in done["analysis"] for m in r["metrics"]}
    assert verdicts["click-through-rate"] in ("Passed", "Inconclusive"), done["analysis"]
    from_prometheus = [m for r in done["analysis"] for m in r["metrics"]
                       if m["name"] == "gateway-success-rate"]  # fmt: skip
    assert from_prometheus[-1]["verdict"] == "Passed", from_prometheus
    assert from_prometheus[-1]["canary"] == pytest.approx(100)
    # the previous stable stays ready for the rollback window
    assert get(stage.testbed, "deployment", "live-triton-poor-v1", stage.ns) is not None
    # Argo CD: Suspended in the pauses, Progressing while steps run, Healthy at the end
    assert {s for s, _ in stage.health["Paused"]} == {"Suspended"}
    assert {s for s, _ in stage.health["Progressing"]} == {"Progressing"}
    assert argocd_health("Recommender", stage.rec())[0] == "Healthy"
    assert events(stage, "Promoted") == 2  # the first version, then the canary


def test_a_model_with_fewer_clicks_is_aborted_by_the_business_metric(stage: Stage) -> None:
    stage.start("good-v1", {"steps": [{"setWeight": 50}, {"pause": {}}], "analysis": ANALYSIS})
    with stage.traffic() as traffic:
        stage.apply(imported(REC, "poor-v2", stage.models))
        stage.wait("canary at 50%", lambda ro: ro.get("canaryWeight") == 50)
        aborted = stage.wait("aborted", lambda ro: ro.get("phase") == "Aborted", 240)
        stage.until_every_replica(lambda b: b.canary is None)
        time.sleep(2)
    tally = traffic.tally
    print(
        f"aborted after {sum(tally.responses.values())} responses; CTR good "
        f"{tally.ctr('good-v1'):.4f} poor {tally.ctr('poor-v2'):.4f}: {aborted['message']}"
    )
    assert aborted["abortedVersion"] == "poor-v2"
    assert aborted["stable"] == "good-v1"
    assert "canary" not in aborted
    failed = [m for m in aborted["analysis"][-1]["metrics"] if m["verdict"] == "Failed"]
    assert [m["name"] for m in failed] == ["click-through-rate"], aborted["analysis"]
    assert tally.failures == []
    assert {s for s, _ in stage.health["Aborted"]} == {"Degraded"}
    # not rolled out again: the aborted version stays out while nothing newer comes
    time.sleep(6)
    assert stage.rollout().get("canary") is None


def test_injected_errors_abort_after_failure_limit_checks_and_stable_users_never_notice(
    stage: Stage,
) -> None:
    stage.start("good-v1", {"steps": [{"setWeight": 40}, {"pause": {}}], "analysis": ANALYSIS})
    with stage.traffic() as traffic:
        stage.apply(imported(REC, "good-v2", stage.models))
        stage.wait("canary at 40%", lambda ro: ro.get("canaryWeight") == 40)
        assert stage.serving is not None
        # the canary's Triton dies: the gateways answer its users with fallback items
        stage.serving.tritons["live-triton-good-v2"].stop()
        aborted = stage.wait("aborted", lambda ro: ro.get("phase") == "Aborted", 240)
        stage.until_every_replica(lambda b: b.canary is None)
    tally = traffic.tally
    assert aborted["failedChecks"] == ANALYSIS["failureLimit"]
    assert "fallback" in aborted["message"]
    assert tally.failures == []
    assert tally.fallbacks["good-v1"] == 0, "stable users got fallback items"


def test_pause_resume_restart_promote_and_an_instant_rollback(stage: Stage) -> None:
    stage.start("good-v1", {"steps": [{"setWeight": 30}, {"pause": {}}], "analysis": ANALYSIS})
    with stage.traffic() as traffic:
        stage.apply(imported(REC, "good-v2", stage.models))
        waiting = stage.wait("waiting for a promote", lambda ro: ro.get("pauseReason")
                             == "AwaitingPromote")  # fmt: skip
        stage.cli("pause")
        stage.wait("paused by the user", lambda ro: ro.get("pauseReason") == "UserPaused")
        stage.cli("resume")
        stage.wait("waiting again", lambda ro: ro.get("pauseReason") == "AwaitingPromote")
        # an operator killed mid-step resumes the same step with the same timer
        stage.operator.kill()
        stage.operator.start()
        time.sleep(5)
        again = stage.rollout()
        for key in ("currentStepIndex", "stepStartedAt", "startTime", "canaryWeight", "canary"):
            assert again.get(key) == waiting.get(key), key
        assert events(stage, "RolloutStarted") == 1
        assert "AwaitingPromote" in stage.cli("status")
        stage.cli("promote")
        stage.wait("promoted", lambda ro: ro.get("stable") == "good-v2"
                   and ro.get("phase") == "Healthy")  # fmt: skip
        stage.until_every_replica(lambda b: b.stable == "good-v2")
        uid = get(stage.testbed, "deployment", "live-triton-good-v1", stage.ns)["metadata"]["uid"]  # type: ignore[index]
        asked = time.monotonic()
        stage.cli("abort")
        stage.until_every_replica(lambda b: b.stable == "good-v1" and b.canary is None, 60)
        rollback = time.monotonic() - asked
        rolled = stage.wait("rolled back", lambda ro: ro.get("phase") == "Aborted")
        time.sleep(2)
    print(f"abort to every replica on the previous stable: {rollback:.2f} s")
    assert rolled["stable"] == "good-v1"
    assert rolled["abortedVersion"] == "good-v2"
    # a routing change: the previous stable's Triton was never replaced
    after = get(stage.testbed, "deployment", "live-triton-good-v1", stage.ns)
    assert after is not None
    assert after["metadata"]["uid"] == uid
    assert traffic.tally.failures == []


def test_a_shadow_step_judges_a_canary_no_user_is_served_by(stage: Stage) -> None:
    """The canary answers every stable request in the background; its lists disagree with the
    stable's (a model of other tastes), so the shadow-overlap check aborts it before any user
    is routed to it."""
    analysis = {
        **ANALYSIS,
        "metrics": [{"name": "shadow-overlap", "thresholdRange": {"min": 90}}],
    }
    steps = [{"shadow": {"duration": "60s", "percent": 100}}, {"setWeight": 50}, {"pause": {}}]
    stage.start("good-v1", {"steps": steps, "analysis": analysis})
    with stage.traffic() as traffic:
        stage.apply(imported(REC, "poor-v2", stage.models))
        stage.wait("shadowing", lambda ro: ro.get("canary") == "poor-v2")
        stage.until_every_replica(lambda b: "poor-v2" in b.reachable, 120)
        aborted = stage.wait("aborted in shadow", lambda ro: ro.get("phase") == "Aborted", 180)
    shadow = aborted["shadow"]
    print(f"shadow: {shadow}; {aborted['message']}")
    assert traffic.tally.responses["poor-v2"] == 0, "no user was served by the shadowed canary"
    assert traffic.tally.failures == []
    assert shadow["requests"] > 0
    assert shadow["overlap"] < 90
    assert "overlap@k" in aborted["message"]
