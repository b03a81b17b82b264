"""One reconciler per kind: read the object and its children, plan, apply, write status."""

from __future__ import annotations

from recsys_operator.controller import Reconciler
from recsys_operator.reconcilers import featureview, modelversion, recommender

RECONCILERS: dict[str, Reconciler] = {
    "FeatureView": featureview.reconcile,
    "ModelVersion": modelversion.reconcile,
    "Recommender": recommender.reconcile,
}
