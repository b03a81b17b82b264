"""Sticky assignment: stable per user, monotone in the weight, close to the weight overall."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from recsys_contract.gateway import RoutingTable, Variant
from recsys_workloads.gateway.routing import bucket, choose_variant


def table(weight: int, canary: str = "m-v2", sticky: bool = True) -> RoutingTable:
    return RoutingTable(
        stable=Variant(model_version="m-v1", triton="t:1"),
        canary=Variant(model_version=canary, triton="t:2"),
        canary_weight=weight,
        user_sticky=sticky,
    )


def test_no_canary_or_zero_weight_is_all_stable() -> None:
    only = RoutingTable(stable=Variant(model_version="m-v1", triton="t:1"))
    assert {choose_variant(only, u) for u in range(500)} == {"stable"}
    assert {choose_variant(table(0), u) for u in range(500)} == {"stable"}
    assert {choose_variant(table(100), u) for u in range(500)} == {"canary"}


@given(st.integers(), st.integers(0, 100), st.integers(0, 100))
@settings(max_examples=300)
def test_raising_the_weight_never_moves_a_user_back_to_stable(
    user: int, low: int, extra: int
) -> None:
    high = min(low + extra, 100)
    if choose_variant(table(low), user) == "canary":
        assert choose_variant(table(high), user) == "canary"


def test_same_user_same_variant_every_time() -> None:
    t = table(30)
    first = {u: choose_variant(t, u) for u in range(1000)}
    assert all(choose_variant(t, u) == v for u, v in first.items())


def test_share_follows_the_weight() -> None:
    for weight in (5, 30, 70):
        share = sum(choose_variant(table(weight), u) == "canary" for u in range(20_000)) / 20_000
        assert abs(share - weight / 100) < 0.015


def test_each_rollout_samples_other_users() -> None:
    a = {u for u in range(5000) if choose_variant(table(10, "m-v2"), u) == "canary"}
    b = {u for u in range(5000) if choose_variant(table(10, "m-v3"), u) == "canary"}
    assert 0 < len(a & b) < 0.3 * len(a)


def test_bucket_is_a_stable_function_of_salt_and_user() -> None:
    assert bucket("m-v2", 42) == bucket("m-v2", 42)
    assert 0 <= bucket("m-v2", "user-x") < 10_000


def test_not_sticky_is_random_per_request() -> None:
    rng = random.Random(1)
    seen = {choose_variant(table(50, sticky=False), 7, rng) for _ in range(100)}
    assert seen == {"stable", "canary"}
