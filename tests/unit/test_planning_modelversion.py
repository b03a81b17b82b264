"""The ModelVersion state machine, decided without a cluster."""

from __future__ import annotations

from typing import Any

from recsys_operator.api.modelversion import ModelVersion
from recsys_operator.api.recommender import Recommender
from recsys_operator.planning import modelversion as planner
from recsys_operator.planning.jobstatus import JobOutcome

NOW = "2026-11-23T12:00:00Z"
META = {"namespace": "ns", "uid": "u", "generation": 1, "creationTimestamp": NOW}


def rec() -> Recommender:
    return Recommender.model_validate(
        {
            "apiVersion": "recsys.dev/v1alpha1",
            "kind": "Recommender",
            "metadata": {**META, "name": "movies"},
            "spec": {
                "interactions": {"path": "s3://d/i/"},
                "training": {
                    "evaluation": {
                        "k": 20,
                        "metrics": [{"name": "recallAtK", "maxRegression": 0.05}],
                    }
                },
                "stores": {
                    "redis": {"url": "redis://r:6379/0"},
                    "artifacts": {"storageUri": "s3://m/"},
                },
            },
        }
    )


def training_mv() -> ModelVersion:
    return ModelVersion.model_validate(
        {
            "apiVersion": "recsys.dev/v1alpha1",
            "kind": "ModelVersion",
            "metadata": {**META, "name": "movies-v2"},
            "spec": {"recommenderRef": {"name": "movies"}, "reason": "Manual"},
            "status": {"phase": "Training"},
        }
    )


def trained(recall: float) -> JobOutcome:
    summary: dict[str, Any] = {
        "artifactUri": "s3://m/models/movies-v2",
        "metrics": {"twoTower.recall@20": recall},
    }
    return JobOutcome("movies-v2-train", True, True, "Succeeded", "completed", summary=summary)


def test_regression_against_the_serving_versions_headline_metrics_is_rejected() -> None:
    observed = planner.Observed(
        rec(), train=trained(0.10), baseline={"twoTower.recall@20": 0.12}, baseline_name="movies-v1"
    )
    decision = planner.decide(training_mv(), observed, NOW)
    assert decision.status["phase"] == "Rejected"
    assert (
        "recall@20=0.1000 regresses more than 5% from 0.1200 of movies-v1"
        in (decision.status["message"])
    )
    assert decision.run is None
    assert decision.events == [("Warning", "Rejected", decision.status["message"])]


def test_within_the_allowed_regression_it_goes_on_to_indexing() -> None:
    observed = planner.Observed(
        rec(),
        train=trained(0.118),
        baseline={"twoTower.recall@20": 0.12},
        baseline_name="movies-v1",
    )
    decision = planner.decide(training_mv(), observed, NOW)
    assert decision.status["phase"] == "Indexing"
    assert decision.run == "index"
    assert decision.status["evaluation"]["comparedTo"] == "movies-v1"


def test_a_failed_training_job_fails_the_version_with_the_workloads_words() -> None:
    failed = JobOutcome(
        "movies-v2-train",
        True,
        False,
        "BadInput",
        "Job movies-v2-train: column 'item_id' is missing",
    )
    decision = planner.decide(training_mv(), planner.Observed(rec(), train=failed), NOW)
    assert decision.status["phase"] == "Failed"
    assert decision.status["reason"] == "BadInput"
    assert "column 'item_id' is missing" in decision.status["message"]


def test_an_unchanged_world_decides_an_unchanged_status() -> None:
    running = JobOutcome("movies-v2-train", False, False, "Running", "the Job is running")
    first = planner.decide(training_mv(), planner.Observed(rec(), train=running), NOW)
    mv = ModelVersion.model_validate(
        {**training_mv().model_dump(by_alias=True, mode="json"), "status": first.status}
    )
    again = planner.decide(mv, planner.Observed(rec(), train=running), "2026-11-23T13:00:00Z")
    assert again.status == first.status, "a quiet reconcile must produce no write"
    assert again.events == []
