"""The offline layout, the MovieLens conversion and the synthetic generator."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from numpy.typing import NDArray

from recsys_workloads.datasets import movielens, synthetic
from recsys_workloads.datasets.__main__ import main as cli
from recsys_workloads.datasets.layout import (
    INTERACTIONS_SCHEMA,
    ITEMS_SCHEMA,
    USERS_SCHEMA,
    DatasetPaths,
    check_schema,
)
from recsys_workloads.runtime import EXIT_BAD_INPUT, EXIT_OK, BadInputError


@pytest.fixture(scope="module")
def movielens_dir(tmp_path_factory: pytest.TempPathFactory) -> DatasetPaths:
    return movielens.write_dataset(str(tmp_path_factory.mktemp("ml") / "ml-100k"))


def test_movielens_files_follow_the_layout(movielens_dir: DatasetPaths) -> None:
    for uri, schema in (
        (movielens_dir.interactions, INTERACTIONS_SCHEMA),
        (movielens_dir.users, USERS_SCHEMA),
        (movielens_dir.items, ITEMS_SCHEMA),
    ):
        check_schema(pq.read_schema(uri), schema, uri)
    assert pq.read_metadata(movielens_dir.interactions).num_rows == 100_000
    assert pq.read_metadata(movielens_dir.users).num_rows == 943
    assert pq.read_metadata(movielens_dir.items).num_rows == 1682


def test_movielens_values(movielens_dir: DatasetPaths) -> None:
    inter = pq.read_table(movielens_dir.interactions)
    users = pq.read_table(movielens_dir.users)
    items = pq.read_table(movielens_dir.items)
    assert set(pc.unique(inter["rating"]).to_pylist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    # The published data set spans September 1997 to April 1998.
    first, last = pc.min_max(inter["event_timestamp"]).values()
    assert first.as_py() >= datetime(1997, 9, 1, tzinfo=UTC)
    assert last.as_py() <= datetime(1998, 5, 1, tzinfo=UTC)
    user_one = users.filter(pc.equal(users["user_id"], 1)).to_pylist()[0]
    assert (user_one["age"], user_one["gender"], user_one["occupation"]) == (24, "M", "technician")
    # A user's attributes are known from their first rating on, not before.
    first_rating = pc.min(inter.filter(pc.equal(inter["user_id"], 1))["event_timestamp"]).as_py()
    assert user_one["event_timestamp"] == first_rating
    toy_story = items.filter(pc.equal(items["item_id"], 1)).to_pylist()[0]
    assert toy_story["genres"] == ["Animation", "Children's", "Comedy"]
    assert toy_story["release_year"] == 1995
    # Two items carry a placeholder instead of a year; they become null, not a crash.
    assert items["release_year"].null_count == 2


def test_check_schema_names_the_missing_and_the_mistyped_column() -> None:
    missing = pa.schema([("user_id", pa.int64()), ("event_timestamp", pa.timestamp("us", "UTC"))])
    with pytest.raises(BadInputError, match="'age' is missing"):
        check_schema(missing, USERS_SCHEMA, "users.parquet")
    wrong = USERS_SCHEMA.set(2, pa.field("age", pa.string()))
    with pytest.raises(BadInputError, match="'age' has type string, the layout needs int32"):
        check_schema(wrong, USERS_SCHEMA, "users.parquet")


def _read(paths: DatasetPaths) -> list[pa.Table]:
    return [pq.read_table(u) for u in (paths.interactions, paths.users, paths.items)]


def test_synthetic_is_deterministic_and_follows_the_layout(tmp_path: Path) -> None:
    knobs: dict[str, Any] = {
        "users": 300,
        "items": 120,
        "interactions": 5_000,
        "user_updates": 0.2,
        "seed": 7,
    }
    first = _read(synthetic.write_dataset(str(tmp_path / "a"), **knobs))
    again = _read(synthetic.write_dataset(str(tmp_path / "b"), **knobs))
    other = _read(synthetic.write_dataset(str(tmp_path / "c"), **{**knobs, "seed": 8}))
    for table, schema in zip(first, (INTERACTIONS_SCHEMA, USERS_SCHEMA, ITEMS_SCHEMA), strict=True):
        check_schema(table.schema, schema, "synthetic")
    assert all(a.equals(b) for a, b in zip(first, again, strict=True))
    assert not first[0].equals(other[0])
    inter, users, items = first
    assert inter.num_rows == 5_000
    assert users.num_rows > 300  # 20% of the users have a later second row
    assert pc.count_distinct(users["user_id"]).as_py() == 300
    assert items.num_rows == 120


def test_synthetic_interactions_never_precede_their_user_or_item(tmp_path: Path) -> None:
    inter, users, items = _read(
        synthetic.write_dataset(str(tmp_path / "w"), users=200, items=80, interactions=4_000)
    )
    times = inter["event_timestamp"].cast(pa.int64()).to_numpy()
    assert np.all(np.diff(times) >= 0), "interactions are written in time order"
    first_seen = users.group_by("user_id").aggregate([("event_timestamp", "min")])
    appear = dict(
        zip(
            first_seen["user_id"].to_pylist(),
            first_seen["event_timestamp_min"].cast(pa.int64()).to_pylist(),
            strict=True,
        )
    )
    user_ids = inter["user_id"].to_pylist()
    assert all(appear[u] <= t for u, t in zip(user_ids, times.tolist(), strict=True))
    item_appear = dict(
        zip(
            items["item_id"].to_pylist(),
            items["event_timestamp"].cast(pa.int64()).to_pylist(),
            strict=True,
        )
    )
    assert all(
        item_appear[i] <= t
        for i, t in zip(inter["item_id"].to_pylist(), times.tolist(), strict=True)
    )


def _genre_mix(paths: DatasetPaths) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The genre mix of the first and of the last fifth of the interactions."""
    inter, _, items = _read(paths)
    first_genre = {
        i: g[0]
        for i, g in zip(items["item_id"].to_pylist(), items["genres"].to_pylist(), strict=True)
    }
    genres = np.array(
        [synthetic.GENRES.index(first_genre[i]) for i in inter["item_id"].to_pylist()]
    )
    fifth = len(genres) // 5
    early = np.bincount(genres[:fifth], minlength=len(synthetic.GENRES)) / fifth
    late = np.bincount(genres[-fifth:], minlength=len(synthetic.GENRES)) / fifth
    return early, late


