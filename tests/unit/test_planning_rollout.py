"""The rollout step machine, one row per transition (as Argo Rollouts' ``rollout/canary_test.go``).

Each row builds the inputs (the previous ``status.rollout``, the Ready versions, the analysis
check run now, which versions are ready to take traffic, the annotations' tokens, the clock)
and states the status and routing that must come out.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import pytest

from recsys_operator.api.recommender import AnalysisResult, MetricResult, RolloutStatus
from recsys_operator.api.serving import Rollout
from recsys_operator.planning import rollout as machine

T0 = dt.datetime(2026, 12, 1, 12, 0, 0, tzinfo=dt.UTC)


def at(seconds: float) -> str:
    return (T0 + dt.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


STEPS: list[dict[str, Any]] = [
    {"setWeight": 10},
    {"pause": {"duration": "60s"}},
    {"setWeight": 50},
    {"pause": {}},
]


def check(verdict: str) -> AnalysisResult:
    return AnalysisResult(
        time=at(0),
        verdict=verdict,  # type: ignore[arg-type]
        metrics=[
            MetricResult(
                name="request-success-rate",
                canary=90.0 if verdict == "Failed" else 99.9,
                min=99.0,
                verdict=verdict,  # type: ignore[arg-type]
                message=f"success rate {verdict}",
            )
        ],
    )


@dataclass
class Row:
    name: str
    previous: dict[str, Any]
    want: dict[str, Any]
    versions: tuple[str, ...] = ("v1", "v2")
    now: float = 0
    steps: list[dict[str, Any]] | None = None
    paused: bool = False
    failure_limit: int = 2
    pinned: str | None = None
    promote: str | None = None
    abort: str | None = None
    check: str | None = None
    ready: tuple[str, ...] = ("v1", "v2")
    hold: str | None = None
    routing: tuple[str, str | None, int, str | None] | None = None
    shadow: int = 0
    unfit: tuple[str, ...] = ()
    events: tuple[str, ...] = ()
    requeue: float | None = field(default=None)

    def inputs(self) -> machine.Inputs:
        spec: dict[str, Any] = {
            "steps": STEPS if self.steps is None else self.steps,
            "paused": self.paused,
            "analysis": {"interval": "30s", "failureLimit": self.failure_limit},
            "rollbackWindow": "1h",
        }
        return machine.Inputs(
            rollout=Rollout.model_validate(spec),
            previous=RolloutStatus.model_validate(self.previous),
            versions=[machine.Candidate(v, ("", n)) for n, v in enumerate(self.versions)],
            now=T0 + dt.timedelta(seconds=self.now),
            pinned=self.pinned,
            promote_token=self.promote,
            abort_token=self.abort,
            check=check(self.check) if self.check else None,
            ready=frozenset(self.ready),
            hold=self.hold,
            unfit={v: f"{v} was trained on features not served" for v in self.unfit},
        )


HEALTHY_V1 = {"phase": "Healthy", "stable": "v1", "canaryWeight": 0}
CANARY = {
    "phase": "Progressing",
    "stable": "v1",
    "canary": "v2",
    "canaryWeight": 10,
    "currentStepIndex": 1,
    "stepStartedAt": at(0),
    "startTime": at(0),
    "failedChecks": 0,
}
PAUSED_AT_1 = {**CANARY, "phase": "Paused", "pauseReason": "PauseStep"}
AWAITING = {
    **CANARY,
    "phase": "Paused",
    "pauseReason": "AwaitingPromote",
    "canaryWeight": 50,
    "currentStepIndex": 3,
}

ROWS = [
    Row(
        "the first version serves at once",
        {},
        {"phase": "Healthy", "stable": "v1"},
        versions=("v1",),
        ready=(),
        routing=("v1", None, 0, None),
        events=("Promoted",),
    ),
    Row(
        "no new version: healthy, nothing to do",
        HEALTHY_V1,
        {"phase": "Healthy", "stable": "v1", "canary": None},
        versions=("v1",),
        routing=("v1", None, 0, None),
    ),
    Row(
        "a newer version starts a canary: setWeight at once, then the pause",
        HEALTHY_V1,
        {
            "phase": "Paused",
            "pauseReason": "PauseStep",
            "canary": "v2",
            "canaryWeight": 10,
            "currentStepIndex": 1,
            "startTime": at(0),
            "stepStartedAt": at(0),
        },
        routing=("v1", "v2", 10, None),
        events=("RolloutStarted", "WeightSet"),
        requeue=30,
    ),
    Row(
        "the canary gets no traffic before its Triton and index are ready",
        HEALTHY_V1,
        {"phase": "Progressing", "canary": "v2", "canaryWeight": 0, "currentStepIndex": 0},
        ready=("v1",),
        routing=("v1", "v2", 0, None),
        events=("RolloutStarted",),
        requeue=2,
    ),
    Row(
        "a timed pause not yet over keeps its timer",
        PAUSED_AT_1,
        {"phase": "Paused", "currentStepIndex": 1, "stepStartedAt": at(0)},
        now=45,
        check="Passed",
        routing=("v1", "v2", 10, None),
        requeue=15,
    ),
    Row(
        "a timed pause over: the next setWeight, then wait for a promote",
        PAUSED_AT_1,
        {
            "phase": "Paused",
            "pauseReason": "AwaitingPromote",
            "canaryWeight": 50,
            "currentStepIndex": 3,
            "stepStartedAt": at(60),
        },
        now=60,
        routing=("v1", "v2", 50, None),
        events=("WeightSet",),
    ),
    Row(
        "a promote token skips the untimed pause; all steps done and ready: promoted",
        AWAITING,
        {
            "phase": "Healthy",
            "stable": "v2",
            "canary": None,
            "canaryWeight": 0,
            "previousStable": "v1",
            "previousStableUntil": at(3600 + 90),
            "lastPromoteToken": "t1",
        },
        now=90,
        promote="t1",
        routing=("v2", None, 0, "v1"),
        events=("PauseSkipped", "Promoted"),
    ),
    Row(
        "a promote token already acted on does nothing",
        {**AWAITING, "lastPromoteToken": "t1"},
        {"phase": "Paused", "pauseReason": "AwaitingPromote", "stable": "v1"},
        now=90,
        promote="t1",
        routing=("v1", "v2", 50, None),
    ),
    Row(
        "full promotion skips every step",
        PAUSED_AT_1,
        {"phase": "Healthy", "stable": "v2", "lastPromoteToken": "full-1"},
        now=5,
        promote="full-1",
        routing=("v2", None, 0, "v1"),
        events=("PromotedByHand", "Promoted"),
    ),
    Row(
        "all steps done but the new version not on every replica yet: Promoting",
        AWAITING,
        {"phase": "Promoting", "stable": "v1", "canary": "v2", "canaryWeight": 50},
        promote="t1",
        ready=("v1",),
        routing=("v1", "v2", 50, None),
        events=("PauseSkipped",),
        requeue=2,
    ),
    Row(
        "spec paused holds the step, analysis still counts",
        PAUSED_AT_1,
        {
            "phase": "Paused",
            "pauseReason": "UserPaused",
            "currentStepIndex": 1,
            "lastCheckTime": at(120),
        },
        now=120,
        paused=True,
        check="Passed",
        routing=("v1", "v2", 10, None),
    ),
    Row(
        "a failed check under the limit holds the steps",
        PAUSED_AT_1,
        {"phase": "Progressing", "failedChecks": 1, "currentStepIndex": 1, "canaryWeight": 10},
        now=60,
        check="Failed",
        routing=("v1", "v2", 10, None),
        events=("AnalysisFailed",),
    ),
    Row(
        "failureLimit failed checks abort: traffic back on stable",
        {**PAUSED_AT_1, "failedChecks": 1},
        {
            "phase": "Aborted",
            "stable": "v1",
            "canary": None,
            "canaryWeight": 0,
            "abortedVersion": "v2",
            "failedChecks": 2,
        },
        now=60,
        check="Failed",
        routing=("v1", None, 0, None),
        events=("RolloutAborted",),
    ),
    Row(
        "an inconclusive check holds nothing",
        PAUSED_AT_1,
        {
            "phase": "Paused",
            "pauseReason": "AwaitingPromote",
            "canaryWeight": 50,
            "failedChecks": 0,
        },
        now=60,
        check="Inconclusive",
        routing=("v1", "v2", 50, None),
        events=("WeightSet",),
    ),
    Row(
        "a passing check after a failure releases the hold",
        {**PAUSED_AT_1, "failedChecks": 1, "analysis": [check("Failed").to_k8s()]},
        {"phase": "Paused", "pauseReason": "AwaitingPromote", "failedChecks": 1},
        now=60,
        check="Passed",
        routing=("v1", "v2", 50, None),
        events=("WeightSet",),
    ),
    Row(
        "a stale FeatureView holds the next step, the pause timer runs on",
        PAUSED_AT_1,
        {
            "phase": "Progressing",
            "currentStepIndex": 1,
            "canaryWeight": 10,
            "message": "step 1 held: FeatureView users is stale",
        },
        now=60,
        hold="FeatureView users is stale",
        routing=("v1", "v2", 10, None),
    ),
    Row(
        "a stale FeatureView holds the promotion",
        AWAITING,
        {
            "phase": "Progressing",
            "stable": "v1",
            "canary": "v2",
            "message": "promotion held: FeatureView users is stale",
        },
        promote="t1",
        hold="FeatureView users is stale",
        routing=("v1", "v2", 50, None),
        events=("PauseSkipped",),
    ),
    Row(
        "a shadow step mirrors stable requests to the canary, no user on it yet",
        HEALTHY_V1,
        {"phase": "Progressing", "canary": "v2", "canaryWeight": 0, "currentStepIndex": 0},
        steps=[{"shadow": {"duration": "30s", "percent": 20}}, {"setWeight": 10}, {"pause": {}}],
        routing=("v1", "v2", 0, None),
        shadow=20,
        events=("RolloutStarted",),
        requeue=30,
    ),
    Row(
        "the shadow step over: the first weight, the mirroring stops",
        {**CANARY, "canaryWeight": 0, "currentStepIndex": 0},
        {
            "phase": "Paused",
            "pauseReason": "AwaitingPromote",
            "canaryWeight": 10,
            "currentStepIndex": 2,
        },
        now=30,
        check="Passed",
        steps=[{"shadow": {"duration": "30s", "percent": 20}}, {"setWeight": 10}, {"pause": {}}],
        routing=("v1", "v2", 10, None),
        events=("WeightSet",),
    ),
    Row(
        "a shadow step waits for the canary to be ready, mirroring nothing it cannot answer",
        HEALTHY_V1,
        {"phase": "Progressing", "canary": "v2", "currentStepIndex": 0},
        steps=[{"shadow": {"duration": "30s"}}],
        ready=("v1",),
        routing=("v1", "v2", 0, None),
        shadow=0,
        events=("RolloutStarted",),
        requeue=2,
    ),
    Row(
        "a shadow step's clock starts once the canary is ready, not while it loads",
        {
            **CANARY,
            "canaryWeight": 0,
            "currentStepIndex": 0,
            "stepStartedAt": None,
            "lastCheckTime": at(90),
        },
        {"phase": "Progressing", "currentStepIndex": 0, "stepStartedAt": at(100)},
        now=100,
        steps=[{"shadow": {"duration": "30s", "percent": 20}}, {"setWeight": 10}],
        routing=("v1", "v2", 0, None),
        shadow=20,
        requeue=20,  # the next check; the shadow's own 30 s run from now
    ),
    Row(
        "a shadow step waiting for the canary keeps no clock",
        {**CANARY, "canaryWeight": 0, "currentStepIndex": 0, "lastCheckTime": at(90)},
        {"phase": "Progressing", "currentStepIndex": 0, "stepStartedAt": None},
        now=100,
        steps=[{"shadow": {"duration": "30s", "percent": 20}}, {"setWeight": 10}],
        ready=("v1",),
        routing=("v1", "v2", 0, None),
        requeue=2,
    ),
    Row(
        "an abort token aborts the canary once",
        PAUSED_AT_1,
        {"phase": "Aborted", "abortedVersion": "v2", "lastAbortToken": "a1", "canary": None},
        abort="a1",
        routing=("v1", None, 0, None),
        events=("RolloutAborted",),
    ),
    Row(
        "an aborted version is not rolled out again",
        {"phase": "Aborted", "stable": "v1", "abortedVersion": "v2", "lastAbortToken": "a1"},
        {"phase": "Aborted", "stable": "v1", "canary": None},
        abort="a1",
        routing=("v1", None, 0, None),
    ),
    Row(
        "a version newer than the aborted one starts a fresh canary",
        {"phase": "Aborted", "stable": "v1", "abortedVersion": "v2", "failedChecks": 2},
        {"phase": "Paused", "canary": "v3", "failedChecks": 0, "canaryWeight": 10},
        versions=("v1", "v2", "v3"),
        ready=("v1", "v3"),
        routing=("v1", "v3", 10, None),
        events=("RolloutStarted", "WeightSet"),
    ),
    Row(
        "abort inside the rollback window rolls the promotion back",
        {
            "phase": "Healthy",
            "stable": "v2",
            "previousStable": "v1",
            "previousStableUntil": at(3600),
        },
        {"phase": "Aborted", "stable": "v1", "abortedVersion": "v2", "previousStable": None},
        now=600,
        abort="a2",
        routing=("v1", None, 0, None),
        events=("RolledBack",),
    ),
    Row(
        "the rollback window over: the previous stable leaves the routing",
        {
            "phase": "Healthy",
            "stable": "v2",
            "previousStable": "v1",
            "previousStableUntil": at(3600),
        },
        {"phase": "Healthy", "stable": "v2", "previousStable": None},
        now=3600,
        routing=("v2", None, 0, None),
    ),
    Row(
        "an abort token seen while idle is used up, not kept for the next canary",
        {"phase": "Healthy", "stable": "v1"},
        {"phase": "Paused", "canary": "v2", "lastAbortToken": "old"},
        abort="old",
        routing=("v1", "v2", 10, None),
        events=("RolloutStarted", "WeightSet"),
    ),
    Row(
        "without steps a new version is promoted once ready, preloaded as standby before",
        HEALTHY_V1,
        {"phase": "Promoting", "stable": "v1"},
        steps=[],
        ready=("v1",),
        routing=("v1", None, 0, "v2"),
        requeue=2,
    ),
    Row(
        "without steps and ready: promoted",
        HEALTHY_V1,
        {"phase": "Healthy", "stable": "v2", "previousStable": "v1"},
        steps=[],
        routing=("v2", None, 0, "v1"),
        events=("Promoted",),
    ),
    Row(
        "pinning the previous stable is a routing change",
        {
            "phase": "Healthy",
            "stable": "v2",
            "previousStable": "v1",
            "previousStableUntil": at(3600),
        },
        {"phase": "Healthy", "stable": "v1", "previousStable": "v2"},
        pinned="v1",
        routing=("v1", None, 0, "v2"),
        events=("Promoted",),
    ),
    Row(
        "pinning abandons a running canary",
        PAUSED_AT_1,
        {"phase": "Healthy", "stable": "v1", "canary": None},
        pinned="v1",
        routing=("v1", None, 0, None),
        events=("RolloutAbandoned",),
    ),
    Row(
        "a canary whose version went away ends the rollout",
        PAUSED_AT_1,
        {"phase": "Healthy", "stable": "v1", "canary": None},
        versions=("v1",),
        routing=("v1", None, 0, None),
    ),
    # A version the gateways cannot feed the features it was trained on (``unfit``).
    Row(
        "a version the gateways cannot feed never becomes the canary",
        HEALTHY_V1,
        {"phase": "Healthy", "stable": "v1", "canary": None},
        unfit=("v2",),
        routing=("v1", None, 0, None),
    ),
    Row(
        "a canary that turns unfit is aborted, all traffic back on the stable",
        PAUSED_AT_1,
        {"phase": "Aborted", "stable": "v1", "canary": None, "abortedVersion": "v2"},
        unfit=("v2",),
        routing=("v1", None, 0, None),
        events=("RolloutAborted",),
    ),
    Row(
        "the first version to serve is the newest that fits",
        {},
        {"phase": "Healthy", "stable": "v1"},
        unfit=("v2",),
        routing=("v1", None, 0, None),
        events=("Promoted",),
    ),
    Row(
        "nothing serves first when no version fits",
        {},
        {},
        unfit=("v1", "v2"),
        routing=None,
    ),
    Row(
        "an unfit stable keeps serving (the Recommender reports it)",
        HEALTHY_V1,
        {"phase": "Healthy", "stable": "v1"},
        versions=("v1",),
        unfit=("v1",),
        routing=("v1", None, 0, None),
    ),
    Row(
        "a promotion waits for no unfit version",
        {**AWAITING, "phase": "Promoting", "canary": None, "canaryWeight": 0},
        {"phase": "Healthy", "stable": "v1"},
        versions=("v1", "v2"),
        unfit=("v2",),
        routing=("v1", None, 0, None),
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_rollout_transition(row: Row) -> None:
    out = machine.step(row.inputs())
    got = out.status.to_k8s()
    for key, value in row.want.items():
        assert got.get(key) == value, f"{key}: {got.get(key)!r} != {value!r}\n{got}"
    routing = out.routing
    assert (
        (routing.stable, routing.canary, routing.weight, routing.standby) if routing else None
    ) == row.routing
    assert tuple(e[1] for e in out.events) == row.events
    assert (routing.shadow if routing else 0) == row.shadow
    if row.requeue is not None:
        assert out.requeue_after == pytest.approx(row.requeue)


def test_pinning_a_version_that_is_not_ready_keeps_the_stable_and_says_why() -> None:
    row = Row("", HEALTHY_V1, {}, pinned="v9")
    out = machine.step(row.inputs())
    assert out.status.stable == "v1"
    assert out.problem is not None
    assert "v9" in out.problem


def test_pinning_a_version_the_gateways_cannot_feed_keeps_the_stable_and_says_why() -> None:
    row = Row("", HEALTHY_V1, {}, pinned="v2", unfit=("v2",))
    out = machine.step(row.inputs())
    assert (out.status.stable, out.status.canary) == ("v1", None)
    assert out.problem is not None
    assert "v2 cannot serve: v2 was trained on features not served" in out.problem


@pytest.mark.parametrize(
    ("previous", "now", "due"),
    [
        ({}, 0, False),
        (HEALTHY_V1, 100, False),
        (PAUSED_AT_1, 29, False),
        (PAUSED_AT_1, 30, True),
        ({**PAUSED_AT_1, "lastCheckTime": at(30)}, 59, False),
        ({**PAUSED_AT_1, "lastCheckTime": at(30)}, 60, True),
        ({**AWAITING, "phase": "Promoting"}, 600, False),
    ],
)
def test_analysis_is_due_every_interval_while_a_canary_runs(
    previous: dict[str, Any], now: float, due: bool
) -> None:
    spec = Rollout.model_validate({"analysis": {"interval": "30s"}})
    status = RolloutStatus.model_validate(previous)
    assert machine.analysis_due(spec, status, T0 + dt.timedelta(seconds=now)) is due


def test_a_restarted_operator_resumes_the_same_step_with_the_same_timer() -> None:
    """Running the machine again on what it wrote changes nothing and keeps the deadline."""
    first = machine.step(Row("", HEALTHY_V1, {}, now=0).inputs())
    again = machine.step(Row("", first.status.to_k8s(), {}, now=20).inputs())
    assert again.status == first.status
    assert again.events == []
    assert again.requeue_after == pytest.approx(10)  # interval 30 s from the start, 20 s gone
