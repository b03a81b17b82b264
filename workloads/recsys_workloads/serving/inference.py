"""The two networks as request-batch functions: what the Triton models call, testable alone.

``UserTower.embed`` turns (user id, raw features) pairs into L2-normalised user vectors;
``RankerScorer.score`` turns (user id, raw features, candidate item ids) queries into one
logit per candidate. Both take a list of requests and run one forward pass for all of them,
which is what Triton's dynamic batcher hands a python-backend model.

Item features for the ranker come from ``item_features.npz`` (built with the repository, see
``repository.py``): the encoded feature row of every indexed item, as of the build, i.e. the
same rows the item embeddings in the index were computed from. An item missing from it is
ranked on its id embedding and an all-missing feature row.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from recsys_workloads.serving.encoding import IntArray, RequestEncoder, Row
from recsys_workloads.train.features import EntityEncoder
from recsys_workloads.train.models import HISTORY, ModelShape, Ranker, Tower, TwoTower

ARCHITECTURE = "architecture.json"
ENCODERS = "encoders.json"
TWO_TOWER_WEIGHTS = "two_tower.pt"
RANKER_WEIGHTS = "ranker.pt"
ITEM_FEATURES = "item_features.npz"
ITEM_IDS_KEY = "item_ids"
FEATURE_KEY_PREFIX = "f:"

FloatArray = npt.NDArray[np.float32]


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(
        io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True
    )
    return state


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when this process sees a GPU, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _encoders(folder: Path) -> tuple[EntityEncoder, EntityEncoder]:
    raw = json.loads((folder / ENCODERS).read_text())
    return EntityEncoder.from_json(raw["user"]), EntityEncoder.from_json(raw["item"])


def _shape(folder: Path) -> ModelShape:
    return ModelShape.from_json(json.loads((folder / ARCHITECTURE).read_text()))


def _tensors(encoded: Mapping[str, IntArray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v).to(device) for k, v in encoded.items()}


History = Sequence[int] | IntArray | None


def encode_histories(
    shape: ModelShape, item_encoder: RequestEncoder, histories: Sequence[History]
) -> IntArray:
    """Each user's recent item ids (most recent first) as item indices: the first
    ``historyLength`` of them, 0-padded (0 is also what an unknown item becomes)."""
    length = shape.history_length
    out = np.zeros((len(histories), length), dtype=np.int64)
    for row, items in enumerate(histories):
        if items is None or not length:
            continue
        recent = np.asarray(items, dtype=np.int64)[:length]
        out[row, : recent.size] = item_encoder.encode_ids(recent)
    return out


@dataclass(frozen=True)
class ItemFeatureTable:
    """Encoded feature rows of the indexed items; the last row is "everything missing"."""

    item_ids: IntArray
    features: dict[str, IntArray]

    @property
    def missing_row(self) -> int:
        return int(self.item_ids.size)

    def rows_of(self, item_ids: IntArray) -> IntArray:
        if self.item_ids.size == 0:
            return np.full(item_ids.shape, self.missing_row, dtype=np.int64)
        pos = np.searchsorted(self.item_ids, item_ids)
        pos_c = np.minimum(pos, self.item_ids.size - 1)
        hit = self.item_ids[pos_c] == item_ids
        return np.where(hit, pos_c, self.missing_row).astype(np.int64)

    def to_npz(self) -> bytes:
        buf = io.BytesIO()
        arrays = {ITEM_IDS_KEY: self.item_ids}
        arrays.update({FEATURE_KEY_PREFIX + k: v for k, v in self.features.items()})
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_npz(cls, data: bytes) -> ItemFeatureTable:
        with np.load(io.BytesIO(data)) as npz:
            ids = np.asarray(npz[ITEM_IDS_KEY], dtype=np.int64)
            features = {
                k[len(FEATURE_KEY_PREFIX) :]: np.asarray(npz[k], dtype=np.int64)
                for k in npz.files
                if k.startswith(FEATURE_KEY_PREFIX)
            }
        return cls(ids, features)


class UserTower:
    """The retrieval model's user side."""

    def __init__(
        self,
        shape: ModelShape,
        user_encoder: EntityEncoder,
        item_encoder: EntityEncoder,
        tower: Tower,
        device: torch.device | None = None,
    ) -> None:
        self.shape = shape
        self.device = device or torch.device("cpu")
        self.encoder = RequestEncoder.of(user_encoder)
        self.items = RequestEncoder.of(item_encoder)
        self.tower = tower.to(self.device).eval()

    @classmethod
    def load(cls, folder: Path, device: str = "cpu") -> UserTower:
        shape = _shape(folder)
        user, item = _encoders(folder)
        two_tower = TwoTower(shape)
        two_tower.load_state_dict(_load_state(folder / TWO_TOWER_WEIGHTS))
        return cls(shape, user, item, two_tower.user_tower, resolve_device(device))

    @property
    def dim(self) -> int:
        return self.shape.embedding_dim

    def embed(
        self,
        user_ids: Sequence[int] | IntArray,
        rows: Sequence[Row],
        histories: Sequence[History] | None = None,
    ) -> FloatArray:
        """One vector per (user id, feature row, history); rows may be ``None`` (features
        unknown), histories ``None`` (no interactions known)."""
        ids = self.encoder.encode_ids(user_ids)
        encoded = self.encoder.encode_rows(rows)
        if self.shape.history_length:
            encoded[HISTORY] = encode_histories(
                self.shape, self.items, histories or [None] * len(rows)
            )
        feats = _tensors(encoded, self.device)
        with torch.inference_mode():
            out = self.tower(torch.from_numpy(ids).to(self.device), feats)
        return np.ascontiguousarray(out.cpu().numpy(), dtype=np.float32)


