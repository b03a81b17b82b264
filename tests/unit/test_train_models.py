"""The networks and the retrieval loss, with real torch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recsys_workloads.train.models import (
    EntityShape,
    FeatureShape,
    ModelShape,
    Ranker,
    TwoTower,
    cross_pairs,
    in_batch_softmax_loss,
)

SHAPE = ModelShape(
    user=EntityShape(
        11, (FeatureShape("age", "numeric", 6), FeatureShape("occupation", "categorical", 5))
    ),
    item=EntityShape(
        21, (FeatureShape("genres", "multi_hot", 8), FeatureShape("year", "numeric", 4))
    ),
    embedding_dim=8,
    feature_dim=4,
    tower_hidden=(16,),
    temperature=0.1,
    ranker_cross_layers=2,
    ranker_hidden=(16, 8),
)


def batch(
    n: int, seed: int = 0
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    users = torch.randint(0, 11, (n,), generator=g)
    items = torch.randint(0, 21, (n,), generator=g)
    uf = {
        "age": torch.randint(0, 6, (n,), generator=g),
        "occupation": torch.randint(0, 5, (n,), generator=g),
    }
    itf = {
        "genres": torch.randint(0, 8, (n, 3), generator=g),
        "year": torch.randint(0, 4, (n,), generator=g),
    }
    return users, uf, items, itf


def test_loss_is_softmax_cross_entropy_over_the_batch() -> None:
    torch.manual_seed(0)
    u = F.normalize(torch.randn(4, 8), dim=-1)
    v = F.normalize(torch.randn(4, 8), dim=-1)
    ids = torch.tensor([1, 2, 3, 4])
    got = in_batch_softmax_loss(u, v, ids, 0.5, None)
    logits = (u @ v.T) / 0.5
    expected = -sum(logits[i, i] - torch.logsumexp(logits[i], dim=0) for i in range(4)) / 4
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_log_q_correction_subtracts_log_probability_per_column() -> None:
    torch.manual_seed(1)
    u, v = torch.randn(3, 4), torch.randn(3, 4)
    ids = torch.tensor([5, 6, 7])
    log_q = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    got = in_batch_softmax_loss(u, v, ids, 1.0, log_q)
    logits = u @ v.T - log_q.unsqueeze(0)
    assert got.item() == pytest.approx(F.cross_entropy(logits, torch.arange(3)).item(), rel=1e-6)
    # popular items (large q) are penalised less as negatives: the loss differs from uncorrected
    assert got.item() != pytest.approx(in_batch_softmax_loss(u, v, ids, 1.0, None).item())


def test_duplicate_items_in_a_batch_are_not_negatives() -> None:
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    same = in_batch_softmax_loss(u, v, torch.tensor([3, 3]), 1.0, None)
    different = in_batch_softmax_loss(u, v, torch.tensor([3, 4]), 1.0, None)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    assert different.item() == pytest.approx(math.log(2), rel=1e-5)


def test_towers_output_unit_vectors_and_learn() -> None:
    torch.manual_seed(0)
    model = TwoTower(SHAPE)
    u_ids, uf, i_ids, itf = batch(32)
    u, v = model(u_ids, uf, i_ids, itf)
    assert u.shape == (32, 8)
    assert v.shape == (32, 8)
    torch.testing.assert_close(u.norm(dim=-1), torch.ones(32))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    first = None
    for _ in range(30):
        u, v = model(u_ids, uf, i_ids, itf)
        loss = in_batch_softmax_loss(u, v, i_ids, SHAPE.temperature, None)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first * 0.5


def test_multi_hot_padding_contributes_nothing() -> None:
    torch.manual_seed(0)
    model = TwoTower(SHAPE)
    ids = torch.tensor([3])
    year = torch.tensor([1])
    a = model.item_tower(ids, {"genres": torch.tensor([[2, 0, 0]]), "year": year})
    b = model.item_tower(ids, {"genres": torch.tensor([[2, 0, 0, 0, 0]]), "year": year})
    torch.testing.assert_close(a, b)


def test_ranker_scores_pairs_with_crosses_in_range() -> None:
    torch.manual_seed(0)
    ranker = Ranker(SHAPE)
    assert len(cross_pairs(SHAPE)) == 4  # 2 single-valued user features x 2 item features
    u_ids, uf, i_ids, itf = batch(16)
    out = ranker(u_ids, uf, i_ids, itf)
    assert out.shape == (16,)
    for n in range(len(ranker.pairs)):
        idx = ranker._cross_indices(n, uf, itf)
        assert int(idx.min()) >= 0
        assert int(idx.max()) <= ranker.cross_sizes[n]
    # a missing user value (0) turns the cross off
    zero = {**uf, "age": torch.zeros(16, dtype=torch.long)}
    assert int(ranker._cross_indices(0, zero, itf).max()) == 0


def test_ranker_embeds_each_user_once_with_user_rows_and_scores_the_same() -> None:
    torch.manual_seed(0)
    ranker = Ranker(SHAPE).eval()
    u_ids, uf, i_ids, itf = batch(12, seed=3)
    owners = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 0, 1, 2])  # 3 users, 12 candidates
    per_user = {k: v[:3] for k, v in uf.items()}
    expanded = {k: v[owners] for k, v in per_user.items()}
    with torch.inference_mode():
        once = ranker(u_ids[:3], per_user, i_ids, itf, user_rows=owners)
        repeated = ranker(u_ids[:3][owners], expanded, i_ids, itf)
        other = ranker(u_ids[:3], per_user, i_ids, itf, user_rows=owners.flip(0))
    torch.testing.assert_close(once, repeated)
    assert not torch.allclose(once, other)  # the rows really select their own user


def test_ranker_learns_a_separable_label() -> None:
    torch.manual_seed(0)
    ranker = Ranker(SHAPE)
    u_ids, uf, i_ids, itf = batch(64, seed=3)
    labels = (itf["year"] >= 2).float()
    opt = torch.optim.Adam(ranker.parameters(), lr=0.02)
    for _ in range(60):
        loss = F.binary_cross_entropy_with_logits(ranker(u_ids, uf, i_ids, itf), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    accuracy = ((ranker(u_ids, uf, i_ids, itf) > 0).float() == labels).float().mean()
    assert accuracy.item() > 0.95


def test_model_shape_json_round_trip_rebuilds_the_same_network() -> None:
    again = ModelShape.from_json(SHAPE.to_json())
    assert again == SHAPE
    torch.manual_seed(0)
    a = TwoTower(SHAPE)
    b = TwoTower(again)
    b.load_state_dict(a.state_dict())
    u_ids, uf, i_ids, itf = batch(5)
    torch.testing.assert_close(a(u_ids, uf, i_ids, itf)[0], b(u_ids, uf, i_ids, itf)[0])
