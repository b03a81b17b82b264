"""Reading the offline layout: refusing bad tables, splitting by time, joining as of time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from offline_frames import tiny_tables

from recsys_workloads.artifact_store import Store
from recsys_workloads.runtime import BadInputError
from recsys_workloads.train.data import (
    Interactions,
    asof_rows,
    latest_rows,
    per_user_split,
    read_table,
    time_split,
    validate_entity_table,
    validate_interactions,
)


@pytest.fixture
def inter() -> pa.Table:
    return tiny_tables()["interactions"]


def test_valid_interactions_are_sorted_by_time(inter: pa.Table) -> None:
    shuffled = inter.take(np.random.default_rng(0).permutation(inter.num_rows))
    got = validate_interactions(shuffled)
    assert len(got) == inter.num_rows
    assert np.all(np.diff(got.times_us) >= 0)
    assert got.ratings.dtype == np.float32


def test_missing_column_is_named(inter: pa.Table) -> None:
    with pytest.raises(BadInputError, match=r"interactions: missing column\(s\) 'item_id'"):
        validate_interactions(inter.drop_columns(["item_id"]))


def test_string_ids_are_refused_by_column(inter: pa.Table) -> None:
    bad = inter.set_column(0, "user_id", pc.cast(inter["user_id"], pa.string()))
    with pytest.raises(BadInputError, match=r"'user_id' must be an integer type.*found string"):
        validate_interactions(bad)


def test_integer_event_time_is_refused(inter: pa.Table) -> None:
    ints = pc.cast(pc.cast(inter["event_timestamp"], pa.timestamp("us")), pa.int64())
    bad = inter.set_column(3, "event_timestamp", ints)
    with pytest.raises(BadInputError, match=r"'event_timestamp' must be a timestamp.*found int64"):
        validate_interactions(bad)


def test_non_numeric_rating_is_refused(inter: pa.Table) -> None:
    bad = inter.set_column(2, "rating", pc.cast(inter["rating"], pa.string()))
    with pytest.raises(BadInputError, match=r"'rating' must be numeric"):
        validate_interactions(bad)


def test_empty_interactions_are_refused(inter: pa.Table) -> None:
    with pytest.raises(BadInputError, match="interactions: the table has no rows"):
        validate_interactions(inter.slice(0, 0))


def test_null_ids_are_refused(inter: pa.Table) -> None:
    ids = pa.array([None, *inter["item_id"].to_pylist()[1:]], pa.int64())
    with pytest.raises(BadInputError, match=r"'item_id' has 1 null"):
        validate_interactions(inter.set_column(1, "item_id", ids))


def test_rating_is_optional(inter: pa.Table) -> None:
    got = validate_interactions(inter.drop_columns(["rating"]))
    assert np.all(got.ratings == 1.0)


def test_entity_table_feature_list_must_name_columns() -> None:
    users = tiny_tables()["users"]
    with pytest.raises(BadInputError, match=r"features.user: \['height'\] are not columns"):
        validate_entity_table(users, "user", "user_id", ["age", "height"])
    table, names = validate_entity_table(users, "user", "user_id", None)
    assert names == ["age", "gender", "occupation"]
    assert table.num_rows == users.num_rows


def test_entity_table_without_rows_is_refused() -> None:
    users = tiny_tables()["users"]
    with pytest.raises(BadInputError, match="users table: the table has no rows"):
        validate_entity_table(users.slice(0, 0), "user", "user_id", None)


def test_time_split_trains_on_the_past_only(inter: pa.Table) -> None:
    split = time_split(validate_interactions(inter), 0.2)
    assert split.train.times_us.max() < split.cutoff_us <= split.test.times_us.min()
    assert len(split.train) + len(split.test) == inter.num_rows
    assert 0.15 < len(split.test) / inter.num_rows < 0.25


def test_time_split_needs_two_distinct_times(inter: pa.Table) -> None:
    same = inter.set_column(
        3,
        "event_timestamp",
        pa.array(
            [inter["event_timestamp"][0].as_py()] * inter.num_rows,
            inter.schema.field("event_timestamp").type,
        ),
    )
    with pytest.raises(BadInputError, match="holdoutFraction"):
        time_split(validate_interactions(same), 0.1)


def test_asof_join_never_takes_a_row_from_the_future() -> None:
    keys = np.array([1, 1, 1, 2], np.int64)
    times = np.array([10, 20, 30, 15], np.int64)
    q_keys = np.array([1, 1, 1, 1, 2, 2, 3], np.int64)
    q_times = np.array([5, 10, 25, 99, 14, 15, 50], np.int64)
    rows = asof_rows(keys, times, q_keys, q_times)
    assert rows.tolist() == [-1, 0, 1, 2, -1, 3, -1]
    # brute force: for every query, the latest row of its key with time <= query time
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 5, 200)
    times = rng.integers(0, 1000, 200)
    q_keys = rng.integers(0, 6, 300)
    q_times = rng.integers(0, 1000, 300)
    rows = asof_rows(keys, times, q_keys, q_times)
    for q, r in enumerate(rows):
        ok = np.flatnonzero((keys == q_keys[q]) & (times <= q_times[q]))
        if ok.size == 0:
            assert r == -1
        else:
            assert times[r] == times[ok].max()
            assert keys[r] == q_keys[q]


def test_latest_rows_as_of() -> None:
    keys = np.array([1, 1, 2, 2, 3], np.int64)
    times = np.array([10, 20, 5, 50, 60], np.int64)
    assert sorted(latest_rows(keys, times, None).tolist()) == [1, 3, 4]
    assert sorted(latest_rows(keys, times, 30).tolist()) == [1, 2]


def test_read_table_missing_file_and_non_parquet(tmp_path: Path) -> None:
    store = Store({})
    with pytest.raises(BadInputError, match="does not exist"):
        read_table(store, str(tmp_path / "nope.parquet"), "interactions")
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(BadInputError, match="not readable parquet"):
        read_table(store, str(junk), "interactions")


def test_read_table_keeps_only_requested_columns(tmp_path: Path, inter: pa.Table) -> None:
    path = tmp_path / "i.parquet"
    pq.write_table(inter.append_column("extra", pa.array([1] * inter.num_rows)), path)
    got = read_table(Store({}), f"file://{path}", "interactions", ["user_id", "rating", "absent"])
    assert got.schema.names == ["user_id", "rating"]


def test_history_matrix_is_most_recent_first_cut_and_padded() -> None:
    from recsys_workloads.train.dataset import history_matrix

    seq = np.array([5, 6, 7, 8, 9], np.int64)  # user A: 5 6 7, user B: 8 9
    starts = np.array([0, 0, 0, 3, 3])
    ends = np.array([0, 1, 3, 3, 5])
    got = history_matrix(seq, starts, ends, 2)
    assert got.tolist() == [[0, 0], [5, 0], [7, 6], [0, 0], [9, 8]]


def test_training_history_holds_only_earlier_items_of_the_same_user(inter: pa.Table) -> None:
    from recsys_workloads.train.config import parse_train_config
    from recsys_workloads.train.dataset import history_matrix, prepare

    cfg = parse_train_config(
        {
            "data": {"interactionsUri": "-"},
            "artifactUri": "memory://x",
            "model": {"historyLength": 4},
        }
    )
    p = prepare(cfg, validate_interactions(inter), None, None)
    train = p.split.train
    hist = history_matrix(p.history_seq, p.train_hist_start, p.train_hist_end, 4)
    vocab = p.items.encoder.ids
    for j in range(len(train)):
        earlier = (train.user_ids == train.user_ids[j]) & (train.times_us < train.times_us[j])
        allowed = set(vocab.encode(train.item_ids[earlier]).tolist())
        got = [i for i in hist[j].tolist() if i]
        assert set(got) <= allowed
        assert len(got) == min(4, int(earlier.sum()))
    last = p.history_of(np.array([train.user_ids[-1]]))
    mine = train.item_ids[train.user_ids == train.user_ids[-1]]
    assert last[0, 0] == vocab.encode(mine[-1:])[0]


def _interactions(rows: list[tuple[int, int, int]]) -> Interactions:
    """(user, item, time) rows, in the validated order (time, user, item)."""
    rows = sorted(rows, key=lambda r: (r[2], r[0], r[1]))
    a = np.array(rows, dtype=np.int64).reshape(-1, 3)
    return Interactions(a[:, 0], a[:, 1], np.ones(len(rows), np.float32), a[:, 2])


@pytest.mark.parametrize(
    ("rows", "fraction", "held_out"),
    [
        # each user's newest interactions test, whatever the others did meanwhile
        ([(1, 10, 1), (1, 11, 2), (1, 12, 9), (2, 20, 3), (2, 21, 4)], 0.4, {(1, 12), (2, 21)}),
        # ten interactions at 0.2: the last two; a lone interaction only trains
        ([(1, i, i) for i in range(10)] + [(3, 30, 5)], 0.2, {(1, 8), (1, 9)}),
        # a high fraction still keeps one interaction to train on
        ([(1, 10, 1), (1, 11, 2), (1, 12, 3)], 0.9, {(1, 11), (1, 12)}),
    ],
)
def test_per_user_split_holds_out_each_users_last_interactions(
    rows: list[tuple[int, int, int]], fraction: float, held_out: set[tuple[int, int]]
) -> None:
    split = per_user_split(_interactions(rows), fraction)
    test = set(zip(split.test.user_ids.tolist(), split.test.item_ids.tolist(), strict=True))
    assert test == held_out
    assert len(split.train) + len(split.test) == len(rows)
    assert split.cutoff_us == split.train.times_us.max() + 1


def test_per_user_split_needs_a_user_with_two_interactions() -> None:
    with pytest.raises(BadInputError, match="per-user split"):
        per_user_split(_interactions([(1, 10, 1), (2, 20, 2)]), 0.1)
