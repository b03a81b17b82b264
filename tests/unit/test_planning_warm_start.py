"""Which retrains start warm, and from what: one row per case of spec, reason and stable.

Warm: ``spec.training.warmStart.enabled``, a Drift or Schedule retrain, and a stable that is
Ready with an artifact. Everything else trains cold (no ``warmStart`` in the config)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from api_objects import model_version, recommender

from recsys_contract.train import Lineage, WarmStartConfig, WarmStartLineage
from recsys_operator.api.modelversion import ModelVersion, ModelVersionStatus
from recsys_operator.api.recommender import Recommender
from recsys_operator.planning.modelversion import lineage_status
from recsys_operator.planning.recommender import WARM_START_ANNOTATION, new_version
from recsys_operator.planning.training import FeatureSources, train_config, training_job
from recsys_workloads.train.config import parse_train_config

DIGEST = "sha256:" + "a" * 64
READY = {"phase": "Ready", "artifactUri": "s3://m/models/movies-v1", "digest": DIGEST}
OWNER = {"apiVersion": "recsys.dev/v1alpha1", "kind": "ModelVersion",
         "metadata": {"name": "movies-v2", "uid": "u-2"}}  # fmt: skip


def rec(warm: dict[str, Any] | None = None, **training: Any) -> Recommender:
    return recommender(training={**({"warmStart": warm} if warm is not None else {}), **training})


def mv(reason: str, **spec: Any) -> ModelVersion:
    return model_version("movies-v2", reason=reason, **spec)


def stable(status: dict[str, Any] | None = READY, name: str = "movies-v1") -> ModelVersion:
    return model_version(name, reason="Initial", status=status)


ON = {"enabled": True}
WARM_FROM_V1 = WarmStartConfig(
    artifact_uri="s3://m/models/movies-v1", version="movies-v1", digest=DIGEST,
    window_seconds=7 * 86400,
)  # fmt: skip


@pytest.mark.parametrize(
    ("case", "r", "version", "serving", "expected"),
    [
        ("off by default", rec(), mv("Drift"), stable(), None),
        ("off explicitly", rec({"enabled": False, "epochs": 2}), mv("Drift"), stable(), None),
        ("a drift retrain starts from the stable", rec(ON), mv("Drift"), stable(),
         WARM_FROM_V1),
        ("a scheduled retrain too", rec(ON), mv("Schedule"), stable(), WARM_FROM_V1),
        ("a manual retrain is the full cold retrain", rec(ON), mv("Manual"), stable(), None),
        ("the Initial version has nothing to start from", rec(ON), mv("Initial"), stable(),
         None),
        ("no stable yet", rec(ON), mv("Drift"), None, None),
        ("a stable without status", rec(ON), mv("Drift"), stable(None), None),
        ("a stable without an artifact", rec(ON), mv("Drift"),
         stable({"phase": "Ready"}), None),
        ("a stable that is not Ready", rec(ON), mv("Drift"),
         stable({**READY, "phase": "Failed"}), None),
        ("the version itself is no checkpoint", rec(ON), mv("Drift"),
         stable(name="movies-v2"), None),
        ("the window and epochs of the spec",
         rec({"enabled": True, "window": "36h", "epochs": 2}), mv("Drift"), stable(),
         WARM_FROM_V1.model_copy(update={"window_seconds": 36 * 3600, "epochs": 2})),
        ("the version's own epochs win",
         rec({"enabled": True, "epochs": 2}),
         mv("Drift", training={"hyperParameters": {"epochs": 5}}), stable(),
         WARM_FROM_V1.model_copy(update={"epochs": 5})),
        ("an imported stable's artifact and digest",
         rec(ON), mv("Schedule"),
         stable({"phase": "Ready", "artifactUri": "s3://elsewhere/v7"}, name="imported-v7"),
         WarmStartConfig(artifact_uri="s3://elsewhere/v7", version="imported-v7",
                         window_seconds=7 * 86400)),
    ],
)  # fmt: skip
def test_which_retrains_start_warm(
    case: str,
    r: Recommender,
    version: ModelVersion,
    serving: ModelVersion | None,
    expected: WarmStartConfig | None,
) -> None:
    cfg = train_config(r, version, FeatureSources(), serving)
    assert cfg.warm_start == expected, case
    # the cold epochs stay the Recommender's (a checkpoint that does not fit trains with them)
    own = version.spec.training.hyper_parameters if version.spec.training else None
    assert cfg.training.epochs == ((own.epochs if own else None) or 10)
    # what the Job reads is what the trainer parses
    assert parse_train_config(cfg.to_wire()).warm_start == expected


def test_the_training_job_config_map_carries_the_warm_start() -> None:
    plan = training_job(rec(ON), mv("Drift"), OWNER, "trainer:1", FeatureSources(), stable())
    wire = json.loads(plan.config_map["data"]["config.json"])
    assert wire["warmStart"] == {
        "artifactUri": "s3://m/models/movies-v1",
        "version": "movies-v1",
        "digest": DIGEST,
        "windowSeconds": 604800.0,
    }
    cold = training_job(rec(ON), mv("Manual"), OWNER, "trainer:1", FeatureSources(), stable())
    assert "warmStart" not in json.loads(cold.config_map["data"]["config.json"])


@pytest.mark.parametrize(
    "warm",
    [
        WarmStartLineage(
            from_version="movies-v1", from_uri="s3://m/models/movies-v1", from_digest=DIGEST,
            applied=True, since="2026-11-16T12:00:00Z", until="2026-11-23T12:00:00Z",
            interactions=1200, carried_users=900, new_users=40, carried_items=300, new_items=3,
        ),
        WarmStartLineage(
            from_version="movies-v1", from_uri="s3://m/models/movies-v1", from_digest=DIGEST,
            applied=False, reason="the checkpoint does not fit (model.embeddingDim is 32, "
            "the checkpoint's 64); trained cold on all data",
        ),
    ],
)  # fmt: skip
def test_the_summary_warm_start_lands_in_status_lineage(warm: WarmStartLineage) -> None:
    summary = Lineage(interactions_uri="s3://d/i/", interactions=5000, warm_start=warm)
    status = ModelVersionStatus.model_validate({"lineage": lineage_status(summary)})
    assert status.lineage is not None
    got = status.lineage.warm_start
    assert got is not None
    assert got.applied is warm.applied
    assert got.from_version == "movies-v1"
    assert got.reason == warm.reason
    assert got.new_users == warm.new_users
    assert got.since == warm.since


@pytest.mark.parametrize(
    ("case", "r", "reason", "serving", "pinned"),
    [
        ("a warm drift retrain pins the stable it starts from", rec(ON), "Drift", "movies-v1",
         "movies-v1"),
        ("a warm scheduled one too", rec(ON), "Schedule", "movies-v1", "movies-v1"),
        ("warm start off: nothing pinned", rec(), "Drift", "movies-v1", None),
        ("a manual retrain trains cold: nothing pinned", rec(ON), "Manual", "movies-v1", None),
        ("nothing serves yet", rec(ON), "Drift", None, None),
    ],
)  # fmt: skip
def test_the_version_a_warm_retrain_starts_from_is_fixed_at_creation(
    case: str, r: Recommender, reason: str, serving: str | None, pinned: str | None
) -> None:
    """A promotion while the retrain trains must not move its starting point (a retried pod
    reads what the first one did): the operator names it on the ModelVersion it creates."""
    obj = {"apiVersion": "recsys.dev/v1alpha1", "kind": "Recommender",
           "metadata": r.metadata.model_dump(by_alias=True)}  # fmt: skip
    made = new_version(obj, r, 2, reason, f"{reason.lower()}/x", serving)
    assert made["metadata"]["annotations"].get(WARM_START_ANNOTATION) == pinned, case
