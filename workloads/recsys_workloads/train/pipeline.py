"""One training Job from config to published artifact: load, check, train, evaluate, export.

The summary returned here becomes the container's termination message, which the operator
reads for the ModelVersion status: the artifact URI and digest, the headline metrics its
evaluation gate compares, and how training went.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist

from recsys_contract.formats import join_uri
from recsys_contract.train import (
    Lineage,
    TrainConfig,
    TrainSummary,
    WarmStartLineage,
    WorkerSummary,
)
from recsys_workloads.artifact_store import MANIFEST_NAME, ArtifactReader, Store
from recsys_workloads.train import warm
from recsys_workloads.train.config import parse_train_config
from recsys_workloads.train.data import (
    ITEM_KEY,
    USER_KEY,
    interaction_columns,
    read_table,
    validate_interactions,
)
from recsys_workloads.train.dataset import Prepared, entity_table, prepare
from recsys_workloads.train.evaluate import Evaluation, evaluate, item_vectors
from recsys_workloads.train.export import MODEL_KIND, ExportInputs, LoadedModel, export_model
from recsys_workloads.train.logged import read_logged, with_served_features
from recsys_workloads.train.profile import (
    SCORE_CANDIDATES,
    SCORE_TOP_K,
    build_profile,
    score_profile,
)
from recsys_workloads.train.trainer import Distributed, TrainResult, train

log = logging.getLogger("recsys_workloads.train")


@dataclass(frozen=True)
class Loaded:
    """The prepared data, what it came from, and how this run starts."""

    prepared: Prepared
    lineage: Lineage
    #: the config as run: a warm start that applies trains ``warmStart.epochs``
    cfg: TrainConfig
    #: the warm start's checkpoint when its weights fit this run; None for a cold run
    checkpoint: LoadedModel | None = None


def load_prepared(cfg: TrainConfig, store: Store) -> Loaded:
    """The prepared data, and what it came from: the batch interactions and, with
    ``data.loggedUri``, the logged rows in range (``train.logged``); with ``warmStart``, the
    checkpoint it starts from, or why it trains cold after all (``train.warm``)."""
    data, columns = cfg.data, cfg.data.columns
    interactions = validate_interactions(
        read_table(
            store,
            data.interactions_uri,
            "interactions",
            columns=interaction_columns(columns),
        ),
        columns,
    )
    lineage = Lineage(interactions_uri=data.interactions_uri, interactions=len(interactions))
    users = read_table(store, data.users_uri, "users") if data.users_uri else None
    items = read_table(store, data.items_uri, "items") if data.items_uri else None
    if data.logged_uri:
        logged = read_logged(store, data.logged_uri, data.logged_since, data.logged_until)
        served = False
        if len(logged.interactions):
            interactions = interactions.concat(logged.interactions)
            if users is not None:
                users, served = with_served_features(users, logged)
        assert logged.lineage is not None
        log.info(
            "logged rows: %d read, %d interactions, from %d file(s)",
            logged.lineage.rows,
            logged.lineage.interactions,
            logged.lineage.files,
        )
        lineage = lineage.model_copy(
            update={"logged": logged.lineage.model_copy(update={"served_features": served})}
        )
    ws = cfg.warm_start
    if ws is None:
        return Loaded(prepare(cfg, interactions, users, items), lineage, cfg)
    checkpoint = warm.load_checkpoint(store, ws)
    user_side = entity_table(users, "user", USER_KEY, cfg.features.user)
    item_side = entity_table(items, "item", ITEM_KEY, cfg.features.item)
    problem = warm.misfit(cfg, checkpoint, user_side, item_side)
    if problem is not None:
        reason = f"the checkpoint does not fit ({problem}); trained cold on all data"
        log.warning("warm start from %s: %s", ws.artifact_uri, reason)
        prepared = prepare(cfg, interactions, users, items)
        return Loaded(prepared, _with_warm(lineage, warm.lineage(ws, None, prepared, reason)), cfg)
    prepared = prepare(cfg, interactions, users, items, warm.warm_base(ws, checkpoint))
    run_cfg = cfg
    if ws.epochs is not None:
        run_cfg = cfg.model_copy(
            update={"training": cfg.training.model_copy(update={"epochs": ws.epochs})}
        )
    ws_lineage = warm.lineage(ws, checkpoint, prepared)
    log.info(
        "warm start from %s: %d training interactions since %s, %d new users, %d new items",
        ws.version or ws.artifact_uri,
        ws_lineage.interactions,
        ws_lineage.since,
        ws_lineage.new_users,
        ws_lineage.new_items,
    )
    return Loaded(prepared, _with_warm(lineage, ws_lineage), run_cfg, checkpoint)


def _with_warm(lineage: Lineage, ws: WarmStartLineage) -> Lineage:
    return lineage.model_copy(update={"warm_start": ws})


def published_summary(manifest: dict[str, Any], uri: str) -> TrainSummary:
    lineage = manifest.get("lineage")
    return TrainSummary(
        version=manifest.get("version"),
        artifact_uri=uri,
        digest=manifest["digest"],
        item_count=manifest.get("itemCount"),
        embedding_dim=manifest.get("embeddingDim"),
        metrics=manifest.get("metrics", {}),
        lineage=Lineage.model_validate(lineage) if lineage else None,
    )


def exported_items(cfg: TrainConfig, p: Prepared) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Items the index will hold: every trained item, and (when training taught the unknown-id
    embedding through idDropout) items known only from the items table."""
    ids = p.catalog_item_ids
    if cfg.model.id_dropout > 0 and p.items.keys.size:
        ids = np.union1d(ids, p.items.keys)
    return ids.astype(np.int64)


