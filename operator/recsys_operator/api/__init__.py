"""The API of recsys-operator: FeatureView, Recommender and ModelVersion (group ``recsys.dev``,
version ``v1alpha1``) as pydantic models — the single source of truth from which ``crds/`` is
generated (``python -m recsys_operator.crdgen``) and with which the operator parses objects::

    rec = Recommender.model_validate(obj)            # a whole object from the apiserver
    spec = RecommenderSpec.model_validate(obj["spec"])
"""

from recsys_operator.api.featureview import (
    FEATURE_VIEW,
    FeatureView,
    FeatureViewSpec,
    FeatureViewStatus,
)
from recsys_operator.api.kinds import API_VERSION, CATEGORY, KindInfo, PrinterColumn
from recsys_operator.api.modelversion import (
    MODEL_VERSION,
    ModelVersion,
    ModelVersionSpec,
    ModelVersionStatus,
)
from recsys_operator.api.recommender import (
    RECOMMENDER,
    Recommender,
    RecommenderSpec,
    RecommenderStatus,
)

#: Every kind of the API, in the order their CRDs are written.
KINDS: tuple[KindInfo, ...] = (FEATURE_VIEW, RECOMMENDER, MODEL_VERSION)

__all__ = [
    "API_VERSION",
    "CATEGORY",
    "FEATURE_VIEW",
    "KINDS",
    "MODEL_VERSION",
    "RECOMMENDER",
    "FeatureView",
    "FeatureViewSpec",
    "FeatureViewStatus",
    "KindInfo",
    "ModelVersion",
    "ModelVersionSpec",
    "ModelVersionStatus",
    "PrinterColumn",
    "Recommender",
    "RecommenderSpec",
    "RecommenderStatus",
]