@dataclass(frozen=True)
class RankQuery:
    user_id: int
    features: Row
    item_ids: IntArray
    history: History = None


class RankerScorer:
    """The ranking model: a logit per (user, candidate item)."""

    def __init__(
        self,
        shape: ModelShape,
        user_encoder: EntityEncoder,
        item_encoder: EntityEncoder,
        items: ItemFeatureTable,
        ranker: Ranker,
        device: torch.device | None = None,
    ) -> None:
        self.device = device or torch.device("cpu")
        self.shape = shape
        self.user = RequestEncoder.of(user_encoder)
        self.item = RequestEncoder.of(item_encoder)
        self.items = items
        self.item_tables = {
            name: np.concatenate([arr, np.zeros((1, *arr.shape[1:]), dtype=np.int64)])
            for name, arr in items.features.items()
        }
        missing = [n for n in self.item.feature_names if n not in self.item_tables]
        if missing:
            raise ValueError(
                f"{ITEM_FEATURES} lacks encoded item features {missing}: rebuild the repository"
            )
        self.ranker = ranker.to(self.device).eval()

    @classmethod
    def load(cls, folder: Path, device: str = "cpu") -> RankerScorer:
        shape = _shape(folder)
        user, item = _encoders(folder)
        ranker = Ranker(shape)
        ranker.load_state_dict(_load_state(folder / RANKER_WEIGHTS))
        items = ItemFeatureTable.from_npz((folder / ITEM_FEATURES).read_bytes())
        return cls(shape, user, item, items, ranker, resolve_device(device))

    def score(self, queries: Sequence[RankQuery]) -> list[FloatArray]:
        """Scores of each query's items, in the order given; one forward pass for all."""
        sizes = [int(q.item_ids.size) for q in queries]
        if sum(sizes) == 0:
            return [np.zeros(0, dtype=np.float32) for _ in queries]
        user_idx = self.user.encode_ids([q.user_id for q in queries])
        user_feats = self.user.encode_rows([q.features for q in queries])
        if self.shape.history_length:
            user_feats[HISTORY] = encode_histories(
                self.shape, self.item, [q.history for q in queries]
            )
        repeat = np.repeat(np.arange(len(queries)), sizes)
        item_ids = np.concatenate([q.item_ids.astype(np.int64) for q in queries])
        rows = self.items.rows_of(item_ids)
        item_feats = {name: table[rows] for name, table in self.item_tables.items()}
        with torch.inference_mode():
            logits = self.ranker(
                torch.from_numpy(user_idx).to(self.device),
                _tensors(user_feats, self.device),
                torch.from_numpy(self.item.encode_ids(item_ids)).to(self.device),
                _tensors(item_feats, self.device),
                user_rows=torch.from_numpy(repeat).to(self.device),
            )
        flat = np.ascontiguousarray(logits.cpu().numpy(), dtype=np.float32)
        return list(np.split(flat, np.cumsum(sizes)[:-1]))


def parse_features(raw: bytes | str | None) -> dict[str, Any] | None:
    """A request's raw feature row: a JSON object (or empty/``null`` for unknown)."""
    if raw is None or raw in (b"", ""):
        return None
    value = json.loads(raw)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"user_features must be a JSON object, got {type(value).__name__}")
    return value
