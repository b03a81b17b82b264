"""The training profile: how every feature was distributed in the data the model learned from.

The drift check compares serving traffic against this, so the profile is expressed in the
*encoded* space the model sees: bin ``i`` of a feature is encoded index ``i`` (0 = missing or
unknown), with indices at or above ``PROFILE_MAX_BINS - 1`` of a long categorical vocabulary
lumped into one last "other" bin. A checker encodes the served values with the artifact's
``encoders.json`` (``FeatureSpec.encode``), calls ``bin_counts`` and compares probability
vectors (PSI, KL) bin by bin — no re-binning, no guessing at boundaries.

``profile.json`` (format 1)::

    {"format": 1, "cutoff": <us since epoch>,
     "features": {"user.age": {"entity": "user", "name": "age", "kind": "numeric",
                               "bins": ["missing", "< 20", "[20, 25)", ..., ">= 50"],
                               "boundaries": [20.0, 25.0, ...],
                               "entityRows": {"count": 940, "probabilities": [...]},
                               "interactionRows": {"count": 90000, "probabilities": [...]}},
                  ...},
     "interactions": {"count": ..., "users": ..., "items": ..., "rating": {...}},
     "scores": {"model": "ranker", "topK": 20, "candidates": 200, "users": 2000,
                "bins": ["missing", "< -1.2", ..., ">= 3.4"], "boundaries": [...],
                "distribution": {"count": 40000, "probabilities": [...]},
                "byRank": [[0, 412, ...], ...]}}

``entityRows`` weighs each entity once (its latest row before the cutoff);
``interactionRows`` weighs rows by how often they occur in training interactions, which is what
request traffic looks like. Multi-hot features count each listed value (probabilities over
values, not rows) and add a ``length`` histogram.

``scores`` (when training had a ranker) is the histogram of the model's own served scores: the
ranker's logits of the ``topK`` items it puts first among the two-tower's ``candidates``
best unseen items, for held-out users (``evaluate.served_scores``), which is what the gateway
serves and logs at its default ``candidates``/``topK``. Its bins are deciles of those logits
(a numeric feature named ``score``, binned like any other), so each holds a tenth of training.
``byRank`` has the counts per bin of each rank (the first served item's, the second's, ...):
a checker whose served lists are shorter than ``topK`` (a Recommender serving fewer items)
compares them with the same ranks of training, not with the whole top ``topK``.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from recsys_workloads.train.features import FeatureSpec

if TYPE_CHECKING:  # annotations only: the drift check imports this module without torch
    from recsys_workloads.train.dataset import EntityRows, Prepared

PROFILE_FORMAT = 1
PROFILE_MAX_BINS = 101
#: The served-score histogram: what the gateway serves at its defaults, in deciles.
SCORE_CANDIDATES = 200
SCORE_TOP_K = 20
SCORE_BINS = 10

IntArray = npt.NDArray[np.int64]


def bin_labels(spec: FeatureSpec) -> list[str]:
    if spec.kind == "numeric":
        b = spec.boundaries
        if not b:
            return ["missing", "all"]
        labels = ["missing", f"< {b[0]:g}"]
        labels += [f"[{lo:g}, {hi:g})" for lo, hi in itertools.pairwise(b)]
        labels.append(f">= {b[-1]:g}")
        return labels
    labels = ["missing", *spec.vocabulary]
    if len(labels) > PROFILE_MAX_BINS:
        labels = [*labels[: PROFILE_MAX_BINS - 1], "other"]
    return labels


def bin_counts(
    spec: FeatureSpec, encoded: IntArray, weights: npt.NDArray[np.float64] | None = None
) -> IntArray:
    """Counts per profile bin of encoded values (rows, or values of a multi-hot feature).

    A multi-hot row counts once per listed value; a row with no value counts once as missing.
    """
    n_bins = len(bin_labels(spec))
    if spec.kind != "multi_hot":
        counts = np.bincount(np.minimum(encoded, n_bins - 1), weights=weights, minlength=n_bins)
        return np.rint(counts).astype(np.int64)
    row_w = np.ones(encoded.shape[0]) if weights is None else weights
    present = encoded > 0
    w = np.where(present, row_w[:, None], 0.0)
    counts = np.bincount(
        np.minimum(encoded, n_bins - 1).ravel(), weights=w.ravel(), minlength=n_bins
    )
    counts[0] += row_w[~present.any(axis=1)].sum()
    return np.rint(counts).astype(np.int64)


def _distribution(counts: IntArray) -> dict[str, Any]:
    total = int(counts.sum())
    probs = (counts / total).tolist() if total else [0.0] * counts.size
    return {"count": total, "probabilities": [round(float(x), 8) for x in probs]}


def feature_profile(
    rows: EntityRows, spec: FeatureSpec, entity_rows: IntArray, interaction_rows: IntArray
) -> dict[str, Any]:
    encoded = rows.features[spec.name]
    out: dict[str, Any] = {
        "entity": rows.encoder.entity,
        "name": spec.name,
        "kind": spec.kind,
        "bins": bin_labels(spec),
        "entityRows": _distribution(bin_counts(spec, encoded[entity_rows])),
    }
    occurrences = np.bincount(interaction_rows, minlength=encoded.shape[0])
    used = np.flatnonzero(occurrences)
    out["interactionRows"] = _distribution(
        bin_counts(spec, encoded[used], occurrences[used].astype(np.float64))
    )
    if spec.kind == "multi_hot":
        lengths = (encoded[entity_rows] > 0).sum(axis=1)
        out["length"] = {
            str(n): int(c) for n, c in enumerate(np.bincount(lengths, minlength=1)) if c
        }
    if spec.kind == "numeric":
        out["boundaries"] = list(spec.boundaries)
    return out


def score_spec(boundaries: list[float]) -> FeatureSpec:
    """The served score as a numeric feature: bins and encoding like any other."""
    return FeatureSpec("score", "numeric", boundaries=tuple(boundaries))


def score_profile(
    scores: npt.NDArray[np.float64],
    ranks: IntArray,
    *,
    users: int,
    top_k: int,
    candidates: int,
) -> dict[str, Any] | None:
    """The ``scores`` entry: deciles of the served-like logits (each at its 0-based rank) and
    their histogram, overall and per rank."""
    ok = np.isfinite(scores)
    finite, ranks = scores[ok], ranks[ok]
    if finite.size == 0:
        return None
    qs = np.quantile(finite, np.arange(1, SCORE_BINS) / SCORE_BINS)
    spec = score_spec([round(float(b), 6) for b in np.unique(qs)])
    encoded = spec.encode(pa.array(finite, pa.float64()))
    by_rank = [bin_counts(spec, encoded[ranks == r]).tolist() for r in range(top_k)]
    return {
        "model": "ranker",
        "topK": top_k,
        "candidates": candidates,
        "users": users,
        "bins": bin_labels(spec),
        "boundaries": list(spec.boundaries),
        "distribution": _distribution(bin_counts(spec, encoded)),
        "byRank": by_rank,
    }


def build_profile(p: Prepared, scores: dict[str, Any] | None = None) -> dict[str, Any]:
    features: dict[str, Any] = {}
    for rows, train_rows in ((p.users, p.train_user_row), (p.items, p.train_item_row)):
        if not rows.features:
            continue
        latest = rows.rows_as_of(np.unique(rows.keys), p.split.cutoff_us)
        latest = latest[latest != rows.missing_row]
        for spec in rows.encoder.features:
            features[f"{rows.encoder.entity}.{spec.name}"] = feature_profile(
                rows, spec, latest, train_rows
            )
    # what the model was trained on: a warm start's window, not the older context
    train = p.trained
    ratings, rating_counts = np.unique(train.ratings, return_counts=True)
    item_counts = np.bincount(p.train_item_idx)
    out: dict[str, Any] = {
        "format": PROFILE_FORMAT,
        "cutoff": int(p.split.cutoff_us),
        "features": features,
        "interactions": {
            "count": len(train),
            "users": int(np.unique(train.user_ids).size),
            "items": int(np.unique(train.item_ids).size),
            "firstTime": int(train.times_us.min()),
            "lastTime": int(train.times_us.max()),
            "rating": {
                f"{r:g}": int(c) for r, c in zip(ratings[:50], rating_counts[:50], strict=True)
            },
            "itemCountQuantiles": {
                q: float(np.quantile(item_counts[item_counts > 0], float(q)))
                for q in ("0.5", "0.9", "0.99")
            },
        },
    }
    if scores is not None:
        out["scores"] = scores
    return out
