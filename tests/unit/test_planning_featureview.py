"""FeatureView status from observed children, decided without a cluster: one row per case."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from api_objects import feature_view

from recsys_contract.materialize import MaterializeSummary
from recsys_operator.api.featureview import FeatureView
from recsys_operator.planning import featureview as planner
from recsys_operator.planning.jobstatus import JobOutcome

NOW = "2026-11-23T12:00:00Z"
CRON: dict[str, Any] = {"metadata": {"name": "users-materialize"}}


def fv(suspend: bool = False) -> FeatureView:
    return feature_view(generation=2, cron_job={"schedule": "@daily", "suspend": suspend})


def run(name: str, *, finished: bool = True, ok: bool = True, version: int = 3) -> JobOutcome:
    summary = (
        MaterializeSummary(
            feature_view="ns.users", mode="full", mode_reason="no live version yet",
            as_of=NOW, watermark=NOW, rows_read=943, entities_written=943, read_seconds=1.0,
            write_seconds=1.0, rows_per_second=943, version=version, layers=[version],
        ).to_wire()
        if ok
        else {}
    )  # fmt: skip
    return JobOutcome(
        name,
        finished,
        ok,
        "Succeeded" if ok else "BadInput",
        "done" if ok else "column age is missing",
        start_time="2026-11-23T11:00:00Z",
        completion_time=f"2026-11-23T11:0{version}:00Z" if finished else None,
        summary=summary if finished else {},
    )


@pytest.mark.parametrize(
    ("case", "view", "cron", "last_run", "backfill", "error", "want", "live"),
    [
        (
            "the CronJob is not there yet",
            fv(),
            None,
            None,
            None,
            None,
            {"Ready": ("False", "Creating"), "Materialized": ("False", "NoRunYet")},
            None,
        ),
        (
            "scheduled, never run: not Ready, staleness unknown",
            fv(),
            CRON,
            None,
            None,
            None,
            {
                "Ready": ("False", "NotMaterialized"),
                "Progressing": ("False", "Idle"),
                "Stale": ("Unknown", "NotLive"),
            },
            None,
        ),
        (
            "suspended, never run",
            fv(suspend=True),
            CRON,
            None,
            None,
            None,
            {"Ready": ("False", "NotMaterialized")},
            None,
        ),
        (
            "suspended with data live",
            fv(suspend=True),
            CRON,
            run("r"),
            None,
            None,
            {"Ready": ("True", "Suspended")},
            3,
        ),
        (
            "a scheduled run done: Ready and fresh",
            fv(),
            CRON,
            run("r"),
            None,
            None,
            {"Ready": ("True", "Scheduled"), "Stale": ("False", "WithinLimit")},
            3,
        ),
        (
            "a backfill running",
            fv(),
            CRON,
            None,
            run("b", finished=False),
            None,
            {"Progressing": ("True", "Materializing")},
            None,
        ),
        (
            "a backfill done: its keyspace is live",
            fv(),
            CRON,
            None,
            run("b"),
            None,
            {
                "Ready": ("True", "Scheduled"),
                "Materialized": ("True", "Live"),
                "Degraded": ("False", "AsExpected"),
            },
            3,
        ),
        (
            "the newer of run and backfill wins",
            fv(),
            CRON,
            run("r", version=5),
            run("b"),
            None,
            {"Materialized": ("True", "Live")},
            5,
        ),
        (
            "a failed run degrades with the workload's reason",
            fv(),
            CRON,
            run("r", ok=False),
            None,
            None,
            {"Ready": ("False", "MaterializationFailed"), "Degraded": ("True", "BadInput")},
            None,
        ),
        (
            "an invalid spec says so everywhere",
            fv(),
            CRON,
            None,
            None,
            planner.SpecError("spec.source.path", "must be a parquet URI"),
            {
                "Ready": ("False", "InvalidSpec"),
                "Degraded": ("True", "InvalidSpec"),
                "Stale": ("Unknown", "NotLive"),
            },
            None,
        ),
    ],
)
def test_status(
    case: str,
    view: FeatureView,
    cron: dict[str, Any] | None,
    last_run: JobOutcome | None,
    backfill: JobOutcome | None,
    error: planner.SpecError | None,
    want: dict[str, tuple[str, str]],
    live: int | None,
) -> None:
    typed = planner.status(
        view,
        previous={},
        cron_job=cron,
        last_run=last_run,
        last_backfill=backfill,
        spec_error=error,
        now=NOW,
    )
    st = typed.to_k8s()
    assert typed.observed_generation == 2, case
    got = {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}
    assert {k: got[k] for k in want} == want, case
    assert st.get("keyspaceVersion") == live, case


def test_equal_input_gives_an_equal_status_so_a_quiet_pass_writes_nothing() -> None:
    args: dict[str, Any] = {
        "cron_job": CRON,
        "last_run": run("r"),
        "last_backfill": None,
        "spec_error": None,
    }
    first = planner.status(fv(), previous={}, now=NOW, **args)
    later = planner.status(fv(), previous=first.to_k8s(), now="2026-11-23T13:00:00Z", **args)
    assert later == first, "condition times move only on a transition"


def status_after(previous: dict[str, Any], **observed: Any) -> Any:
    args: dict[str, Any] = {"cron_job": CRON, "last_run": None, "last_backfill": None,
                            "spec_error": None} | observed  # fmt: skip
    return planner.status(fv(), previous=previous, now=NOW, **args)


@pytest.mark.parametrize(
    ("case", "before", "observed", "want"),
    [
        ("nothing finished: no Event", {}, {}, []),
        ("a run finished: Materialized", {}, {"last_run": run("r")}, ["Materialized"]),
        ("the same run on a later write: told once", {"last_run": run("r")},
         {"last_run": run("r")}, []),
        ("a run failed: MaterializationFailed", {}, {"last_run": run("r", ok=False)},
         ["MaterializationFailed"]),
        ("the same failure again: told once", {"last_run": run("r", ok=False)},
         {"last_run": run("r", ok=False)}, []),
        ("the spec turned invalid: InvalidSpec", {},
         {"spec_error": planner.SpecError("spec.ttl", "too long")}, ["InvalidSpec"]),
    ],
)  # fmt: skip
def test_events(
    case: str, before: dict[str, Any], observed: dict[str, Any], want: list[str]
) -> None:
    previous = status_after({}, **before).to_k8s() if before else {}
    now = status_after(previous, **observed)
    outcomes = (observed.get("last_run"), observed.get("last_backfill"))
    got = [reason for _, reason, _ in planner.events(previous, now, *outcomes)]
    assert got == want, case


def live_view(
    watermark: str | None,
    *,
    schedule: str = "@daily",
    time_zone: str | None = None,
    max_staleness: str | None = None,
    version: int | None = 3,
) -> FeatureView:
    """A FeatureView whose status says a run with ``watermark`` made keyspace ``version``
    live (None: no run reported a watermark, or none made a keyspace live)."""
    cron: dict[str, Any] = {"schedule": schedule} | ({"timeZone": time_zone} if time_zone else {})
    extra = {"maxStaleness": max_staleness} if max_staleness else {}
    view = feature_view(cron_job=cron, **extra)
    run: dict[str, Any] = {"jobName": "users-materialize-1", "completionTime": NOW}
    status: dict[str, Any] = {"lastMaterialization": run | ({"watermark": watermark} if watermark
                                                              else {})}  # fmt: skip
    if version is not None:
        status["keyspaceVersion"] = version
    raw = view.model_dump(mode="json", by_alias=True, exclude_none=True) | {"status": status}
    return FeatureView.model_validate(raw)


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


@pytest.mark.parametrize(
    ("case", "view", "bound", "want"),
    [
        ("never run", feature_view(), None, ("NotLive", None, None)),
        ("live, but the run reported no watermark", live_view(None), None,
         ("NotLive", None, None)),
        ("a watermark, but no keyspace live", live_view("2026-11-23T11:00:00Z", version=None),
         None, ("NotLive", None, None)),
        ("@daily: until the second midnight after the watermark",
         live_view("2026-11-23T00:00:05Z"), None,
         ("WithinLimit", 2 * 86400 - 5, "2026-11-25T00:00:00Z")),
        ("@daily: two midnights passed", live_view("2026-11-21T00:00:05Z"), None,
         ("PastLimit", 2 * 86400 - 5, "2026-11-23T00:00:00Z")),
        ("*/30: stale at the second tick, exactly at it",
         live_view("2026-11-23T11:00:00Z", schedule="*/30 * * * *"), None,
         ("PastLimit", 3600, "2026-11-23T12:00:00Z")),
        ("*/30: a run at 11:30 holds until 12:30",
         live_view("2026-11-23T11:30:01Z", schedule="*/30 * * * *"), None,
         ("WithinLimit", 3599, "2026-11-23T12:30:00Z")),
        ("weekdays only: Friday's run holds over the weekend until Tuesday's run is due",
         live_view("2026-11-20T09:00:10Z", schedule="0 9 * * 1-5"), None,
         ("WithinLimit", 4 * 86400 - 10, "2026-11-24T09:00:00Z")),
        ("the schedule's time zone (09:00 in Berlin is 08:00 UTC in November)",
         live_view("2026-11-22T08:00:10Z", schedule="0 9 * * *", time_zone="Europe/Berlin"),
         None, ("WithinLimit", 2 * 86400 - 10, "2026-11-24T08:00:00Z")),
        ("maxStaleness: past it", live_view("2026-11-23T11:00:00Z", max_staleness="30m"), None,
         ("PastLimit", 1800, "2026-11-23T11:30:00Z")),
        ("maxStaleness: within it", live_view("2026-11-23T11:00:00Z", max_staleness="6h"), None,
         ("WithinLimit", 21600, "2026-11-23T17:00:00Z")),
        ("a watermark with a fraction of a second",
         live_view("2026-11-23T11:30:00.25Z", max_staleness="1h"), None,
         ("WithinLimit", 3600, "2026-11-23T12:30:00.250000Z")),
        ("the rollout's bound replaces maxStaleness",
         live_view("2026-11-23T11:00:00Z", max_staleness="6h"), "10m",
         ("PastLimit", 600, "2026-11-23T11:10:00Z")),
    ],
)  # fmt: skip
def test_freshness(
    case: str, view: FeatureView, bound: str | None, want: tuple[str, float | None, str | None]
) -> None:
    f = planner.freshness(view, at(NOW), bound)
    reason, limit, stale_after = want
    assert (f.reason, f.limit_seconds) == (reason, limit), case
    assert (planner.rfc3339(f.stale_after) if f.stale_after else None) == stale_after, case
    assert f.fresh == (reason == "WithinLimit"), case
    if f.watermark is not None:
        assert f.lag_seconds(at(NOW)) == (at(NOW) - f.watermark).total_seconds()


def materialized(watermark: str, version: int, completion: str, name: str) -> JobOutcome:
    summary = MaterializeSummary(
        feature_view="ns.users", mode="incremental", mode_reason="rows after the watermark",
        as_of=watermark, watermark=watermark, rows_read=10, entities_written=10,
        read_seconds=1.0, write_seconds=1.0, rows_per_second=10, version=version,
        layers=[version],
    ).to_wire()  # fmt: skip
    return JobOutcome(name, True, True, "Succeeded", "completed", watermark, completion, summary)


def test_a_failed_run_keeps_the_live_watermark_and_its_staleness() -> None:
    view = feature_view(cron_job={"schedule": "*/30 * * * *"})
    first = planner.status(
        view, previous={}, cron_job=CRON, last_backfill=None, spec_error=None,
        last_run=materialized("2026-11-23T11:00:00Z", 4, "2026-11-23T11:01:00Z", "r1"),
        now="2026-11-23T11:02:00Z",
    ).to_k8s()  # fmt: skip
    assert first["staleness"] == {
        "watermark": "2026-11-23T11:00:00Z",
        "limitSeconds": 3600.0,
        "staleAfter": "2026-11-23T12:00:00Z",
    }
    later = planner.status(
        view, previous=first, cron_job=CRON, last_backfill=None, spec_error=None,
        last_run=run("r2", ok=False), now="2026-11-23T12:05:00Z",
    ).to_k8s()  # fmt: skip
    assert later["lastMaterialization"] == first["lastMaterialization"]
    assert later["keyspaceVersion"] == 4
    assert later["staleness"] == first["staleness"]
    got = {c["type"]: (c["status"], c["reason"]) for c in later["conditions"]}
    assert got["Stale"] == ("True", "PastLimit")
    assert got["Ready"] == ("False", "MaterializationFailed")


def test_an_older_backfill_does_not_replace_a_newer_run() -> None:
    """A scheduled run newer than the backfill is live; while the next run's Job runs (so the
    newest run Job says nothing finished), the finished backfill must not win back."""
    view = feature_view(cron_job={"schedule": "*/30 * * * *"})
    backfill = materialized("2026-01-01T00:00:00Z", 2, "2026-11-23T10:00:00Z", "bf")
    newer = planner.status(
        view, previous={}, cron_job=CRON, spec_error=None, last_backfill=backfill,
        last_run=materialized("2026-11-23T11:00:00Z", 3, "2026-11-23T11:01:00Z", "r1"),
        now="2026-11-23T11:02:00Z",
    ).to_k8s()  # fmt: skip
    assert newer["keyspaceVersion"] == 3
    running = planner.status(
        view, previous=newer, cron_job=CRON, spec_error=None, last_backfill=backfill,
        last_run=run("r2", finished=False), now="2026-11-23T11:31:00Z",
    ).to_k8s()  # fmt: skip
    assert running["keyspaceVersion"] == 3
    assert running["lastMaterialization"]["jobName"] == "r1"
    assert running["staleness"]["watermark"] == "2026-11-23T11:00:00Z"
    assert running["lastBackfill"]["jobName"] == "bf"


@pytest.mark.parametrize(
    ("case", "now", "want"),
    [
        ("within the limit: no Event", "2026-11-23T11:10:00Z", []),
        ("past the limit: Stale, once", "2026-11-23T12:10:00Z", ["Stale"]),
    ],
)
def test_turning_stale_is_told_once(case: str, now: str, want: list[str]) -> None:
    view = feature_view(cron_job={"schedule": "*/30 * * * *"})
    done = materialized("2026-11-23T11:00:00Z", 4, "2026-11-23T11:01:00Z", "r1")
    args: dict[str, Any] = {"cron_job": CRON, "last_run": done, "last_backfill": None,
                            "spec_error": None}  # fmt: skip
    first = planner.status(view, previous={}, now="2026-11-23T11:02:00Z", **args).to_k8s()
    turned = planner.status(view, previous=first, now=now, **args)
    got = [reason for _, reason, _ in planner.events(first, turned, done)]
    assert got == want, case
    again = planner.status(view, previous=turned.to_k8s(), now=now, **args)
    assert again == turned, "a later pass at the same verdict writes nothing"
    assert planner.events(turned.to_k8s(), again, done) == []
