"""The training data once encoded: small integer arrays the training loop gathers batches from.

Entity feature rows are encoded once per table row (plus one all-missing row at the end), and
each interaction only stores which row was valid at its time. A batch is then a few gathers,
whatever the number of features, and time-varying features stay point-in-time correct.

A warm start (``WarmBase``) prepares the same split as a cold run, so both are judged on the
same holdout and see the same user histories; only the interactions the loop trains on (the
``train_*`` arrays, ``trained``) are cut to the window before the cutoff, and the encoders
are the checkpoint's, grown by the window's ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from recsys_contract.train import TrainConfig
from recsys_workloads.runtime import BadInputError
from recsys_workloads.train.data import (
    EVENT_TIME,
    ITEM_KEY,
    USER_KEY,
    Interactions,
    TimeSplit,
    asof_rows,
    latest_rows,
    per_user_split,
    time_split,
    timestamps_us,
    validate_entity_table,
)
from recsys_workloads.train.features import EntityEncoder, extend_encoder, fit_entity_encoder
from recsys_workloads.train.models import EntityShape, FeatureShape, ModelShape

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class EntityRows:
    """Encoded feature rows of one entity table; the last row is "everything missing"."""

    encoder: EntityEncoder
    keys: IntArray
    times_us: IntArray
    features: dict[str, IntArray]

    @property
    def missing_row(self) -> int:
        return int(self.keys.size)

    @classmethod
    def build(cls, encoder: EntityEncoder, table: pa.Table | None) -> EntityRows:
        if table is None:
            return cls(encoder, np.zeros(0, np.int64), np.zeros(0, np.int64), {})
        features = {}
        for name, arr in encoder.encode_rows(table).items():
            pad = np.zeros((1, *arr.shape[1:]), dtype=np.int64)
            features[name] = np.concatenate([arr, pad])
        keys = np.asarray(table.column(encoder.key).to_numpy(), np.int64)
        return cls(encoder, keys, timestamps_us(table.column(EVENT_TIME)), features)

    def rows_at(self, keys: IntArray, times_us: IntArray) -> IntArray:
        """Row valid at each (key, time); the missing row where none was."""
        rows = asof_rows(self.keys, self.times_us, keys, times_us)
        return np.where(rows < 0, self.missing_row, rows)

    def rows_as_of(self, keys: IntArray, as_of_us: int | None) -> IntArray:
        """Each key's latest row at or before ``as_of_us`` (None: latest of all)."""
        latest = latest_rows(self.keys, self.times_us, as_of_us)
        out = np.full(keys.size, self.missing_row, dtype=np.int64)
        if latest.size == 0:
            return out
        latest_keys = self.keys[latest]
        pos = np.searchsorted(latest_keys, keys)
        pos_c = np.minimum(pos, latest_keys.size - 1)
        hit = latest_keys[pos_c] == keys
        out[hit] = latest[pos_c[hit]]
        return out

    def shape(self) -> EntityShape:
        return EntityShape(
            id_count=self.encoder.ids.size,
            features=tuple(
                FeatureShape(f.name, f.kind, f.cardinality) for f in self.encoder.features
            ),
        )


@dataclass(frozen=True)
class WarmBase:
    """What a warm start brings to ``prepare``: the checkpoint's encoders and how far before
    the holdout cutoff the trained-on window reaches."""

    user_encoder: EntityEncoder
    item_encoder: EntityEncoder
    window_us: int


