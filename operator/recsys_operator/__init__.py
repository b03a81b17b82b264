"""recsys-operator: a kopf operator that runs a recommender system as a closed loop."""

GROUP = "recsys.dev"
VERSION = "v1alpha1"
