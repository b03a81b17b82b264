"""The ModelVersion state machine, decided without a cluster."""

from __future__ import annotations

from typing import Any

from api_objects import NOW, model_version, recommender

from recsys_contract.index import FeatureSchema, IndexSummary
from recsys_operator.api.modelversion import ModelVersion
from recsys_operator.api.recommender import Recommender
from recsys_operator.planning import modelversion as planner
from recsys_operator.planning.jobstatus import JobOutcome


def rec() -> Recommender:
    # regression only: the baseline comparison has its own table (test_planning_gate)
    gate = {
        "k": 20,
        "metrics": [{"name": "recallAtK", "maxRegression": 0.05}],
        "baseline": {"name": "none"},
    }
    return recommender(training={"evaluation": gate})


def training_mv() -> ModelVersion:
    return model_version("movies-v2", reason="Manual", status={"phase": "Training"})


def trained(recall: float) -> JobOutcome:
    summary: dict[str, Any] = {
        "status": "Succeeded",
        "artifactUri": "s3://m/models/movies-v2",
        "digest": "sha256:" + "0" * 64,
        "metrics": {"twoTower.recall@20": recall},
    }
    return JobOutcome("movies-v2-train", True, True, "Succeeded", "completed", summary=summary)


def with_status(mv: ModelVersion, decision: planner.Decision) -> ModelVersion:
    """The version as the next reconcile reads it, after the decision's status was written."""
    return ModelVersion.model_validate(
        {**mv.model_dump(by_alias=True, mode="json"), "status": decision.status.to_k8s()}
    )


def condition_types(decision: planner.Decision) -> set[str]:
    return {c["type"] for c in decision.status.to_k8s()["conditions"]}


def condition(decision: planner.Decision, type_: str) -> dict[str, Any]:
    assert type_ in condition_types(decision), f"no {type_} condition"
    return next(c for c in decision.status.to_k8s()["conditions"] if c["type"] == type_)


def evaluating(recall: float) -> ModelVersion:
    """A version whose training Job just succeeded with ``recall``."""
    decision = planner.decide(training_mv(), planner.Observed(rec(), train=trained(recall)), NOW)
    return with_status(training_mv(), decision)


def test_a_finished_training_job_enters_evaluating_with_its_metrics_kept() -> None:
    decision = planner.decide(training_mv(), planner.Observed(rec(), train=trained(0.12)), NOW)
    assert decision.status.to_k8s()["phase"] == "Evaluating"
    assert decision.status.to_k8s()["metrics"] == {"twoTower.recall@20": 0.12}
    assert decision.status.to_k8s()["trainingJob"] == "movies-v2-train"
    assert decision.run is None, "nothing to run while the gate judges"
    assert decision.events == [("Normal", "Evaluating", decision.status.to_k8s()["message"])]
    trained_cond = condition(decision, "Trained")
    assert (trained_cond["status"], trained_cond["reason"]) == ("True", "TrainingSucceeded")
    assert condition(decision, "Progressing")["status"] == "True"


def test_regression_against_the_serving_versions_headline_metrics_is_rejected() -> None:
    observed = planner.Observed(
        rec(), baseline={"twoTower.recall@20": 0.12}, baseline_name="movies-v1"
    )
    decision = planner.decide(evaluating(0.10), observed, NOW)
    assert decision.status.to_k8s()["phase"] == "Rejected"
    assert (
        "recall@20=0.1000 regresses more than 5% from 0.1200 of movies-v1"
        in (decision.status.to_k8s()["message"])
    )
    assert decision.run is None
    assert decision.events == [("Warning", "Rejected", decision.status.to_k8s()["message"])]
    evaluated = condition(decision, "Evaluated")
    assert (evaluated["status"], evaluated["reason"]) == ("False", "GateFailed")
    assert "Trained" in condition_types(decision), "earlier stages' conditions stay"


def test_within_the_allowed_regression_it_goes_on_to_indexing() -> None:
    observed = planner.Observed(
        rec(), baseline={"twoTower.recall@20": 0.12}, baseline_name="movies-v1"
    )
    decision = planner.decide(evaluating(0.118), observed, NOW)
    assert decision.status.to_k8s()["phase"] == "Indexing"
    assert decision.run == "index"
    assert decision.status.to_k8s()["evaluation"]["comparedTo"] == "movies-v1"
    assert decision.status.to_k8s()["evaluation"]["recallAtK"] == 0.118
    assert condition(decision, "Evaluated")["status"] == "True"


