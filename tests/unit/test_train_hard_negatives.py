"""The ranker's hard negatives: the user's retrieval candidates, never their training items."""

from __future__ import annotations

import numpy as np
import torch
from offline_frames import tiny_tables

from recsys_workloads.artifact_store import Store
from recsys_workloads.train.config import parse_train_config
from recsys_workloads.train.data import validate_interactions
from recsys_workloads.train.dataset import prepare
from recsys_workloads.train.models import TwoTower
from recsys_workloads.train.trainer import DeviceData, Distributed, _with_hard_negatives, train


def _config(hard: float) -> dict[str, object]:
    return {
        "data": {"interactionsUri": "-"},
        "artifactUri": "memory://x",
        "checkpointUri": f"memory://hard-{hard}",
        "training": {"epochs": 2, "rankerNegatives": 4, "rankerHardNegatives": hard},
        "evaluation": {"holdoutFraction": 0.25, "candidates": 10},
    }


def test_hard_negatives_are_top_candidates_and_never_trained_pairs() -> None:
    tables = tiny_tables()
    cfg = parse_train_config(_config(0.5))
    p = prepare(cfg, validate_interactions(tables["interactions"]), tables["users"], None)
    torch.manual_seed(0)
    two_tower = TwoTower(p.model_shape(cfg)).eval()
    d = DeviceData.build(p, torch.device("cpu"))
    b = torch.arange(0, 64)
    with torch.no_grad():
        u_vec = two_tower.user_tower(d.user_idx[b], d.user_inputs(b))
    cat_vec = d.catalog_vectors(two_tower)
    uniform = torch.full((b.numel() * 4,), -7)  # a marker: "kept the uniform draw"
    ranks = torch.randint(0, 10, (b.numel(), 2), generator=torch.Generator().manual_seed(1))
    got = _with_hard_negatives(d, b, u_vec, cat_vec, uniform, ranks).view(b.numel(), 4)
    assert (got[:, 2:] == -7).all(), "the other half stays uniform"
    trained = set(zip(p.train_user_idx.tolist(), p.train_item_idx.tolist(), strict=True))
    top = torch.topk(u_vec @ cat_vec.T, 10, dim=1).indices
    kept = replaced = 0
    for row in range(b.numel()):
        user = int(d.user_idx[b[row]])
        for col in range(2):
            want = int(top[row, ranks[row, col]])
            if (user, want + 1) in trained:  # catalogue position = item index - 1
                assert int(got[row, col]) == -7
                replaced += 1
            else:
                assert int(got[row, col]) == want
                kept += 1
    assert kept, "some candidates are new to their user"
    assert replaced, "and some the user trained on"


def test_hard_negatives_train_deterministically_and_differently() -> None:
    tables = tiny_tables()
    interactions = validate_interactions(tables["interactions"])

    def weights(hard: float) -> torch.Tensor:
        cfg = parse_train_config(_config(hard))
        p = prepare(cfg, interactions, tables["users"], tables["items"])
        result = train(cfg, p, Store({}), Distributed())
        return torch.cat([w.detach().flatten() for w in result.ranker.parameters()])

    assert torch.equal(weights(0.5), weights(0.5))
    assert not torch.equal(weights(0.5), weights(0.0))
    assert np.isfinite(weights(1.0).numpy()).all()
