"""Recommender decisions without a cluster: which version serves, which conditions say so, and
what the reconciler's typed outcomes do to them. One row per case, as Argo Rollouts' tables."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from api_objects import feature_view

from recsys_operator.api.featureview import FeatureView
from recsys_operator.api.recommender import Recommender
from recsys_operator.planning import recommender as planner
from recsys_operator.planning.recommender import Plan, Problem, Version

NOW = dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC)
CREATED = "2026-11-23T10:00:00Z"
NOW_TEXT = "2026-11-23T12:00:00Z"


def rec(
    pinned: str | None = None,
    steps: bool = False,
    retrain: str | None = None,
    schedule: str | None = None,
    keep: int = 5,
) -> Recommender:
    serving: dict[str, Any] = {"rollout": {"steps": []}}
    if pinned:
        serving["pinnedModelVersion"] = pinned
    if steps:
        serving["rollout"] = {"steps": [{"setWeight": 10}, {"pause": {}}]}
    return Recommender.model_validate(
        {
            "apiVersion": "recsys.dev/v1alpha1",
            "kind": "Recommender",
            "metadata": {
                "name": "movies",
                "namespace": "ns",
                "uid": "u",
                "generation": 3,
                "creationTimestamp": CREATED,
                "annotations": {"recsys.dev/retrain": retrain} if retrain else {},
            },
            "spec": {
                "interactions": {"path": "s3://d/i/"},
                "serving": serving,
                "training": {"schedule": schedule} if schedule else {},
                "revisionHistoryLimit": keep,
                "stores": {
                    "redis": {"url": "redis://r:6379/0"},
                    "artifacts": {"storageUri": "s3://m/"},
                },
            },
        }
    )


def v(n: int, phase: str, trigger: str | None = None) -> Version:
    index = f"s3://m/indexes/movies-v{n}" if phase in planner.SERVABLE else None
    return Version(f"movies-v{n}", phase, f"2026-11-23T1{n}:00:00Z", trigger, n, index)


def plan_of(r: Recommender, versions: list[Version], stable: str | None = None) -> Plan:
    """The plan with every servable version ready to take traffic (the rollout machine's
    waits have their own table in test_planning_rollout)."""
    obj = {
        "apiVersion": "recsys.dev/v1alpha1",
        "kind": "Recommender",
        "metadata": r.metadata.model_dump(by_alias=True),
        "status": {"rollout": {"phase": "Healthy", "stable": stable}} if stable else {},
    }
    ready = frozenset(x.name for x in versions if x.phase in planner.SERVABLE)
    return planner.plan(obj, r, versions, NOW, ready=ready)


@pytest.mark.parametrize(
    ("case", "r", "versions", "stable", "want_stable", "want_canary", "want_create"),
    [
        ("no version yet: the initial one is created", rec(), [], None, None, None, 1),
        (
            "one version training: nothing to serve",
            rec(),
            [v(1, "Training", "initial")],
            None,
            None,
            None,
            0,
        ),
        (
            "the first Ready version is promoted",
            rec(),
            [v(1, "Ready", "initial")],
            None,
            "movies-v1",
            None,
            0,
        ),
        (
            "without steps a newer Ready version is promoted",
            rec(),
            [v(1, "Ready", "initial"), v(2, "Ready", "manual/x")],
            "movies-v1",
            "movies-v2",
            None,
            0,
        ),
        (
            "with steps a newer Ready version becomes the canary",
            rec(steps=True),
            [v(1, "Ready", "initial"), v(2, "Ready", "manual/x")],
            "movies-v1",
            "movies-v1",
            "movies-v2",
            0,
        ),
        (
            "a pin to a servable version wins",
            rec(pinned="movies-v1"),
            [v(1, "Ready", "initial"), v(2, "Ready", "manual/x")],
            "movies-v2",
            "movies-v1",
            None,
            0,
        ),
        (
            "a pin to a version that is not servable keeps the stable",
            rec(pinned="movies-v9"),
            [v(1, "Ready", "initial")],
            "movies-v1",
            "movies-v1",
            None,
            0,
        ),
    ],
)
def test_plan(
    case: str,
    r: Recommender,
    versions: list[Version],
    stable: str | None,
    want_stable: str | None,
    want_canary: str | None,
    want_create: int,
) -> None:
    p = plan_of(r, versions, stable)
    canary = p.routing.canary if p.routing else None
    assert (p.stable, canary, len(p.create)) == (want_stable, want_canary, want_create), case


def conditions(
    r: Recommender, versions: list[Version], p: Plan, ready: bool = True
) -> dict[str, tuple[str, str]]:
    typed = planner.status(r, {}, p, versions, ready, None, "2026-11-23T12:00:00Z")
    assert typed.observed_generation == 3
    st = typed.to_k8s()
    return {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}


SERVING = [v(1, "Ready", "initial")]  # and stable


@pytest.mark.parametrize(
    ("case", "r", "versions", "problems", "ready", "want"),
    [
        (
            "serving, nothing wrong",
            rec(),
            SERVING,
            [],
            True,
            {
                "Ready": ("True", "Serving"),
                "Degraded": ("False", "AsExpected"),
                "Progressing": ("False", "Idle"),
            },
        ),
        (
            "a refused Deployment degrades (it was a filtered message before)",
            rec(),
            SERVING,
            [Problem("ServingObjectRefused", "the API server refused Deployment x: bad")],
            False,
            {"Ready": ("False", "Deploying"), "Degraded": ("True", "ServingObjectRefused")},
        ),
        (
            "a refused history Job degrades",
            rec(),
            SERVING,
            [Problem("HistoryJobRefused", "refused")],
            True,
            {"Degraded": ("True", "HistoryJobRefused")},
        ),
        (
            "a queued training is told, not a problem",
            rec(),
            SERVING,
            [Problem("TrainingQueued", "Manual training waits", degrades=False)],
            True,
            {"Degraded": ("False", "AsExpected")},
        ),
        (
            "a failed latest version degrades",
            rec(),
            [*SERVING, v(2, "Failed", "manual/x")],
            [],
            True,
            {"Degraded": ("True", "VersionProblem"), "Ready": ("True", "Serving")},
        ),
        (
            "nothing servable",
            rec(),
            [v(1, "Training", "initial")],
            [],
            False,
            {"Ready": ("False", "NoServableVersion"), "Progressing": ("True", "InProgress")},
        ),
    ],
)
def test_status_conditions(
    case: str,
    r: Recommender,
    versions: list[Version],
    problems: list[Problem],
    ready: bool,
    want: dict[str, tuple[str, str]],
) -> None:
    p = plan_of(r, versions, "movies-v1" if versions[0].phase == "Ready" else None)
    p.problems.extend(problems)
    got = conditions(r, versions, p, ready)
    assert {k: got[k] for k in want} == want, case


def test_a_pin_that_cannot_serve_degrades_with_its_reason() -> None:
    r = rec(pinned="movies-v9")
    p = plan_of(r, SERVING, "movies-v1")
    assert conditions(r, SERVING, p)["Degraded"] == ("True", "PinnedVersionNotServable")


@pytest.mark.parametrize(
    ("case", "r", "versions", "want"),
    [
        ("no version: Initial", rec(), [], [("Initial", "initial")]),
        ("a version exists: no second Initial", rec(), [v(1, "Ready", "initial")], []),
        ("a new retrain token: Manual", rec(retrain="t1"), [v(1, "Ready", "initial")],
         [("Manual", "manual/t1")]),
        ("a token already acted on: nothing (restart safety)", rec(retrain="t1"),
         [v(1, "Ready", "initial"), v(2, "Ready", "manual/t1")], []),
        ("a token while one trains: waits (one training at a time)", rec(retrain="t2"),
         [v(1, "Ready", "initial"), v(2, "Training", "manual/t1")], []),
        ("a schedule tick since creation: Schedule", rec(schedule="0 11 * * *"),
         [v(1, "Ready", "initial")], [("Schedule", "schedule/2026-11-23T11:00:00Z")]),
        ("the same tick already trained: nothing", rec(schedule="0 11 * * *"),
         [v(1, "Ready", "initial"), v(2, "Ready", "schedule/2026-11-23T11:00:00Z")], []),
        ("no tick yet since creation: nothing", rec(schedule="0 13 * * *"),
         [v(1, "Ready", "initial")], []),
    ],
)  # fmt: skip
def test_training_triggers(
    case: str, r: Recommender, versions: list[Version], want: list[tuple[str, str]]
) -> None:
    stable = versions[0].name if versions else None
    p = plan_of(r, versions, stable)
    got = [
        (mv["spec"]["reason"], mv["metadata"]["annotations"]["recsys.dev/trigger"])
        for mv in p.create
    ]
    assert got == want, case
    if want:
        number = max((x.number for x in versions), default=0) + 1
        assert p.create[0]["metadata"]["name"] == f"movies-v{number}", case
    queued = [q for q in p.problems if q.reason == "TrainingQueued"]
    assert bool(queued) is (case.endswith("(one training at a time)")), case


def test_a_schedule_reports_its_next_tick() -> None:
    p = plan_of(rec(schedule="0 13 * * *"), [v(1, "Ready", "initial")], "movies-v1")
    assert p.next_training == dt.datetime(2026, 11, 23, 13, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("case", "keep", "versions", "stable", "pinned", "want"),
    [
        ("within the limit: nothing pruned", 2,
         [v(1, "Ready"), v(2, "Ready"), v(3, "Ready")], "movies-v3", None, []),
        ("past the limit: the oldest finished go", 1,
         [v(1, "Ready"), v(2, "Failed"), v(3, "Ready"), v(4, "Ready")], "movies-v4",
         None, ["movies-v1", "movies-v2"]),
        ("the stable is never pruned", 0, [v(1, "Ready"), v(2, "Ready")], "movies-v2",
         None, ["movies-v1"]),
        ("a pinned version is never pruned", 0, [v(1, "Ready"), v(2, "Ready")],
         "movies-v2", "movies-v1", []),
        ("versions in flight are never pruned", 0, [v(1, "Ready"), v(2, "Training")],
         "movies-v1", None, []),
    ],
)  # fmt: skip
def test_pruning(
    case: str, keep: int, versions: list[Version], stable: str, pinned: str | None,
    want: list[str],
) -> None:  # fmt: skip
    p = plan_of(rec(keep=keep, pinned=pinned), versions, stable)
    assert p.delete == want, case


def fresh_rec(limit: str | None) -> Recommender:
    r = rec()
    raw = r.model_dump(mode="json", by_alias=True, exclude_none=True)
    raw["spec"]["featureViews"] = {"user": [{"name": "users"}]}
    if limit:
        raw["spec"]["serving"]["rollout"]["maxFeatureStaleness"] = limit
    return Recommender.model_validate(raw)


def fv(
    watermark: str | None, *, max_staleness: str | None = None, ready: bool = True
) -> FeatureView:
    """A FeatureView whose live data has ``watermark`` (None: nothing live), materialized
    ``@daily``."""
    extra = {"maxStaleness": max_staleness} if max_staleness else {}
    raw = feature_view(**extra).model_dump(mode="json", by_alias=True, exclude_none=True)
    cond = {"type": "Ready", "status": "True" if ready else "False", "reason": "Scheduled",
            "message": "", "observedGeneration": 1, "lastTransitionTime": NOW_TEXT}  # fmt: skip
    raw["status"] = (
        {
            "keyspaceVersion": 1,
            "lastMaterialization": {"completionTime": NOW_TEXT, "watermark": watermark},
            "conditions": [cond],
        }
        if watermark
        else {}
    )
    return FeatureView.model_validate(raw)


@pytest.mark.parametrize(
    ("case", "limit", "views", "want"),
    [
        ("no gate", None, {}, None),
        ("fresh enough", "2h", {"users": fv("2026-11-23T11:00:00Z")}, None),
        ("too old", "30m", {"users": fv("2026-11-23T11:00:00Z")}, "lags 3600s"),
        ("the rollout's bound, not the view's own", "30m",
         {"users": fv("2026-11-23T11:00:00Z", max_staleness="6h")}, "lags 3600s"),
        ("never materialized", "2h", {"users": fv(None)}, "has no live data"),
        ("not found", "2h", {}, "does not exist"),
    ],
)  # fmt: skip
def test_a_stale_feature_view_holds_the_rollout(
    case: str, limit: str | None, views: dict[str, FeatureView], want: str | None
) -> None:
    got = planner.stale_features(fresh_rec(limit), views, NOW)
    assert (got is None) == (want is None), case
    if want:
        assert got is not None
        assert want in got, case


@pytest.mark.parametrize(
    ("case", "views", "want"),
    [
        ("not found", {}, {"name": "users", "ready": False, "stale": "Unknown"}),
        ("nothing live", {"users": fv(None)},
         {"name": "users", "ready": False, "stale": "Unknown"}),
        ("fresh", {"users": fv("2026-11-23T11:00:00Z")},
         {"name": "users", "ready": True, "stale": "False", "watermark": "2026-11-23T11:00:00Z",
          "staleAfter": "2026-11-25T00:00:00Z"}),
        ("stale by its own maxStaleness", {"users": fv("2026-11-23T11:00:00Z", max_staleness="1m")},
         {"name": "users", "ready": True, "stale": "True", "watermark": "2026-11-23T11:00:00Z",
          "staleAfter": "2026-11-23T11:01:00Z"}),
    ],
)  # fmt: skip
def test_the_recommender_shows_the_staleness_of_its_views(
    case: str, views: dict[str, FeatureView], want: dict[str, Any]
) -> None:
    r = fresh_rec(None)
    got = planner.feature_view_states(r, views, NOW)
    assert got == [want], case
    p = plan_of(r, [], None)
    first = planner.status(r, {}, p, [], False, None, NOW_TEXT, None, got)
    assert first.to_k8s()["featureViews"] == [want], case
    later = planner.status(r, first.to_k8s(), p, [], False, None, NOW_TEXT, None, got)
    assert later == first, "an unchanged view leaves the status unchanged"


# --- the features a version was trained on, against what the gateways serve -----------------


def view(name: str, features: dict[str, str]) -> FeatureView:
    raw = feature_view(name).model_dump(mode="json", by_alias=True, exclude_none=True)
    raw["spec"]["features"] = [{"name": n, "dtype": t} for n, t in features.items()]
    return FeatureView.model_validate(raw)


def reading(*refs: dict[str, Any]) -> Recommender:
    raw = rec(steps=True).model_dump(mode="json", by_alias=True, exclude_none=True)
    raw["spec"]["featureViews"] = {"user": list(refs)}
    return Recommender.model_validate(raw)


def trained(n: int, *features: tuple[str, str], phase: str = "Ready") -> Version:
    base = v(n, phase, "initial" if n == 1 else f"manual/{n}")
    return Version(**{**base.__dict__, "user_features": tuple(features)})


USERS = view("users", {"age": "Int64", "gender": "String", "tags": "Array(String)"})
AGE, GENDER, TAGS = ("age", "numeric"), ("gender", "categorical"), ("tags", "multi_hot")


@pytest.mark.parametrize(
    ("case", "r", "views", "version", "want"),
    [
        ("every feature served as trained", reading({"name": "users"}), {"users": USERS},
         trained(2, AGE, GENDER, TAGS), None),
        ("a subset of the view's features is fine", reading({"name": "users"}),
         {"users": USERS}, trained(2, AGE), None),
        ("no schema reported: not judged", reading(), {}, v(2, "Ready"), None),
        ("an id-only model needs nothing", reading(), {}, trained(2), None),
        ("a feature dropped from the ref's features",
         reading({"name": "users", "features": ["age"]}), {"users": USERS},
         trained(2, AGE, GENDER), "missing gender"),
        ("a feature dropped from the view", reading({"name": "users"}),
         {"users": view("users", {"age": "Int64"})}, trained(2, AGE, GENDER), "missing gender"),
        ("the view itself is gone", reading({"name": "users"}), {}, trained(2, AGE),
         "missing age (FeatureView users does not exist)"),
        ("a feature served with another type", reading({"name": "users"}),
         {"users": view("users", {"age": "String"})}, trained(2, AGE),
         "of another type age (trained numeric, served categorical)"),
        ("a type no encoder takes", reading({"name": "users"}),
         {"users": view("users", {"age": "Bytes"})}, trained(2, AGE),
         "age (trained numeric, served unencodable)"),
        ("found in a second user view", reading({"name": "users"}, {"name": "more"}),
         {"users": view("users", {"age": "Int64"}), "more": view("more", {"gender": "Bool"})},
         trained(2, AGE, GENDER), None),
        ("a version still training is not judged", reading(), {},
         trained(2, AGE, phase="Training"), None),
    ],
)  # fmt: skip
def test_versions_the_gateways_cannot_feed_as_trained(
    case: str, r: Recommender, views: dict[str, FeatureView], version: Version, want: str | None
) -> None:
    got = planner.unfit_versions(r, views, [version])
    if want is None:
        assert got == {}, case
    else:
        assert want in got[version.name], (case, got)
        assert "spec.featureViews.user" in got[version.name]


def test_an_unfit_canary_is_not_rolled_out_and_an_unfit_stable_degrades() -> None:
    r = reading({"name": "users", "features": ["age"]})
    versions = [trained(1, AGE), trained(2, AGE, GENDER)]
    obj = {"apiVersion": "recsys.dev/v1alpha1", "kind": "Recommender",
           "metadata": r.metadata.model_dump(by_alias=True),
           "status": {"rollout": {"phase": "Healthy", "stable": "movies-v1"}}}  # fmt: skip
    ready = frozenset({"movies-v1", "movies-v2"})
    unfit = planner.unfit_versions(r, {"users": USERS}, versions)
    p = planner.plan(obj, r, versions, NOW, ready=ready, unfit=unfit)
    assert (p.stable, p.routing and p.routing.canary) == ("movies-v1", None)
    assert [(x.reason, x.degrades) for x in p.problems] == [("FeatureSchemaMismatch", True)]
    assert p.problems[0].message.startswith("not rolled out: movies-v2 was trained on")
    # the stable's own feature dropped: it keeps serving, and the Recommender degrades
    r2 = reading({"name": "users", "features": ["gender"]})
    unfit2 = planner.unfit_versions(r2, {"users": USERS}, versions[:1])
    p2 = planner.plan(obj, r2, versions[:1], NOW, ready=ready, unfit=unfit2)
    assert p2.stable == "movies-v1"
    assert conditions(r2, versions[:1], p2)["Degraded"] == ("True", "FeatureSchemaMismatch")