@dataclass(frozen=True)
class Prepared:
    """Everything training and evaluation need, as arrays."""

    split: TimeSplit
    users: EntityRows
    items: EntityRows
    #: the interactions the loop trains on: ``split.train``, or a warm start's window of it
    trained: Interactions
    #: a warm start's window begins here (µs); None for a cold run
    window_since_us: int | None
    #: per trained-on interaction: id indices and feature rows valid at its time
    train_user_idx: IntArray
    train_item_idx: IntArray
    train_user_row: IntArray
    train_item_row: IntArray
    #: log of each item index's share of training interactions (index 0: unseen items)
    item_log_q: FloatArray
    #: the items evaluation ranks: every item id seen in training, with its row as of the cutoff
    catalog_item_ids: IntArray
    catalog_item_rows: IntArray
    #: user histories: training item indices ordered by (user, time); each training
    #: interaction's history is seq[start:end] (strictly earlier interactions of its user)
    history_length: int
    history_seq: IntArray
    train_hist_start: IntArray
    train_hist_end: IntArray

    def history_of(self, user_ids: IntArray) -> IntArray:
        """Each user's most recent training items, most recent first: [n, history_length]."""
        train = self.split.train
        users_in_seq = train.user_ids[_user_time_order(train)]
        starts = np.searchsorted(users_in_seq, user_ids, side="left")
        ends = np.searchsorted(users_in_seq, user_ids, side="right")
        return history_matrix(self.history_seq, starts, ends, self.history_length)

    def model_shape(self, cfg: TrainConfig) -> ModelShape:
        m = cfg.model
        user = self.users.shape()
        if m.history_length:
            user = EntityShape(user.id_count, user.features, self.items.encoder.ids.size)
        return ModelShape(
            user=user,
            item=self.items.shape(),
            embedding_dim=m.embedding_dim,
            feature_dim=m.feature_dim,
            tower_hidden=tuple(m.tower_hidden),
            temperature=m.temperature,
            ranker_cross_layers=m.ranker_cross_layers,
            ranker_hidden=tuple(m.ranker_hidden),
            history_length=m.history_length,
        )


def prepare(
    cfg: TrainConfig,
    interactions: Interactions,
    users_table: pa.Table | None,
    items_table: pa.Table | None,
    warm: WarmBase | None = None,
) -> Prepared:
    """Split by time, fit encoders on the training side (a warm start: extend the
    checkpoint's by the window), encode everything once."""
    ec = cfg.evaluation
    split = (time_split if ec.split == "time" else per_user_split)(
        interactions, ec.holdout_fraction
    )
    fc = cfg.features
    users_table, user_features = entity_table(users_table, "user", USER_KEY, fc.user)
    items_table, item_features = entity_table(items_table, "item", ITEM_KEY, fc.item)
    train = split.train
    since: int | None = None
    in_window = np.ones(len(train), dtype=bool)
    if warm is None:
        # Encoders are fitted on entity rows known before the cutoff, like the ids.
        user_encoder = fit_entity_encoder(
            "user",
            USER_KEY,
            train.user_ids,
            _before(users_table, split.cutoff_us),
            user_features,
            numeric_buckets=fc.numeric_buckets,
            min_count=fc.min_count,
            max_multi_hot=fc.max_multi_hot,
        )
        item_encoder = fit_entity_encoder(
            "item",
            ITEM_KEY,
            train.item_ids,
            _before(items_table, split.cutoff_us),
            item_features,
            numeric_buckets=fc.numeric_buckets,
            min_count=fc.min_count,
            max_multi_hot=fc.max_multi_hot,
        )
    else:
        since = split.cutoff_us - warm.window_us
        in_window = train.times_us >= since
        if int(in_window.sum()) < 2:
            raise BadInputError(
                f"warmStart: the window of {warm.window_us / 3.6e9:g}h before the holdout cutoff "
                f"holds {int(in_window.sum())} training interaction(s); a warm start needs at "
                "least two: widen spec.training.warmStart.window"
            )
        window = train.take(in_window)
        user_encoder = extend_encoder(warm.user_encoder, window.user_ids, fc.min_count)
        item_encoder = extend_encoder(warm.item_encoder, window.item_ids, fc.min_count)
    users = EntityRows.build(user_encoder, users_table)
    items = EntityRows.build(item_encoder, items_table)
    item_idx = item_encoder.ids.encode(train.item_ids)
    counts = np.bincount(item_idx[in_window], minlength=item_encoder.ids.size).astype(np.float64)
    log_q = np.log(np.maximum(counts, 1.0) / max(float(counts.sum()), 1.0))
    catalog = item_encoder.ids.ids
    # Histories run over every training interaction, window or not: what a user did before
    # the window is still what serving passes as their recent items.
    order = _user_time_order(train)
    position = np.empty(order.size, dtype=np.int64)
    position[order] = np.arange(order.size)
    users_in_seq = train.user_ids[order]
    trained = train.take(in_window)
    return Prepared(
        split=split,
        users=users,
        items=items,
        trained=trained,
        window_since_us=since,
        train_user_idx=user_encoder.ids.encode(trained.user_ids),
        train_item_idx=item_idx[in_window],
        train_user_row=users.rows_at(trained.user_ids, trained.times_us),
        train_item_row=items.rows_at(trained.item_ids, trained.times_us),
        item_log_q=log_q,
        catalog_item_ids=catalog,
        catalog_item_rows=items.rows_as_of(catalog, split.cutoff_us),
        history_length=cfg.model.history_length,
        history_seq=item_idx[order],
        train_hist_start=np.searchsorted(users_in_seq, train.user_ids, side="left")[in_window],
        train_hist_end=position[in_window],
    )


