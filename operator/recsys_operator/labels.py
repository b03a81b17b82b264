"""The labels every object the operator creates carries.

The ``app.kubernetes.io`` set lets generic tools (dashboards, ``kubectl get -l``) group them;
the ``recsys.dev`` ones let the operator and users find a Recommender's or a ModelVersion's
children without reading owner references.
"""

from __future__ import annotations

from recsys_operator import GROUP

MANAGED_BY = "recsys-operator"
RECOMMENDER_LABEL = f"{GROUP}/recommender"
MODEL_VERSION_LABEL = f"{GROUP}/model-version"
FEATURE_VIEW_LABEL = f"{GROUP}/feature-view"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def standard_labels(
    *,
    component: str,
    instance: str,
    recommender: str | None = None,
    model_version: str | None = None,
    feature_view: str | None = None,
) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": "recsys",
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }
    if recommender:
        labels[RECOMMENDER_LABEL] = recommender
    if model_version:
        labels[MODEL_VERSION_LABEL] = model_version
    if feature_view:
        labels[FEATURE_VIEW_LABEL] = feature_view
    return labels
