"""The pure decisions of hybrid serving, as tables: which stored list the gateway may serve,
and which users the precompute Job picks as the head."""

from __future__ import annotations

from collections import Counter

import pytest

from recsys_contract.keyspace import GatewayKeys, PrecomputedList
from recsys_contract.precompute import Audience
from recsys_workloads.gateway.pipeline import usable_list
from recsys_workloads.precompute import most_active

NOW_S = 1_700_000_000.0
NOW_MS = int(NOW_S * 1000)
HOUR_S = 3600.0


def stored(version: str = "v1", age_s: float = 60.0, items: tuple[int, ...] = (3, 1)) -> bytes:
    scores = tuple(float(len(items) - n) for n in range(len(items)))
    return PrecomputedList(version, NOW_MS - int(age_s * 1000), items, scores).to_json()


@pytest.mark.parametrize(
    ("case", "raw", "version", "outcome", "items"),
    [
        ("a fresh list of the variant's version", stored(), "v1", "ok", [3, 1]),
        ("none stored", None, "v1", "missing", None),
        ("another version's list", stored("v0"), "v1", "other-version", None),
        ("older than maxAge", stored(age_s=HOUR_S + 1), "v1", "stale", None),
        ("exactly maxAge old", stored(age_s=HOUR_S), "v1", "ok", [3, 1]),
        ("not JSON", b"{nope", "v1", "invalid", None),
        ("items and scores disagree", b'{"v":"v1","t":1,"items":[1,2],"scores":[1]}', "v1",
         "invalid", None),
        ("no version", b'{"t":1,"items":[],"scores":[]}', "v1", "invalid", None),
        ("an empty list is usable (the k check decides)", stored(items=()), "v1", "ok", []),
    ],
)  # fmt: skip
def test_which_stored_list_may_be_served(
    case: str, raw: bytes | None, version: str, outcome: str, items: list[int] | None
) -> None:
    found, why = usable_list(raw, version, NOW_S, HOUR_S)
    assert why == outcome, case
    assert (found.ids.tolist() if found is not None else None) == items, case


def test_a_list_round_trips_and_its_key_names_the_version() -> None:
    lst = PrecomputedList("movies-v2", NOW_MS, (5, 9), (0.5, 0.25))
    assert PrecomputedList.from_json(lst.to_json()) == lst
    keys = GatewayKeys.of("ns.movies", "team-a:")
    assert keys.precomputed("movies-v2", 7) == "team-a:recsys:ns.movies:precomputed:movies-v2:7"


TRAFFIC = Counter({10: 5, 11: 9, 12: 1, 13: 5, 14: 2})


@pytest.mark.parametrize(
    ("case", "audience", "head"),
    [
        ("a count", Audience(most_active=2), [11, 10]),
        ("ties go to the lower id", Audience(most_active=3), [11, 10, 13]),
        ("more than were active", Audience(most_active=50), [11, 10, 13, 14, 12]),
        ("a share, rounded up", Audience(most_active_percent=30), [11, 10]),
        ("everyone active", Audience(most_active_percent=100), [11, 10, 13, 14, 12]),
        ("the smallest share still picks one", Audience(most_active_percent=1), [11]),
    ],
)
def test_the_head_is_the_most_active_users(case: str, audience: Audience, head: list[int]) -> None:
    assert most_active(TRAFFIC, audience) == head, case


def test_no_traffic_no_head() -> None:
    assert most_active(Counter(), Audience(most_active_percent=50)) == []
    assert most_active(Counter(), Audience(most_active=10)) == []


@pytest.mark.parametrize(
    ("case", "fields"),
    [
        ("none", {}),
        ("two", {"most_active": 1, "all": True}),
        ("count and share", {"most_active": 1, "most_active_percent": 5}),
    ],
)
def test_an_audience_is_exactly_one_kind(case: str, fields: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        Audience.model_validate(fields)
