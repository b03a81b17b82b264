"""API objects as the apiserver would hand them to the operator, built in the tests themselves."""

from __future__ import annotations

from typing import Any

from recsys_operator.api.featureview import FeatureView
from recsys_operator.api.modelversion import ModelVersion
from recsys_operator.api.recommender import Recommender

NOW = "2026-11-23T12:00:00Z"
META = {"namespace": "ns", "uid": "u", "generation": 1, "creationTimestamp": NOW}


def recommender(name: str = "movies", **spec: Any) -> Recommender:
    """A Recommender with the required parts (interactions, stores) and ``spec`` on top."""
    return Recommender.model_validate(
        {
            "apiVersion": "recsys.dev/v1alpha1",
            "kind": "Recommender",
            "metadata": {**META, "name": name},
            "spec": {
                "interactions": {"path": "s3://d/i/"},
                "stores": {
                    "redis": {"url": "redis://r:6379/0"},
                    "artifacts": {"storageUri": "s3://m/"},
                },
                **spec,
            },
        }
    )


def model_version(
    name: str, recommender: str = "movies", status: dict[str, Any] | None = None, **spec: Any
) -> ModelVersion:
    """A ModelVersion of ``recommender`` with ``spec`` (camelCase keys) and ``status``."""
    doc: dict[str, Any] = {
        "apiVersion": "recsys.dev/v1alpha1",
        "kind": "ModelVersion",
        "metadata": {**META, "name": name},
        "spec": {"recommenderRef": {"name": recommender}, **spec},
    }
    if status is not None:
        doc["status"] = status
    return ModelVersion.model_validate(doc)


def feature_view(
    name: str = "users", generation: int = 1, cron_job: dict[str, Any] | None = None,
    **materialization: Any,
) -> FeatureView:  # fmt: skip
    """A user FeatureView on a parquet source, materialized ``@daily`` unless ``cron_job``."""
    return FeatureView.model_validate(
        {
            "apiVersion": "recsys.dev/v1alpha1",
            "kind": "FeatureView",
            "metadata": {**META, "name": name, "uid": "u-1", "generation": generation},
            "spec": {
                "entity": {"name": "user", "joinKeys": ["user_id"]},
                "source": {"path": "s3://d/users/"},
                "features": [{"name": "age", "dtype": "Int64"}],
                "onlineStore": {"redis": {"url": "redis://r:6379/0"}},
                "materialization": {
                    "cronJob": cron_job or {"schedule": "@daily"},
                    **materialization,
                },
            },
        }
    )