def index_built(name: str, **summary: Any) -> JobOutcome:
    """What the index build Job writes (``recsys_contract.index``); ``summary`` overrides."""
    built = IndexSummary(
        version=name, index_uri=f"s3://m/indexes/{name}", digest="sha256:" + "b" * 64,
        item_count=100, index_type="hnsw", ef_search=128, recall=0.99, k=10,
        model_digest="sha256:" + "0" * 64,
    )  # fmt: skip
    return JobOutcome(
        f"{name}-index",
        True,
        True,
        "Succeeded",
        "completed",
        summary={"status": "Succeeded", **built.to_wire(), **summary},
    )


def test_a_built_index_makes_the_trained_version_ready_and_indexed() -> None:
    indexing = with_status(
        evaluating(0.12), planner.decide(evaluating(0.12), planner.Observed(rec()), NOW)
    )
    decision = planner.decide(
        indexing, planner.Observed(rec(), index=index_built("movies-v2")), NOW
    )
    assert decision.status.to_k8s()["phase"] == "Ready"
    assert decision.status.to_k8s()["message"] == "trained, evaluated and indexed; ready to serve"
    indexed = condition(decision, "Indexed")
    assert indexed["status"] == "True"
    assert "recall 0.9900" in indexed["message"]
    assert condition_types(decision) == {
        "Ready",
        "Progressing",
        "Degraded",
        "Trained",
        "Evaluated",
        "Indexed",
    }


def test_the_index_builds_feature_schema_is_the_versions() -> None:
    """The schema the rollout checks serving against comes from the index build's summary;
    an older summary without one leaves it unset (the version serves unchecked)."""
    indexing = with_status(
        evaluating(0.12), planner.decide(evaluating(0.12), planner.Observed(rec()), NOW)
    )
    schema = {"user": [{"name": "age", "kind": "numeric"}], "item": []}
    ready = planner.decide(
        indexing, planner.Observed(rec(), index=index_built("movies-v2", features=schema)), NOW
    )
    st = ready.status.to_k8s()
    assert st["featureSchema"] == {"user": [{"name": "age", "kind": "numeric"}], "item": []}
    assert st["featureSchemaDigest"] == FeatureSchema.model_validate(schema).digest()
    assert st["featureSchemaDigest"].startswith("sha256:")
    unreported = planner.decide(
        indexing, planner.Observed(rec(), index=index_built("movies-v2")), NOW
    )
    assert "featureSchema" not in unreported.status.to_k8s()


def imported_mv() -> ModelVersion:
    return model_version("nb-1", storageUri="s3://notebooks/nb-1")


def test_an_imported_version_skips_training_and_the_gate_and_says_so() -> None:
    mv = imported_mv()
    first = planner.decide(mv, planner.Observed(rec()), NOW)
    assert first.status.to_k8s()["phase"] == "Indexing"
    assert first.run == "index"
    assert "skips training and the evaluation gate" in first.status.to_k8s()["message"]
    trained_cond = condition(first, "Trained")
    assert (trained_cond["status"], trained_cond["reason"]) == ("True", "Imported")
    mv = with_status(mv, first)
    ready = planner.decide(mv, planner.Observed(rec(), index=index_built("nb-1")), NOW)
    assert ready.status.to_k8s()["phase"] == "Ready"
    assert "not evaluated" in ready.status.to_k8s()["message"]
    assert "Evaluated" not in condition_types(ready), "no gate judged it"
    assert ready.status.to_k8s()["evaluation"] == {"indexRecallAtK": 0.99}
    again = planner.decide(with_status(mv, ready), planner.Observed(rec()), NOW)
    assert again.status == ready.status, "a later reconcile keeps the import's own message"


def test_a_failed_training_job_fails_the_version_with_the_workloads_words() -> None:
    failed = JobOutcome(
        "movies-v2-train",
        True,
        False,
        "BadInput",
        "Job movies-v2-train: column 'item_id' is missing",
    )
    decision = planner.decide(training_mv(), planner.Observed(rec(), train=failed), NOW)
    assert decision.status.to_k8s()["phase"] == "Failed"
    assert decision.status.to_k8s()["reason"] == "BadInput"
    assert "column 'item_id' is missing" in decision.status.to_k8s()["message"]


def test_an_unchanged_world_decides_an_unchanged_status() -> None:
    running = JobOutcome("movies-v2-train", False, False, "Running", "the Job is running")
    first = planner.decide(training_mv(), planner.Observed(rec(), train=running), NOW)
    mv = ModelVersion.model_validate(
        {**training_mv().model_dump(by_alias=True, mode="json"), "status": first.status.to_k8s()}
    )
    again = planner.decide(mv, planner.Observed(rec(), train=running), "2026-11-23T13:00:00Z")
    assert again.status == first.status, "a quiet reconcile must produce no write"
    assert again.events == []
