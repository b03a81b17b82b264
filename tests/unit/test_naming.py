"""Child names are deterministic DNS-1123 labels of at most 63 characters."""

from __future__ import annotations

import re

from recsys_operator.naming import MAX_NAME_LENGTH, child_name

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def test_short_names_are_joined_as_they_are() -> None:
    assert child_name("movies", "v1", "train") == "movies-v1-train"


def test_long_names_keep_a_prefix_and_end_in_a_hash() -> None:
    long = "a-very-long-recommender-name-that-goes-on-and-on-and-on"
    name = child_name(long, "triton", f"{long}-v12")
    assert len(name) == MAX_NAME_LENGTH
    assert DNS_LABEL.match(name)
    assert name.startswith("a-very-long-recommender-name")
    assert name == child_name(long, "triton", f"{long}-v12"), "deterministic"
    assert name != child_name(long, "triton", f"{long}-v13"), "no collision by truncation"


def test_invalid_characters_are_replaced() -> None:
    assert child_name("Movies_EU", "v1") == "movies-eu-v1"
