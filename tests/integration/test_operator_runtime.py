"""The operator as a process: training schedule evaluated by the operator, restart in the middle
of a lifecycle, bounded history, and Prometheus metrics."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from test_operator_lifecycle import (
    _online_store,  # noqa: F401 (autouse: the Recommender's Redis)
    apply_stack,
    index_summary,
    phase,
    rollout,
    train_summary,
    wait_phase,
    walk_to_ready,
)

from fixtures.kube import Testbed
from fixtures.operator import OperatorProcess, eventually, finish_pod, get

pytestmark = pytest.mark.testbed


def jobs(testbed: Testbed, ns: str) -> list[str]:
    out = json.loads(testbed.kubectl("get", "jobs", "-n", ns, "-o", "json").stdout)
    return sorted(j["metadata"]["name"] for j in out["items"])


def test_training_schedule_creates_a_version_per_tick(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    def every_minute(docs: list[dict[str, Any]]) -> None:
        docs[1]["spec"]["training"]["schedule"] = "* * * * *"
        docs[1]["spec"]["serving"]["rollout"] = {"steps": []}

    apply_stack(testbed, namespace, every_minute)
    rec = eventually(
        lambda: (
            (get(testbed, "recommender", "movies", namespace) or {})
            .get("status", {})
            .get("nextTrainingTime")
        ),
        60,
        "nextTrainingTime in status",
        operator=operator,
    )
    assert rec.endswith(":00Z")
    walk_to_ready(testbed, namespace, "movies-v1", 0.12, operator)
    # The next tick (at most a minute away) trains movies-v2 with reason Schedule.
    mv = eventually(
        lambda: get(testbed, "modelversion", "movies-v2", namespace),
        90,
        "a scheduled ModelVersion",
        operator=operator,
    )
    assert mv["spec"]["reason"] == "Schedule"
    assert mv["metadata"]["annotations"]["recsys.dev/trigger"].startswith("schedule/")


def test_restart_mid_training_continues_from_status_and_creates_nothing_twice(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    apply_stack(testbed, namespace)
    wait_phase(testbed, namespace, "movies-v1", "Training", operator)
    operator.kill()
    before = jobs(testbed, namespace)
    # The training pod finishes while no operator runs.
    finish_pod(
        testbed, namespace, "movies-v1-train", exit_code=0, summary=train_summary("movies-v1", 0.12)
    )
    testbed.kubectl(
        "wait", "-n", namespace, "--for=condition=Complete", "job/movies-v1-train", "--timeout=60s"
    )
    operator.start()
    wait_phase(testbed, namespace, "movies-v1", "Indexing", operator)
    finish_pod(
        testbed, namespace, "movies-v1-index", exit_code=0, summary=index_summary("movies-v1")
    )
    wait_phase(testbed, namespace, "movies-v1", "Ready", operator)
    after = jobs(testbed, namespace)
    assert after == sorted({*before, "movies-v1-index"})
    mvs = json.loads(testbed.kubectl("get", "mv", "-n", namespace, "-o", "json").stdout)["items"]
    assert [m["metadata"]["name"] for m in mvs] == ["movies-v1"]


def test_history_is_bounded_by_revision_history_limit(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    def keep_one(docs: list[dict[str, Any]]) -> None:
        docs[1]["spec"]["revisionHistoryLimit"] = 1

    apply_stack(testbed, namespace, keep_one)
    walk_to_ready(testbed, namespace, "movies-v1", 0.12, operator)
    wait_phase(testbed, namespace, "movies-v1", "Ready", operator)
    for n, token in ((2, "a"), (3, "b")):
        testbed.kubectl(
            "annotate",
            "--overwrite",
            "-n",
            namespace,
            "recommender/movies",
            f"recsys.dev/retrain={token}",
        )
        wait_phase(testbed, namespace, f"movies-v{n}", "Training", operator)
        finish_pod(
            testbed,
            namespace,
            f"movies-v{n}-train",
            exit_code=2,
            summary={"status": "Failed", "reason": "BadInput", "message": "bad data"},
        )
        wait_phase(testbed, namespace, f"movies-v{n}", "Failed", operator)
    # Two finished (Failed) versions, limit 1: the oldest goes, the serving one always stays.
    eventually(
        lambda: get(testbed, "modelversion", "movies-v2", namespace) is None,
        60,
        "movies-v2 pruned",
        operator=operator,
    )
    assert phase(testbed, namespace, "movies-v3") == "Failed"
    assert phase(testbed, namespace, "movies-v1") == "Ready"
    assert rollout(testbed, namespace)["stable"] == "movies-v1"


def test_metrics_count_reconciles_jobs_and_phases(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    apply_stack(testbed, namespace)
    wait_phase(testbed, namespace, "movies-v1", "Training", operator)

    def scrape() -> str:
        url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())

    text = eventually(
        lambda: (
            'recsys_operator_objects{kind="ModelVersion",phase="Training"} 1.0'
            in (body := scrape())
            and body
        ),
        30,
        "phase gauge",
        operator=operator,
    )
    assert 'recsys_operator_jobs_started_total{purpose="train"} 1.0' in text
    assert 'recsys_operator_reconcile_duration_seconds_count{kind="Recommender"}' in text
    assert 'recsys_operator_jobs_started_total{purpose="history"} 1.0' in text
    # the two Jobs: training movies-v1, seeding the users' histories
    assert 'recsys_operator_api_requests_total{kind="Job",verb="post"} 2.0' in text
