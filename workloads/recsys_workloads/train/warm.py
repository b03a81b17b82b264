"""Warm start: begin a retrain at the serving version's weights instead of a fresh draw.

A drift or schedule retrain mostly relearns what the serving model already knows; starting
from its weights and taking gradient steps on the recent window only gets to a comparable
model for a fraction of the steps (benchmarks/README.md measures how much). What carries
over, and why it stays consistent with what serving reads:

- The feature encoders are the checkpoint's, unchanged (``features.extend_encoder``): a
  feature embedding row, a numeric bucket and a hashed user×item cross mean what they meant
  when they were trained. The new version's ``encoders.json`` and ``profile.json`` are its
  own (serving and the drift check read the new version's files), written from these
  encoders; a category new since the checkpoint reads as unknown until a cold retrain.
- The id vocabularies are the checkpoint's ids plus the window's: every user and item the
  serving version knew keeps its trained embedding (its row moves with its sorted index), a
  new id keeps the fresh initialisation the run's seed gave it. The unknown-id row 0 carries.
- Every other weight (the towers' layers, the ranker's cross network and MLP) is copied.
  The optimizers start fresh: Adam's moments belong to the old run's last steps.

Whether a checkpoint fits is decided before any training (``misfit``): the same embedding
and feature widths, hidden layers and cross layers, history on or off, and the same features
in the same order with the same kinds. One that does not fit is no error: the run trains
cold on all data, as without ``warmStart``, and its lineage says why (a Recommender whose
model was reshaped keeps retraining; its next version simply starts from scratch). A
checkpoint that cannot be read, or is not the artifact the operator named (digest), is bad
input: the serving version's own artifact is broken, which a cold run would hide.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import torch
from torch import Tensor, nn

from recsys_contract.train import TrainConfig, WarmStartConfig, WarmStartLineage, timestamp
from recsys_workloads.artifact_store import Store
from recsys_workloads.runtime import BadInputError
from recsys_workloads.train.dataset import Prepared, WarmBase
from recsys_workloads.train.export import LoadedModel, load_model_artifact
from recsys_workloads.train.features import EntityEncoder, infer_kind
from recsys_workloads.train.models import Ranker, TwoTower

IntArray = npt.NDArray[np.int64]
#: The most of a fallback's reason the summary carries: the termination message holds 4 KiB.
REASON_CHARS = 300

#: Where each network keeps an entity's embedder, by state-dict key prefix.
_EMBEDDERS = {
    "two_tower": {"user_tower.embedder.": "user", "item_tower.embedder.": "item"},
    "ranker": {"user.": "user", "item.": "item"},
}


def load_checkpoint(store: Store, ws: WarmStartConfig) -> LoadedModel:
    """The published model a warm start begins at; unreadable or another artifact than the
    one named is bad input naming ``warmStart``."""
    try:
        model = load_model_artifact(store, ws.artifact_uri)
    except BadInputError as exc:
        raise BadInputError(
            f"warmStart.artifactUri: the checkpoint of {ws.version or ws.artifact_uri} cannot "
            f"be used ({exc})"
        ) from exc
    found = model.manifest.get("digest")
    if ws.digest and found != ws.digest:
        raise BadInputError(
            f"warmStart.digest: the artifact at {ws.artifact_uri} has digest {found}, not "
            f"{ws.digest} of {ws.version or 'the serving version'}; it was replaced after "
            "publishing"
        )
    return model


def _feature_misfit(
    entity: str, encoder: EntityEncoder, table: pa.Table | None, names: Sequence[str]
) -> str | None:
    old = [f.name for f in encoder.features]
    if list(names) != old:
        return f"{entity} features are {list(names)}, the checkpoint's {old}"
    for spec in encoder.features:
        assert table is not None  # names are non-empty only with a table
        kind = infer_kind(spec.name, table.schema.field(spec.name).type, f"{entity}s table")
        if kind != spec.kind:
            return f"{entity} feature {spec.name!r} is {kind} now, {spec.kind} in the checkpoint"
    return None


def misfit(
    cfg: TrainConfig,
    checkpoint: LoadedModel,
    users: tuple[pa.Table | None, Sequence[str]],
    items: tuple[pa.Table | None, Sequence[str]],
) -> str | None:
    """Why the checkpoint's weights cannot start this run (None: they fit). ``users`` and
    ``items`` are the checked entity tables and the feature names this run uses."""
    m, old = cfg.model, checkpoint.shape
    pairs = [
        ("embeddingDim", m.embedding_dim, old.embedding_dim),
        ("featureDim", m.feature_dim, old.feature_dim),
        ("towerHidden", list(m.tower_hidden), list(old.tower_hidden)),
        ("rankerCrossLayers", m.ranker_cross_layers, old.ranker_cross_layers),
        ("rankerHidden", list(m.ranker_hidden), list(old.ranker_hidden)),
        ("historyLength > 0", m.history_length > 0, old.user.history_items > 0),
    ]
    for name, now, then in pairs:
        if now != then:
            return f"model.{name} is {now}, the checkpoint's {then}"
    for entity, encoder, (table, names) in (
        ("user", checkpoint.user_encoder, users),
        ("item", checkpoint.item_encoder, items),
    ):
        problem = _feature_misfit(entity, encoder, table, names)
        if problem:
            return problem
    return None


def warm_base(ws: WarmStartConfig, checkpoint: LoadedModel) -> WarmBase:
    return WarmBase(
        user_encoder=checkpoint.user_encoder,
        item_encoder=checkpoint.item_encoder,
        window_us=round(ws.window_seconds * 1_000_000),
    )


@dataclass(frozen=True)
class RowMap:
    """Rows of an id embedding to copy: ``new[new_rows] = old[old_rows]``."""

    new_rows: IntArray
    old_rows: IntArray

    @classmethod
    def between(cls, old: EntityEncoder, new: EntityEncoder) -> RowMap:
        """Row 0 (unknown) to row 0, each old id's row to its row in the new vocabulary."""
        new_idx = new.ids.encode(old.ids.ids)
        known = new_idx > 0
        old_idx = np.arange(1, old.ids.size, dtype=np.int64)
        return cls(
            np.concatenate([[0], new_idx[known]]).astype(np.int64),
            np.concatenate([[0], old_idx[known]]).astype(np.int64),
        )