def run(raw: dict[str, Any]) -> dict[str, Any]:
    cfg = parse_train_config(raw)
    store = Store(cfg.storage_options)
    dist = Distributed.from_env()
    if store.exists(join_uri(cfg.artifact_uri, MANIFEST_NAME), what="look up artifact"):
        reader = ArtifactReader(store, cfg.artifact_uri, MODEL_KIND)
        log.info("artifact %s is already published; nothing to do", cfg.artifact_uri)
        published = published_summary(reader.manifest, cfg.artifact_uri)
        return published.model_copy(update={"already_published": True}).to_wire()

    loaded = load_prepared(cfg, store)
    cfg = loaded.cfg
    if dist.enabled and not torch_dist.is_initialized():
        use_nccl = cfg.training.device != "cpu" and torch.cuda.is_available()
        torch_dist.init_process_group(backend="nccl" if use_nccl else "gloo")
    try:
        result = train(cfg, loaded.prepared, store, dist, loaded.checkpoint)
    finally:
        if dist.enabled and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
    if not dist.is_main:
        return WorkerSummary(version=cfg.version, role="worker", rank=dist.rank).to_wire()
    return _evaluate_and_export(cfg, loaded.prepared, result, store, loaded.lineage)


def _score_profile(evaluation: Evaluation) -> dict[str, Any] | None:
    if evaluation.served_scores is None or evaluation.served_score_ranks is None:
        return None
    return score_profile(
        evaluation.served_scores,
        evaluation.served_score_ranks,
        users=evaluation.served_score_users,
        top_k=SCORE_TOP_K,
        candidates=SCORE_CANDIDATES,
    )


def _evaluate_and_export(
    cfg: TrainConfig, p: Prepared, result: TrainResult, store: Store, lineage: Lineage
) -> dict[str, Any]:
    evaluation = evaluate(cfg, p, result.two_tower, result.ranker)
    item_ids = exported_items(cfg, p)
    vectors = item_vectors(result.two_tower, p, item_ids, p.items.rows_as_of(item_ids, None))
    counts = np.bincount(p.train_item_idx, minlength=p.items.encoder.ids.size)[1:]
    top = np.argsort(-counts, kind="stable")
    popular = [(int(p.items.encoder.ids.ids[i]), int(counts[i])) for i in top if counts[i] > 0]
    training = {
        "epochs": cfg.training.epochs,
        "resumedFromEpoch": result.resumed_from_epoch,
        "history": result.history,
        "seconds": round(result.seconds, 3),
        "samplesPerSecond": round(result.samples / result.seconds, 1) if result.seconds else None,
        "device": result.device,
        "worldSize": result.world_size,
        "seed": cfg.seed,
    }
    manifest = export_model(
        store,
        ExportInputs(
            cfg=cfg,
            shape=result.shape,
            user_encoder=p.users.encoder,
            item_encoder=p.items.encoder,
            two_tower=result.two_tower,
            ranker=result.ranker,
            item_ids=item_ids,
            item_vectors=vectors,
            query_user_ids=evaluation.eval_set.user_ids,
            query_vectors=evaluation.query_vectors,
            popular=popular,
            metrics=evaluation.metrics,
            profile=build_profile(p, _score_profile(evaluation)),
            training=training,
            lineage=lineage.to_wire(),
            fusion=evaluation.fusion,
        ),
    )
    return (
        published_summary(manifest, cfg.artifact_uri)
        .model_copy(
            update={
                "resumed_from_epoch": result.resumed_from_epoch,
                "train_seconds": training["seconds"],
                "samples_per_second": training["samplesPerSecond"],
                "device": result.device,
            }
        )
        .to_wire()
    )
