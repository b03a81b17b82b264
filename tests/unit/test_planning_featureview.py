"""FeatureView status from observed children, decided without a cluster: one row per case."""

from __future__ import annotations

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
            "scheduled, never run",
            fv(),
            CRON,
            None,
            None,
            None,
            {"Ready": ("True", "Scheduled"), "Progressing": ("False", "Idle")},
            None,
        ),
        (
            "suspended",
            fv(suspend=True),
            CRON,
            None,
            None,
            None,
            {"Ready": ("True", "Suspended")},
            None,
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
            {"Materialized": ("True", "Live"), "Degraded": ("False", "AsExpected")},
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
            {"Ready": ("False", "InvalidSpec"), "Degraded": ("True", "InvalidSpec")},
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
