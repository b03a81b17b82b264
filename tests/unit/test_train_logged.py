"""Logged rows as training data: real partitions as the log join writes them, read by the
training reader and by a whole training run."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from offline_frames import START, tiny_tables, train_config, write_config, write_tables

from recsys_contract.formats import join_uri
from recsys_workloads.artifact_store import Store
from recsys_workloads.gateway.served_log import EventRecord, ServedRecord
from recsys_workloads.logjoin import Served, _parquet, join_rows, partition_files
from recsys_workloads.runtime import EXIT_OK
from recsys_workloads.train.__main__ import main
from recsys_workloads.train.data import asof_rows, timestamps_us
from recsys_workloads.train.logged import read_logged, with_served_features

DAY = dt.timedelta(days=1)


def ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


def response(n: int, user: int, served: dt.datetime, items: list[int], **features: Any) -> Served:
    rec = ServedRecord(
        request_id=f"r{n}-s",
        ts_ms=ms(served),
        user_id=user,
        variant="stable",
        model_version="m-v1",
        index="",
        fallback=None,
        items=[(i, 0.5) for i in items],
        candidates=items,
        features=features or None,
    )
    return Served(f"{ms(served)}-{n}", rec)


def write_batch(
    out: str, served: list[Served], events: list[EventRecord], joined: dt.datetime
) -> list[str]:
    """What one log join run writes for this batch."""
    store = Store({})
    names = []
    for name, group in partition_files(served).items():
        table, _ = join_rows(group, events, ms(joined))
        store.write_bytes(join_uri(out, name), _parquet(table))
        names.append(name)
    return names


@pytest.fixture
def logged(tmp_path: Path) -> str:
    """Two runs: the first joins two days of responses, the second one more a week later."""
    out = str(tmp_path / "logged")
    day1, day2 = START + 10 * DAY, START + 11 * DAY
    first = [
        response(1, 500, day1, [150, 151], age=33, gender="F", occupation="job1"),
        response(2, 3, day2, [152, 153]),
    ]
    clicks = [
        EventRecord("r1-s", ms(day1) + 5_000, "click", 150, 500),
        EventRecord("r2-s", ms(day2) + 5_000, "purchase", 153, 3),
    ]
    assert len(write_batch(out, first, clicks, day2 + DAY)) == 2
    later = START + 20 * DAY
    write_batch(
        out,
        [response(3, 4, later, [160])],
        [EventRecord("r3-s", ms(later) + 1, "click", 160, 4)],
        later + DAY,
    )
    return out


def test_no_partitions_yet_is_no_logged_data(tmp_path: Path) -> None:
    data = read_logged(Store({}), str(tmp_path / "nothing"), None, START)
    assert len(data.interactions) == 0
    assert data.lineage is not None
    assert (data.lineage.files, data.lineage.rows, data.lineage.partitions) == (0, 0, [])
    assert data.lineage.until == "2024-01-01T00:00:00Z"


def test_clicked_rows_become_interactions_at_the_outcome_time(logged: str) -> None:
    data = read_logged(Store({}), logged, None, None)
    assert data.lineage is not None
    assert (data.lineage.files, data.lineage.rows, data.lineage.interactions) == (3, 5, 3)
    assert data.lineage.partitions == ["date=2024-01-11", "date=2024-01-12", "date=2024-01-21"]
    assert data.lineage.first_served == "2024-01-11T00:00:00Z"
    order = np.argsort(data.interactions.times_us)
    inter = data.interactions
    assert inter.user_ids[order].tolist() == [500, 3, 4]
    assert inter.item_ids[order].tolist() == [150, 153, 160]
    assert inter.ratings[order].tolist() == [1.0, 2.0, 1.0]  # a purchase rates 2
    assert inter.times_us[order][0] == (ms(START + 10 * DAY) + 5_000) * 1000


@pytest.mark.parametrize(
    ("since", "until", "users", "partitions"),
    [
        # rows joined after ``until`` are not read: a retry reads the same rows
        (None, START + 13 * DAY, [3, 500], ["date=2024-01-11", "date=2024-01-12"]),
        (None, START + 12 * DAY, [], []),
        (START + 11 * DAY, None, [3, 4], ["date=2024-01-12", "date=2024-01-21"]),
        (START + 11 * DAY, START + 13 * DAY, [3], ["date=2024-01-12"]),
    ],
)
def test_only_the_time_range_is_read(
    logged: str,
    since: dt.datetime | None,
    until: dt.datetime | None,
    users: list[int],
    partitions: list[str],
) -> None:
    data = read_logged(Store({}), logged, since, until)
    assert sorted(data.interactions.user_ids.tolist()) == users
    assert data.lineage is not None
    assert data.lineage.partitions == partitions


def test_served_features_join_the_logged_interactions(logged: str) -> None:
    users = tiny_tables()["users"]
    data = read_logged(Store({}), logged, None, None)
    joined, used = with_served_features(users, data)
    assert used
    assert joined.num_rows == users.num_rows + 1  # only r1 carried features
    # the interaction's as-of row is the served one, with what serving saw
    rows = asof_rows(
        np.asarray(joined.column("user_id").to_numpy()),
        timestamps_us(joined.column("event_timestamp")),
        data.interactions.user_ids,
        data.interactions.times_us,
    )
    at = int(rows[data.interactions.user_ids.tolist().index(500)])
    assert joined.slice(at, 1).to_pylist()[0] | {"event_timestamp": None} == {
        "user_id": 500, "event_timestamp": None, "age": 33, "gender": "F", "occupation": "job1"
    }  # fmt: skip
    # served values that do not fit the table's columns leave the batch features alone
    odd = users.set_column(2, "age", pa.array([["x"]] * users.num_rows, pa.list_(pa.string())))
    assert with_served_features(odd, data) == (odd, False)


def test_the_next_training_reads_the_logged_rows(logged: str, tmp_path: Path) -> None:
    paths = write_tables(tmp_path / "tiny", tiny_tables())
    cfg = train_config(
        paths,
        f"file://{tmp_path}/artifact",
        data={**train_config(paths, "")["data"], "loggedUri": logged,
              "loggedUntil": "2024-02-01T00:00:00Z"},
    )  # fmt: skip
    term = tmp_path / "termination"
    config = write_config(tmp_path / "c.json", cfg)
    code = main(["--config", str(config), "--termination-log", str(term)])
    summary = json.loads(term.read_text())
    assert code == EXIT_OK, summary
    lineage = summary["lineage"]
    assert lineage["interactionsUri"] == paths["interactions"]
    assert lineage["interactions"] == 800
    assert lineage["logged"]["uri"] == logged
    assert (lineage["logged"]["rows"], lineage["logged"]["interactions"]) == (5, 3)
    assert lineage["logged"]["servedFeatures"] is True
    assert lineage["logged"]["until"] == "2024-02-01T00:00:00Z"
    # user 500 exists only in the logged rows: the model learnt it
    encoders = json.loads((tmp_path / "artifact" / "encoders.json").read_text())
    assert 500 in encoders["user"]["ids"]
    # a rerun after publishing reports the same lineage (it is kept in the manifest)
    term.unlink()
    code = main(["--config", str(tmp_path / "c.json"), "--termination-log", str(term)])
    again = json.loads(term.read_text())
    assert again["alreadyPublished"] is True
    assert again["lineage"] == lineage