def carried_state(
    fresh: Mapping[str, Tensor],
    old: Mapping[str, Tensor],
    prefixes: Mapping[str, str],
    maps: Mapping[str, RowMap],
) -> dict[str, Tensor]:
    """The fresh state dict with the checkpoint's weights in it: id and history embeddings
    row by row (``maps`` by entity; history rows are items), everything else whole."""
    if set(fresh) != set(old):
        raise ValueError(
            f"the networks differ: {sorted(set(fresh) ^ set(old))} in only one of them"
        )
    out: dict[str, Tensor] = {}
    for key, now in fresh.items():
        then = old[key]
        rows = _row_map(key, prefixes, maps)
        if rows is None:
            if then.shape != now.shape:
                raise ValueError(f"{key} is {tuple(now.shape)}, {tuple(then.shape)} before")
            out[key] = then.detach().clone().to(now.device)
            continue
        if then.shape[1:] != now.shape[1:]:
            raise ValueError(f"{key} rows are {tuple(now.shape[1:])}, {tuple(then.shape[1:])}")
        merged = now.detach().clone()
        merged[torch.as_tensor(rows.new_rows)] = then.detach()[torch.as_tensor(rows.old_rows)].to(
            now.device
        )
        out[key] = merged
    return out


def _row_map(key: str, prefixes: Mapping[str, str], maps: Mapping[str, RowMap]) -> RowMap | None:
    for prefix, entity in prefixes.items():
        if key == f"{prefix}id_embedding.weight":
            return maps[entity]
        if key == f"{prefix}history.weight":
            return maps["item"]
    return None


def start_from(checkpoint: LoadedModel, p: Prepared, two_tower: TwoTower, ranker: Ranker) -> None:
    """Load the checkpoint's weights into freshly built networks of this run's shape."""
    maps = {
        "user": RowMap.between(checkpoint.user_encoder, p.users.encoder),
        "item": RowMap.between(checkpoint.item_encoder, p.items.encoder),
    }
    for model, old, name in (
        (two_tower, checkpoint.two_tower, "two_tower"),
        (ranker, checkpoint.ranker, "ranker"),
    ):
        target: nn.Module = model
        target.load_state_dict(
            carried_state(target.state_dict(), old.state_dict(), _EMBEDDERS[name], maps)
        )


def lineage(
    ws: WarmStartConfig,
    checkpoint: LoadedModel | None,
    p: Prepared,
    reason: str | None = None,
) -> WarmStartLineage:
    """What the summary tells of the warm start: applied (with the window and how many ids
    carried over) or why the run trained cold."""
    digest = checkpoint.manifest.get("digest") if checkpoint else ws.digest
    source = {"from_version": ws.version, "from_uri": ws.artifact_uri, "from_digest": digest}
    if reason is not None or checkpoint is None or p.window_since_us is None:
        short = reason[:REASON_CHARS] if reason else None
        return WarmStartLineage.model_validate({**source, "applied": False, "reason": short})
    old_users, old_items = checkpoint.user_encoder.ids.ids, checkpoint.item_encoder.ids.ids
    return WarmStartLineage.model_validate(
        {
            **source,
            "applied": True,
            "since": timestamp(_utc(p.window_since_us)),
            "until": timestamp(_utc(p.split.cutoff_us)),
            "interactions": len(p.trained),
            "carried_users": int(old_users.size),
            "new_users": int(p.users.encoder.ids.ids.size - old_users.size),
            "carried_items": int(old_items.size),
            "new_items": int(p.items.encoder.ids.ids.size - old_items.size),
        }
    )


def _utc(us: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(us / 1_000_000, tz=dt.UTC)