def _distance(p: NDArray[np.float64], q: NDArray[np.float64]) -> float:
    return float(np.abs(p - q).sum() / 2)


def _late_user_age(paths: DatasetPaths) -> float:
    users = pq.read_table(paths.users)
    times = users["event_timestamp"].cast(pa.int64()).to_numpy()
    late = times >= np.quantile(times[times > times.min()], 0.5)
    return float(users["age"].to_numpy()[late].mean())


def test_drift_knob_shifts_distributions_over_time(tmp_path: Path) -> None:
    knobs: dict[str, Any] = {
        "users": 2_000,
        "items": 400,
        "interactions": 40_000,
        "initial_fraction": 0.3,
        "seed": 3,
    }
    still = synthetic.write_dataset(str(tmp_path / "still"), **knobs)
    moved = synthetic.write_dataset(str(tmp_path / "moved"), drift=1.0, **knobs)
    # Same world, same catalog growth: only the drift differs, and it grows with time.
    (still_early, still_late), (moved_early, moved_late) = _genre_mix(still), _genre_mix(moved)
    early_gap, late_gap = _distance(still_early, moved_early), _distance(still_late, moved_late)
    assert late_gap > 0.1
    assert late_gap > 3 * early_gap
    assert _late_user_age(moved) < _late_user_age(still) - 5


def test_cli_writes_both_datasets_and_refuses_bad_knobs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "syn"
    assert (
        cli(
            [
                "synthetic",
                "--out",
                str(out),
                "--users",
                "20",
                "--items",
                "10",
                "--interactions",
                "100",
                "--drift",
                "0.5",
            ]
        )
        == EXIT_OK
    )
    assert pq.read_metadata(out / "interactions.parquet").num_rows == 100
    assert cli(["synthetic", "--out", str(out), "--users", "0"]) == EXIT_BAD_INPUT
    assert "users must be >= 1" in capsys.readouterr().err
    assert cli(["movielens", "--out", str(tmp_path / "ml")]) == EXIT_OK
    assert (tmp_path / "ml" / "users.parquet").is_file()


def test_datasets_write_through_fsspec_uris() -> None:
    paths = synthetic.write_dataset("memory://datasets/syn", users=30, items=10, interactions=200)
    fs = fsspec.filesystem("memory")
    with fs.open(paths.interactions.removeprefix("memory://"), "rb") as handle:
        table = pq.read_table(handle)
    check_schema(table.schema, INTERACTIONS_SCHEMA, paths.interactions)
    assert table.num_rows == 200
    fs.rm("/datasets", recursive=True)
