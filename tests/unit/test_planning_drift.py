"""Drift decisions without a cluster: each finished check counted once, breaches in a row,
cooldown, Alert against Retrain, and the retraining asked for exactly once. One row per case."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from api_objects import recommender

from recsys_contract.drift import DriftConfig
from recsys_operator.api.recommender import Recommender
from recsys_operator.planning import drift as planner
from recsys_operator.planning import recommender as rec_planner
from recsys_operator.planning.jobstatus import JobOutcome
from recsys_operator.planning.recommender import Version

NOW = dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC)
OWNER = {"apiVersion": "recsys.dev/v1alpha1", "kind": "Recommender",
         "metadata": {"name": "movies", "uid": "u-1"}}  # fmt: skip


def rec(**drift: Any) -> Recommender:
    return recommender(drift={"schedule": "0 * * * *", "cooldown": "6h", **drift})


def check(name: str, drifted: bool = True, judged: bool = True, ok: bool = True) -> JobOutcome:
    features = [
        {"name": "user.age", "value": 0.31 if drifted else 0.02, "drifted": drifted},
        {"name": "user.gender", "value": 0.004, "drifted": False},
    ]
    summary: dict[str, Any] = {
        "status": "Succeeded", "judged": judged, "drifted": drifted and judged, "method": "PSI",
        "threshold": 0.2, "features": features if judged else [],
        "driftedFeatures": ["user.age"] if drifted and judged else [],
    }  # fmt: skip
    if not judged:
        summary["reason"] = "InsufficientSample: 3 served entries, at least 100 needed"
    return JobOutcome(
        name, True, ok, "Succeeded" if ok else "BadInput", "done" if ok else "no profile.json",
        completion_time="2026-11-23T11:59:00Z", summary=summary if ok else {},
    )  # fmt: skip


RUNNING = JobOutcome("movies-drift-3", False, False, "Running", "running")
ONE = {"lastCheckJob": "movies-drift-1", "consecutiveBreaches": 1}


@pytest.mark.parametrize(
    ("case", "r", "previous", "job", "breaches", "condition", "events", "retrain"),
    [
        ("no check yet", rec(), None, None, None, None, [], None),
        ("a check running: nothing changes", rec(), ONE, RUNNING, 1, None, [], None),
        ("the same check again: counted once", rec(), ONE, check("movies-drift-1"), 1, None,
         [], None),
        ("no drift: breaches reset", rec(), ONE, check("movies-drift-2", drifted=False), 0,
         ("False", "NoDrift"), [], None),
        ("first drifted check of two", rec(), None, check("movies-drift-1"), 1,
         ("True", "FeaturesDrifted"), ["DriftDetected"], None),
        ("second in a row: retrain", rec(), ONE, check("movies-drift-2"), 2,
         ("True", "FeaturesDrifted"), ["DriftDetected", "DriftRetrain"], "drift/movies-drift-2"),
        ("one check suffices when asked", rec(consecutiveChecks=1), None,
         check("movies-drift-1"), 1, ("True", "FeaturesDrifted"),
         ["DriftDetected", "DriftRetrain"], "drift/movies-drift-1"),
        ("Alert only tells", rec(action="Alert"), ONE, check("movies-drift-2"), 2,
         ("True", "FeaturesDrifted"), ["DriftDetected"], None),
        ("inside the cooldown: no retrain", rec(),
         ONE | {"lastActionTime": "2026-11-23T10:00:00Z"}, check("movies-drift-2"), 2,
         ("True", "FeaturesDrifted"), ["DriftDetected"], None),
        ("after the cooldown: retrain", rec(),
         ONE | {"lastActionTime": "2026-11-23T05:00:00Z"}, check("movies-drift-2"), 2,
         ("True", "FeaturesDrifted"), ["DriftDetected", "DriftRetrain"], "drift/movies-drift-2"),
        ("a failed check: Unknown, counts kept", rec(), ONE, check("movies-drift-2", ok=False), 1,
         ("Unknown", "CheckFailed"), ["DriftCheckFailed"], None),
        ("too few served entries: Unknown", rec(), ONE, check("movies-drift-2", judged=False), 1,
         ("Unknown", "NotJudged"), [], None),
        ("a retraining asked for stays asked until made", rec(),
         ONE | {"retrainTrigger": "drift/movies-drift-1"}, RUNNING, 1, None, [],
         "drift/movies-drift-1"),
        ("drift unset: no status", recommender(), ONE, check("movies-drift-2"), None, None, [],
         None),
    ],
)  # fmt: skip
def test_decide(
    case: str,
    r: Recommender,
    previous: dict[str, Any] | None,
    job: JobOutcome | None,
    breaches: int | None,
    condition: tuple[str, str] | None,
    events: list[str],
    retrain: str | None,
) -> None:
    d = planner.decide(r, previous, job, NOW)
    assert (d.status or {}).get("consecutiveBreaches") == breaches, case
    assert (d.condition[:2] if d.condition else None) == condition, case
    assert [reason for _, reason, _ in d.events] == events, case
    assert d.retrain == retrain, case
    if job is not None and job.finished and d.status is not None:
        assert d.status["lastCheckJob"] == job.name, case


def test_a_drifted_condition_names_the_features() -> None:
    d = planner.decide(rec(), ONE, check("movies-drift-2"), NOW)
    assert d.condition is not None
    assert "user.age (0.310)" in d.condition[2]
    assert "user.gender" not in d.condition[2]
    assert d.status is not None
    assert d.status["scores"] == {"user.age": 0.31, "user.gender": 0.004}
    assert d.status["driftedFeatures"] == ["user.age"]


def test_a_made_retraining_is_forgotten() -> None:
    asked = ONE | {"retrainTrigger": "drift/movies-drift-1"}
    d = planner.decide(rec(), asked, None, NOW, frozenset({"drift/movies-drift-1"}))
    assert d.retrain is None
    assert "retrainTrigger" not in (d.status or {})


def version(n: int, phase: str, trigger: str) -> Version:
    return Version(f"movies-v{n}", phase, f"2026-11-23T1{n}:00:00Z", trigger, n, "s3://i")


@pytest.mark.parametrize(
    ("case", "versions", "created"),
    [
        ("asked and nothing training: a Drift version", [version(1, "Serving", "initial")],
         [("Drift", "drift/movies-drift-2")]),
        ("already made: nothing twice", [version(1, "Serving", "initial"),
                                         version(2, "Training", "drift/movies-drift-2")], []),
        ("another training runs: it waits", [version(1, "Serving", "initial"),
                                             version(2, "Training", "manual/x")], []),
        ("training suspended: none", [version(1, "Serving", "initial")], []),
    ],
)  # fmt: skip
def test_the_recommender_trains_for_drift_once(
    case: str, versions: list[Version], created: list[tuple[str, str]]
) -> None:
    r = rec()
    if "suspended" in case:
        r = recommender(drift={"schedule": "0 * * * *"}, training={"suspend": True})
    obj = {"apiVersion": "recsys.dev/v1alpha1", "kind": "Recommender",
           "metadata": r.metadata.model_dump(by_alias=True), "status": {}}  # fmt: skip
    p = rec_planner.plan(obj, r, versions, NOW, "drift/movies-drift-2")
    got = [(m["spec"]["reason"], m["metadata"]["annotations"]["recsys.dev/trigger"])
           for m in p.create]  # fmt: skip
    assert got == created, case


def test_the_drift_cronjob_checks_the_stable_version() -> None:
    r = rec(method="KL", threshold=0.05, sampleSize=5000, features=["age"], suspend=True)
    config_map, cron = planner.drift_objects(r, OWNER, "img", "movies-v3", "s3://m/movies-v3")
    cfg = DriftConfig.model_validate(json.loads(config_map["data"]["config.json"]))
    assert (cfg.model_version, cfg.model_artifact_uri) == ("movies-v3", "s3://m/movies-v3")
    assert (cfg.method, cfg.threshold, cfg.sample_size, cfg.features) == ("KL", 0.05, 5000, ["age"])
    assert cfg.recommender == "ns.movies"
    spec = cron["spec"]
    assert (spec["schedule"], spec["suspend"], spec["concurrencyPolicy"]) == (
        "0 * * * *", True, "Forbid")  # fmt: skip
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"][-1] == "recsys_workloads.drift"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert spec["jobTemplate"]["metadata"]["labels"]["app.kubernetes.io/component"] == "drift"
    assert planner.drift_objects(recommender(), OWNER, "img", "v", "s3://x") == []
