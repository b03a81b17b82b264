"""Scoring with a loaded model artifact, from raw feature values as the online store holds them.

The one place where serving turns ``{"age": [24], "gender": ["M"], ...}`` into tower inputs, so
the gateway and the Triton python backend cannot drift from training: the same
``FeatureSpec.encode`` with the artifact's vocabularies and boundaries, index 0 for anything
unknown or absent (a feature missing from the request counts as missing, not as an error).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import torch

from recsys_workloads.train.export import LoadedModel
from recsys_workloads.train.features import EntityEncoder
from recsys_workloads.train.models import HISTORY

Encoded = tuple[npt.NDArray[np.int64], dict[str, npt.NDArray[np.int64]]]


def encode(
    encoder: EntityEncoder, ids: Sequence[int], features: Mapping[str, Sequence[Any]]
) -> Encoded:
    """Id indices and per-feature index arrays for ``len(ids)`` entities.

    ``features[name]`` holds one raw value per entity (None for missing); multi-hot values are
    lists of strings.
    """
    n = len(ids)
    id_idx = encoder.ids.encode(np.asarray(ids, dtype=np.int64))
    out: dict[str, npt.NDArray[np.int64]] = {}
    for spec in encoder.features:
        values = features.get(spec.name)
        if values is None:
            shape = (n, spec.max_len) if spec.kind == "multi_hot" else (n,)
            out[spec.name] = np.zeros(shape, dtype=np.int64)
            continue
        if len(values) != n:
            raise ValueError(f"feature {spec.name!r}: {len(values)} values for {n} ids")
        if spec.kind == "multi_hot":
            column = pa.array(list(values), pa.list_(pa.string()))
        elif spec.kind == "numeric":
            column = pa.array(list(values), pa.float64())
        else:
            column = pa.array([None if v is None else str(v) for v in values], pa.string())
        out[spec.name] = spec.encode(column)
    return id_idx, out


def encode_history(
    model: LoadedModel, n: int, history: Sequence[Sequence[int]] | None
) -> npt.NDArray[np.int64]:
    """Each user's recent item ids (most recent first) as item indices, cut and 0-padded."""
    length = model.shape.history_length
    out = np.zeros((n, length), dtype=np.int64)
    if history is None or not length:
        return out
    if len(history) != n:
        raise ValueError(f"history: {len(history)} lists for {n} users")
    for row, items in enumerate(history):
        recent = np.asarray(list(items)[:length], dtype=np.int64)
        out[row, : recent.size] = model.item_encoder.ids.encode(recent)
    return out


def _user_inputs(
    model: LoadedModel,
    ids: Sequence[int],
    features: Mapping[str, Sequence[Any]],
    history: Sequence[Sequence[int]] | None,
) -> Encoded:
    idx, feats = encode(model.user_encoder, ids, features)
    if model.shape.history_length:
        feats[HISTORY] = encode_history(model, len(ids), history)
    return idx, feats


def _tensors(
    encoded: Encoded, device: torch.device
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    ids, feats = encoded
    return torch.as_tensor(ids, device=device), {
        k: torch.as_tensor(v, device=device) for k, v in feats.items()
    }


@torch.no_grad()
def user_vectors(
    model: LoadedModel,
    ids: Sequence[int],
    features: Mapping[str, Sequence[Any]],
    history: Sequence[Sequence[int]] | None = None,
) -> npt.NDArray[np.float32]:
    """User tower output (L2-normalised): the query vectors for the item index.

    ``history``: per user, the item ids they interacted with, most recent first (used when
    the model was trained with ``historyLength`` > 0; None means no history).
    """
    device = next(model.two_tower.parameters()).device
    idx, feats = _tensors(_user_inputs(model, ids, features, history), device)
    return np.asarray(model.two_tower.user_tower(idx, feats).float().cpu().numpy(), np.float32)


@torch.no_grad()
def item_vectors(
    model: LoadedModel, ids: Sequence[int], features: Mapping[str, Sequence[Any]]
) -> npt.NDArray[np.float32]:
    device = next(model.two_tower.parameters()).device
    idx, feats = _tensors(encode(model.item_encoder, ids, features), device)
    return np.asarray(model.two_tower.item_tower(idx, feats).float().cpu().numpy(), np.float32)


@torch.no_grad()
def rank(
    model: LoadedModel,
    user_ids: Sequence[int],
    user_features: Mapping[str, Sequence[Any]],
    item_ids: Sequence[int],
    item_features: Mapping[str, Sequence[Any]],
    user_history: Sequence[Sequence[int]] | None = None,
) -> npt.NDArray[np.float32]:
    """Ranker logits for (user, item) pairs: element i scores user_ids[i] with item_ids[i]."""
    device = next(model.ranker.parameters()).device
    user_inputs = _user_inputs(model, user_ids, user_features, user_history)
    u_idx, u_feats = _tensors(user_inputs, device)
    i_idx, i_feats = _tensors(encode(model.item_encoder, item_ids, item_features), device)
    return np.asarray(
        model.ranker(u_idx, u_feats, i_idx, i_feats).float().cpu().numpy(), np.float32
    )