def validation_view(p: Prepared, split: str, holdout_fraction: float) -> Prepared:
    """``p`` with its training interactions split again, the same way as train/test
    (``time`` or ``perUser``, the same fraction): the later part is the validation "test",
    the earlier part the history and seen items. Encoders, catalog and feature rows stay
    those of ``p`` (the networks were built on them); the training-loop arrays are left as
    they were, so the view is for evaluation only. Raises ``BadInputError`` when the
    training side is too small to split."""
    carve = time_split if split == "time" else per_user_split
    inner = carve(p.split.train, holdout_fraction)
    order = _user_time_order(inner.train)
    return replace(
        p,
        split=inner,
        history_seq=p.items.encoder.ids.encode(inner.train.item_ids)[order],
    )


def _user_time_order(train: Interactions) -> IntArray:
    """Training interactions ordered by user, then time (stable: ties keep the time order)."""
    order = np.lexsort((np.arange(len(train)), train.times_us, train.user_ids))
    return np.asarray(order, dtype=np.int64)


def history_matrix(seq: IntArray, starts: IntArray, ends: IntArray, length: int) -> IntArray:
    """Rows of seq[start:end] reversed (most recent first), cut to ``length``, 0-padded."""
    offsets = ends[:, None] - 1 - np.arange(length)[None, :]
    valid = offsets >= starts[:, None]
    picked = np.where(valid, seq[np.clip(offsets, 0, max(seq.size - 1, 0))], 0)
    return np.asarray(picked, dtype=np.int64)


def entity_table(
    table: pa.Table | None, entity: str, key: str, features: Sequence[str] | None
) -> tuple[pa.Table | None, list[str]]:
    """The entity table checked and sorted (key, time), and the feature names training uses
    (``features``, or every column but the key and time)."""
    if table is None:
        if features:
            raise BadInputError(
                f"features.{entity}: features are listed but data.{entity}sUri is not set; give "
                f"the {entity}s table or drop features.{entity}"
            )
        return None, []
    checked, names = validate_entity_table(table, entity, key, features)
    return checked.sort_by([(key, "ascending"), (EVENT_TIME, "ascending")]), names


def _before(table: pa.Table | None, cutoff_us: int) -> pa.Table | None:
    if table is None:
        return None
    times = timestamps_us(table.column(EVENT_TIME))
    mask = times < cutoff_us
    if not mask.any():
        # no entity row predates the cutoff (static attributes stamped late): use them all
        # for fitting vocabularies; the point-in-time join still decides what training sees.
        return table
    return table.filter(pa.array(mask))
