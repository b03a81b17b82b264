"""The retrieval and ranking networks.

Both see an entity as its id plus its encoded features (see ``features.py``): the id carries
what the interactions taught about that user or item, the features let a new or rare entity
still get a sensible vector. Feature modules are keyed ``f0, f1, ...`` in feature order
(feature names may hold characters a ModuleDict refuses); ``ModelShape`` records the order.

- ``TwoTower``: user and item towers end in L2-normalised vectors, so their dot product is a
  cosine and the ANN index can use inner product. Trained with in-batch sampled softmax: the
  other positives of the batch are the negatives, and since popular items turn up as negatives
  more often, ``log q(item)`` is subtracted from each logit (logQ correction, Yi et al. 2019)
  so the model does not learn to push popular items down.
- The user tower can also see the user's recent items (``historyLength`` > 0): the mean of
  their embeddings, like the history input of YouTube's candidate generator. A user vector
  then follows from what the user did, as an ALS user factor does, instead of resting on an id
  embedding alone; serving passes the user's recent items (the same list it filters on).
- ``Ranker``: DCN-v2 (Wang et al. 2021): a cross network over the concatenated user, item and
  user×item cross embeddings, then an MLP, then one logit. The user×item crosses (for example
  occupation × genre) are hashed pairs of categorical indices, so they exist in serving too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Hashed user×item cross features get at most this many embedding rows each.
CROSS_BUCKETS = 1 << 15
#: Key of the history input among a user's features: item indices, most recent first, 0-padded.
HISTORY = "__history__"

Features = Mapping[str, Tensor]


@dataclass(frozen=True)
class FeatureShape:
    name: str
    kind: str
    cardinality: int


@dataclass(frozen=True)
class EntityShape:
    id_count: int
    features: tuple[FeatureShape, ...]
    #: rows of the history embedding (the item id vocabulary) when the entity is represented by
    #: the items it interacted with, 0 when not
    history_items: int = 0

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> EntityShape:
        return cls(
            int(raw["id_count"]),
            tuple(FeatureShape(**f) for f in raw["features"]),
            int(raw.get("history_items", 0)),
        )


@dataclass(frozen=True)
class ModelShape:
    """Everything needed to rebuild the networks before loading their state dicts."""

    user: EntityShape
    item: EntityShape
    embedding_dim: int
    feature_dim: int
    tower_hidden: tuple[int, ...]
    temperature: float
    ranker_cross_layers: int
    ranker_hidden: tuple[int, ...]
    #: how many recent items the user input carries (0: none)
    history_length: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ModelShape:
        return cls(
            user=EntityShape.from_json(raw["user"]),
            item=EntityShape.from_json(raw["item"]),
            embedding_dim=int(raw["embedding_dim"]),
            feature_dim=int(raw["feature_dim"]),
            tower_hidden=tuple(raw["tower_hidden"]),
            temperature=float(raw["temperature"]),
            ranker_cross_layers=int(raw["ranker_cross_layers"]),
            ranker_hidden=tuple(raw["ranker_hidden"]),
            history_length=int(raw.get("history_length", 0)),
        )


def _feature_keys(shape: EntityShape) -> list[tuple[str, FeatureShape]]:
    return [(f"f{i}", f) for i, f in enumerate(shape.features)]


class EntityEmbedder(nn.Module):
    """Id embedding concatenated with one embedding per feature (mean over multi-hot values)."""

    def __init__(self, shape: EntityShape, id_dim: int, feature_dim: int) -> None:
        super().__init__()
        self.shape = shape
        self.id_embedding = nn.Embedding(shape.id_count, id_dim)
        self.single = nn.ModuleDict()
        self.bags = nn.ModuleDict()
        for key, f in _feature_keys(shape):
            if f.kind == "multi_hot":
                self.bags[key] = nn.EmbeddingBag(
                    f.cardinality, feature_dim, mode="mean", padding_idx=0
                )
            else:
                self.single[key] = nn.Embedding(f.cardinality, feature_dim)
        self.names = {key: f.name for key, f in _feature_keys(shape)}
        self.output_dim = id_dim + feature_dim * len(shape.features)
        self.history: nn.EmbeddingBag | None = None
        if shape.history_items:
            self.history = nn.EmbeddingBag(shape.history_items, id_dim, mode="mean", padding_idx=0)
            nn.init.normal_(self.history.weight, std=0.05)
            self.output_dim += id_dim
        nn.init.normal_(self.id_embedding.weight, std=0.05)

    def forward(self, ids: Tensor, feats: Features) -> Tensor:
        parts = [self.id_embedding(ids)]
        for key, name in self.names.items():
            if key in self.bags:
                parts.append(self.bags[key](feats[name]))
            else:
                parts.append(self.single[key](feats[name]))
        if self.history is not None:
            parts.append(self.history(feats[HISTORY]))
        return torch.cat(parts, dim=-1)


def _mlp(in_dim: int, hidden: Sequence[int], out_dim: int | None) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    if out_dim is not None:
        layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class Tower(nn.Module):
    def __init__(self, shape: EntityShape, model: ModelShape) -> None:
        super().__init__()
        self.embedder = EntityEmbedder(shape, model.embedding_dim, model.feature_dim)
        self.mlp = _mlp(self.embedder.output_dim, model.tower_hidden, model.embedding_dim)

    def forward(self, ids: Tensor, feats: Features) -> Tensor:
        return F.normalize(self.mlp(self.embedder(ids, feats)), dim=-1)


class TwoTower(nn.Module):
    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.user_tower = Tower(shape.user, shape)
        self.item_tower = Tower(shape.item, shape)
        self.temperature = shape.temperature
        self.embedding_dim = shape.embedding_dim

    def forward(
        self, user_ids: Tensor, user_feats: Features, item_ids: Tensor, item_feats: Features
    ) -> tuple[Tensor, Tensor]:
        return self.user_tower(user_ids, user_feats), self.item_tower(item_ids, item_feats)


def in_batch_softmax_loss(
    user_vecs: Tensor,
    item_vecs: Tensor,
    item_ids: Tensor,
    temperature: float,
    item_log_q: Tensor | None,
) -> Tensor:
    """Sampled softmax with the batch's other items as negatives.

    ``item_log_q`` holds log of each batch item's sampling probability (its share of training
    interactions); subtracting it corrects the bias toward popular negatives. Duplicates of the
    positive item elsewhere in the batch are masked out: they are not negatives.
    """
    logits = user_vecs @ item_vecs.T / temperature
    if item_log_q is not None:
        logits = logits - item_log_q.unsqueeze(0)
    same = item_ids.unsqueeze(0) == item_ids.unsqueeze(1)
    eye = torch.eye(same.shape[0], dtype=torch.bool, device=same.device)
    logits = logits.masked_fill(same & ~eye, torch.finfo(logits.dtype).min)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, labels)


@dataclass(frozen=True)
class CrossPair:
    """One user feature crossed with one item feature (indices into the shapes' features)."""

    user_feature: int
    item_feature: int


def cross_pairs(shape: ModelShape) -> list[CrossPair]:
    """Every single-valued user feature × every item feature: few, and all known at serving."""
    pairs = []
    for ui, uf in enumerate(shape.user.features):
        if uf.kind == "multi_hot":
            continue
        for ii, _ in enumerate(shape.item.features):
            pairs.append(CrossPair(ui, ii))
    return pairs


class CrossLayer(nn.Module):
    """x_{l+1} = x0 * (W x_l + b) + x_l."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        nn.init.zeros_(self.linear.bias)
        nn.init.normal_(self.linear.weight, std=0.01)

    def forward(self, x0: Tensor, x: Tensor) -> Tensor:
        out: Tensor = x0 * self.linear(x) + x
        return out


class Ranker(nn.Module):
    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.shape = shape
        self.user = EntityEmbedder(shape.user, shape.embedding_dim, shape.feature_dim)
        self.item = EntityEmbedder(shape.item, shape.embedding_dim, shape.feature_dim)
        self.pairs = cross_pairs(shape)
        self.crosses = nn.ModuleList()
        self.cross_sizes: list[int] = []
        for pair in self.pairs:
            uf = shape.user.features[pair.user_feature]
            itf = shape.item.features[pair.item_feature]
            size = min(uf.cardinality * itf.cardinality, CROSS_BUCKETS)
            self.cross_sizes.append(size)
            self.crosses.append(
                nn.EmbeddingBag(size + 1, shape.feature_dim, mode="mean", padding_idx=0)
            )
        dim = self.user.output_dim + self.item.output_dim + shape.feature_dim * len(self.pairs)
        self.cross_layers = nn.ModuleList(CrossLayer(dim) for _ in range(shape.ranker_cross_layers))
        self.deep = _mlp(dim, shape.ranker_hidden, 1)

    def _cross_indices(self, pair_no: int, user_feats: Features, item_feats: Features) -> Tensor:
        pair = self.pairs[pair_no]
        uf = self.shape.user.features[pair.user_feature]
        itf = self.shape.item.features[pair.item_feature]
        u = user_feats[uf.name].unsqueeze(-1)
        i = item_feats[itf.name]
        if i.dim() == 1:
            i = i.unsqueeze(-1)
        combined = (u * itf.cardinality + i) % self.cross_sizes[pair_no] + 1
        return torch.where((u > 0) & (i > 0), combined, torch.zeros_like(combined))

    def forward(
        self,
        user_ids: Tensor,
        user_feats: Features,
        item_ids: Tensor,
        item_feats: Features,
        user_rows: Tensor | None = None,
    ) -> Tensor:
        """One logit per (user, item) row. With ``user_rows``, the user inputs hold each
        distinct user once and ``user_rows[r]`` says whose row ``r`` is: serving scores a few
        hundred candidates per user, and embedding the user (a mean over their history) once
        instead of once per candidate is most of the ranker's CPU time."""
        user = self.user(user_ids, user_feats)
        if user_rows is not None:
            user = user[user_rows]
            user_feats = {k: v[user_rows] for k, v in user_feats.items()}
        parts = [user, self.item(item_ids, item_feats)]
        for n, bag in enumerate(self.crosses):
            parts.append(bag(self._cross_indices(n, user_feats, item_feats)))
        x0 = torch.cat(parts, dim=-1)
        x = x0
        for layer in self.cross_layers:
            x = layer(x0, x)
        out: Tensor = self.deep(x).squeeze(-1)
        return out
