"""What the gateway and the Triton models agree on: model names and tensor names. Kept free of
torch and pyarrow so the gateway imports it without the models' dependencies.

Per ModelVersion ``<v>`` (named after it, so a stable and a canary version share a server):

- ``<v>.user-tower``: ``user_id`` INT64 [1], ``user_features`` BYTES [1] (optional; a JSON
  object of raw feature values, ``null`` when unknown), ``history`` INT64 [-1] (optional,
  ragged; the item ids the user interacted with, most recent first, for a model trained with
  ``historyLength`` > 0; it keeps the first ``historyLength``) → ``embedding`` FP32 [dim],
  L2-normalised (inner product with the index's item vectors is a cosine).
- ``<v>.ranker``: ``user_id``, ``user_features``, ``history`` as above, ``item_ids`` INT64
  [-1] (ragged across a batch) → ``scores`` FP32 [-1], one logit per item in the order given.
"""

from __future__ import annotations

from dataclasses import dataclass

USER_ID = "user_id"
USER_FEATURES = "user_features"
ITEM_IDS = "item_ids"
HISTORY = "history"
EMBEDDING = "embedding"
SCORES = "scores"


@dataclass(frozen=True)
class ModelNames:
    """The Triton model names of one ModelVersion."""

    user_tower: str
    ranker: str


def model_names(version: str) -> ModelNames:
    return ModelNames(f"{version}.user-tower", f"{version}.ranker")
