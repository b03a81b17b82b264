"""Warm start with real torch on tiny tables: what carries over from a published artifact,
what starts fresh, which rows are trained on, and what happens when a checkpoint does not fit.

v1 is trained on the early period without the late users (ids 1..20, so that they sort
before every id v1 knew and every old id's row moves); the warm run reads the whole table,
so those users are new to it."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from offline_frames import START, tiny_tables, train_config, write_config, write_tables

from recsys_contract.train import WarmStartConfig
from recsys_workloads.artifact_store import Store
from recsys_workloads.runtime import EXIT_BAD_INPUT, EXIT_OK
from recsys_workloads.train import warm
from recsys_workloads.train.__main__ import main
from recsys_workloads.train.config import parse_train_config
from recsys_workloads.train.dataset import Prepared
from recsys_workloads.train.export import LoadedModel, load_model_artifact
from recsys_workloads.train.models import HISTORY, Ranker, TwoTower
from recsys_workloads.train.pipeline import load_prepared
from recsys_workloads.train.trainer import FeatureTables, make_deterministic

WEEK = 7 * 86400
LATE_USERS = 20
EARLY_DAYS = 20


def run_cli(tmp_path: Path, cfg: dict[str, Any], name: str) -> tuple[int, dict[str, Any]]:
    config = write_config(tmp_path / f"{name}.json", cfg)
    term = tmp_path / f"{name}.termination"
    code = main(["--config", str(config), "--termination-log", str(term)])
    return code, json.loads(term.read_text())


def _early(tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
    """The first days, without the late users: what v1 knew."""
    inter = tables["interactions"]
    cutoff = pa.scalar(START + dt.timedelta(days=EARLY_DAYS), pa.timestamp("us", tz="UTC"))
    keep = pc.and_(
        pc.less(inter["event_timestamp"], cutoff),
        pc.greater(inter["user_id"], LATE_USERS),
    )
    return {**tables, "interactions": inter.filter(keep)}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """v1 (history on, so the history embedding carries too) and the data a retrain reads."""
    root = tmp_path_factory.mktemp("warm")
    full = tiny_tables(n_users=100, per_user=12)
    early = write_tables(root / "early", _early(full))
    later = write_tables(root / "full", full)
    model = {"historyLength": 5}
    code, v1 = run_cli(root, train_config(early, f"file://{root}/v1", model=model), "v1")
    assert code == EXIT_OK, v1
    return {"root": root, "early": early, "full": later, "v1": v1, "model": model}


def warm_cfg(world: dict[str, Any], name: str, **overrides: Any) -> dict[str, Any]:
    root = world["root"]
    ws = {
        "artifactUri": f"file://{root}/v1",
        "version": "v1",
        "digest": world["v1"]["digest"],
        "windowSeconds": WEEK,
        "epochs": 1,
        **overrides.pop("warmStart", {}),
    }
    model = {**world["model"], **overrides.pop("model", {})}
    return train_config(
        world["full"], f"file://{root}/{name}", version=name, model=model, warmStart=ws, **overrides
    )


def checkpoint(world: dict[str, Any]) -> LoadedModel:
    return load_model_artifact(Store({}), f"file://{world['root']}/v1")


def test_warm_data_is_the_cold_split_with_training_cut_to_the_window(
    world: dict[str, Any],
) -> None:
    """Same cutoff, test rows and seen history as a cold run; gradient rows only from the
    week before the cutoff; the checkpoint's ids plus the window's, its feature encoders."""
    warm_run = parse_train_config(warm_cfg(world, "split"))
    cold_run = warm_run.model_copy(update={"warm_start": None})
    w = load_prepared(warm_run, Store({}))
    c = load_prepared(cold_run, Store({}))
    pw, pc_ = w.prepared, c.prepared
    assert pw.split.cutoff_us == pc_.split.cutoff_us
    np.testing.assert_array_equal(pw.split.test.user_ids, pc_.split.test.user_ids)
    assert len(pw.split.train) == len(pc_.split.train)
    since = pw.split.cutoff_us - WEEK * 1_000_000
    assert pw.window_since_us == since
    in_window = pc_.split.train.times_us >= since
    assert 0 < len(pw.trained) == int(in_window.sum()) < len(pc_.split.train)
    assert pw.trained.times_us.min() >= since
    assert pw.trained.times_us.max() < pw.split.cutoff_us
    assert pw.train_user_idx.size == len(pw.trained)
    assert len(pc_.trained) == len(pc_.split.train)  # a cold run trains on all of it
    # the vocabularies: every id v1 knew plus the window's (the late users among them)
    ck = checkpoint(world)
    old_users = set(ck.user_encoder.ids.ids.tolist())
    new_users = set(pw.users.encoder.ids.ids.tolist())
    assert old_users < new_users
    assert new_users - old_users == set(pw.trained.user_ids.tolist()) - old_users
    assert min(new_users - old_users) <= LATE_USERS
    assert pw.users.encoder.features == ck.user_encoder.features
    assert pw.items.encoder.features == ck.item_encoder.features
    # the epochs a warm start runs
    assert w.cfg.training.epochs == 1
    assert c.cfg.training.epochs == 3
    lineage = w.lineage.warm_start
    assert lineage is not None
    assert lineage.applied
    assert lineage.interactions == len(pw.trained)
    assert lineage.new_users == len(new_users - old_users) > 0
    assert lineage.carried_users == len(old_users)


def _fresh(p: Prepared, seed: int, shape_cfg: Any) -> tuple[TwoTower, Ranker]:
    make_deterministic(seed)
    shape = p.model_shape(shape_cfg)
    return TwoTower(shape), Ranker(shape)


def test_known_ids_start_at_the_checkpoint_and_new_ids_at_a_fresh_init(
    world: dict[str, Any],
) -> None:
    cfg = parse_train_config(warm_cfg(world, "carry"))
    loaded = load_prepared(cfg, Store({}))
    p, ck = loaded.prepared, loaded.checkpoint
    assert ck is not None
    fresh_tt, fresh_rk = _fresh(p, cfg.seed, cfg)
    tt, rk = copy.deepcopy(fresh_tt), copy.deepcopy(fresh_rk)
    warm.start_from(ck, p, tt, rk)

    old_ids = ck.user_encoder.ids.ids
    new_ids = p.users.encoder.ids.ids
    old_w = ck.two_tower.user_tower.embedder.id_embedding.weight.detach()
    new_w = tt.user_tower.embedder.id_embedding.weight.detach()
    fresh_w = fresh_tt.user_tower.embedder.id_embedding.weight.detach()
    new_pos = p.users.encoder.ids.encode(old_ids)
    torch.testing.assert_close(new_w[new_pos], old_w[1:])
    torch.testing.assert_close(new_w[0], old_w[0])  # the unknown-id row carries too
    added = p.users.encoder.ids.encode(new_ids[~np.isin(new_ids, old_ids)])
    assert added.size > 0
    torch.testing.assert_close(new_w[added], fresh_w[added])
    assert not torch.equal(new_w[added], torch.zeros_like(new_w[added]))
    # every layer that is not an id table is the checkpoint's, whole
    for key, value in ck.ranker.state_dict().items():
        if "id_embedding" in key or "history" in key:
            continue
        torch.testing.assert_close(rk.state_dict()[key], value, msg=key)

    # so the warm-started towers compute v1's vectors for what v1 knew, history included
    item_ids = ck.item_encoder.ids.ids
    rows = torch.as_tensor(p.items.rows_as_of(item_ids, None))
    feats = FeatureTables(p.items, torch.device("cpu")).gather(rows)
    with torch.no_grad():
        old_idx = torch.as_tensor(ck.item_encoder.ids.encode(item_ids))
        before = ck.two_tower.item_tower(old_idx, feats)
        after = tt.item_tower(torch.as_tensor(p.items.encoder.ids.encode(item_ids)), feats)
        torch.testing.assert_close(after, before)
        users = old_ids[:10]
        history = item_ids[:5][None, :].repeat(users.size, axis=0)
        u_rows = torch.as_tensor(p.users.rows_as_of(users, None))
        u_feats = FeatureTables(p.users, torch.device("cpu")).gather(u_rows)
        old_in = {**u_feats, HISTORY: torch.as_tensor(ck.item_encoder.ids.encode(history))}
        new_in = {**u_feats, HISTORY: torch.as_tensor(p.items.encoder.ids.encode(history))}
        torch.testing.assert_close(
            tt.user_tower(torch.as_tensor(p.users.encoder.ids.encode(users)), new_in),
            ck.two_tower.user_tower(torch.as_tensor(ck.user_encoder.ids.encode(users)), old_in),
        )


def test_a_warm_retrain_publishes_its_lineage_and_its_own_encoders(
    world: dict[str, Any],
) -> None:
    root = world["root"]
    code, summary = run_cli(root, warm_cfg(world, "v2"), "v2")
    assert code == EXIT_OK, summary
    ws = summary["lineage"]["warmStart"]
    assert ws["applied"] is True
    assert ws["fromVersion"] == "v1"
    assert ws["fromDigest"] == world["v1"]["digest"]
    assert ws["newUsers"] > 0
    assert ws["interactions"] > 0
    assert ws["since"] < ws["until"]
    v2 = load_model_artifact(Store({}), f"file://{root}/v2")
    assert v2.user_encoder.ids.ids.size == ws["carriedUsers"] + ws["newUsers"]
    config = json.loads((root / "v2/config.json").read_text())
    assert config["training"]["epochs"] == 1  # as run
    metrics = json.loads((root / "v2/metrics.json").read_text())
    assert metrics["training"]["epochs"] == 1
    assert metrics["split"]["trainedInteractions"] == ws["interactions"]
    # one epoch on the window from v1 is a working model, not a fresh draw
    assert summary["metrics"]["twoTower.recall@10"] > 0.3


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"model": {"embeddingDim": 16}}, "model.embeddingDim is 16, the checkpoint's 8"),
        ({"model": {"historyLength": 0}}, "model.historyLength > 0 is False"),
        ({"features": {"user": ["age", "gender"]}}, "user features are ['age', 'gender']"),
    ],
)
def test_a_checkpoint_that_does_not_fit_trains_cold_and_says_why(
    world: dict[str, Any], change: dict[str, Any], says: str
) -> None:
    cfg = parse_train_config(warm_cfg(world, "misfit", **copy.deepcopy(change)))
    loaded = load_prepared(cfg, Store({}))
    assert loaded.checkpoint is None
    assert loaded.prepared.window_since_us is None
    assert len(loaded.prepared.trained) == len(loaded.prepared.split.train)
    assert loaded.cfg.training.epochs == 3  # the cold epochs, not the warm start's
    lineage = loaded.lineage.warm_start
    assert lineage is not None
    assert lineage.applied is False
    assert lineage.reason is not None
    assert says in lineage.reason, lineage.reason
    assert "trained cold on all data" in lineage.reason


def test_misfit_names_a_feature_whose_kind_changed(world: dict[str, Any]) -> None:
    ck = checkpoint(world)
    users = tiny_tables()["users"]
    users = users.set_column(
        users.schema.get_field_index("age"), "age", pc.cast(users["age"], pa.string())
    )
    cfg = parse_train_config(warm_cfg(world, "kind"))
    names = [f.name for f in ck.user_encoder.features]
    item_names = [f.name for f in ck.item_encoder.features]
    items = tiny_tables()["items"]
    problem = warm.misfit(cfg, ck, (users, names), (items, item_names))
    assert problem == "user feature 'age' is categorical now, numeric in the checkpoint"
    assert warm.misfit(cfg, ck, (tiny_tables()["users"], names), (items, item_names)) is None


@pytest.mark.parametrize(
    ("warm_start", "says"),
    [
        ({"digest": "sha256:" + "0" * 64}, "warmStart.digest: the artifact at"),
        ({"artifactUri": "file:///nonexistent/v0"}, "warmStart.artifactUri: the checkpoint"),
    ],
)
def test_an_unusable_checkpoint_is_bad_input_naming_warm_start(
    world: dict[str, Any], tmp_path: Path, warm_start: dict[str, Any], says: str
) -> None:
    code, summary = run_cli(tmp_path, warm_cfg(world, "bad", warmStart=warm_start), "bad")
    assert code == EXIT_BAD_INPUT
    assert says in summary["message"], summary["message"]


def test_a_window_without_training_rows_is_bad_input_naming_the_field(
    world: dict[str, Any], tmp_path: Path
) -> None:
    code, summary = run_cli(
        tmp_path, warm_cfg(world, "tiny", warmStart={"windowSeconds": 0.001}), "tiny"
    )
    assert code == EXIT_BAD_INPUT
    assert "widen spec.training.warmStart.window" in summary["message"]


def test_row_map_moves_each_old_id_to_its_new_row() -> None:
    from recsys_workloads.train.features import EntityEncoder, IdVocabulary

    old = EntityEncoder("user", "user_id", IdVocabulary(np.array([10, 30], np.int64)))
    new = EntityEncoder("user", "user_id", IdVocabulary(np.array([5, 10, 20, 30], np.int64)))
    rows = warm.RowMap.between(old, new)
    assert rows.new_rows.tolist() == [0, 2, 4]
    assert rows.old_rows.tolist() == [0, 1, 2]
    ws = WarmStartConfig(artifact_uri="file:///x", window_seconds=60)
    assert ws.epochs is None
