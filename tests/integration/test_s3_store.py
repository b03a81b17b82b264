"""``s3://`` on real parts: SeaweedFS's S3 gateway (tests/testbed/s3_server.py), reached the
way a pod reaches it, through the artifact-store Secret's variables in the environment
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL) and no storage options at all.

A versioned artifact round trip, the failure sorting (a missing bucket is bad input naming the
URI and is never created; an unreachable endpoint is transient), materialization of a
FeatureView from s3:// parquet into a real Redis, and one training + index run reading its
data from and writing its artifacts to the store, each through the workload's entry point.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
import s3fs
from serving_support import tiny_train_config

from recsys_contract.keyspace import FeatureViewKeys
from recsys_workloads import materialize
from recsys_workloads.artifact_store import ArtifactReader, ArtifactWriter, Store
from recsys_workloads.datasets import movielens
from recsys_workloads.featurestore.reader import read_online_features
from recsys_workloads.index_build import load_index
from recsys_workloads.index_build import main as index_main
from recsys_workloads.runtime import EXIT_OK, BadInputError, TransientError
from recsys_workloads.train.__main__ import main as train_main
from testbed.processes import free_port
from testbed.s3_server import S3Server

pytestmark = pytest.mark.s3


@pytest.fixture(autouse=True)
def _fresh_s3fs() -> Iterator[None]:
    """fsspec caches a filesystem per storage options, not per environment: each test opens
    its own, with the endpoint and keys its environment holds (as each pod does)."""
    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


def entry(main: Any, tmp: Path, name: str, cfg: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Run a workload's real entry point; its exit code and termination message."""
    config, term = tmp / f"{name}.json", tmp / f"{name}.termination"
    config.write_text(json.dumps(cfg))
    code = main(["--config", str(config), "--termination-log", str(term)])
    return code, json.loads(term.read_text())


def test_artifact_round_trip_through_the_environment_alone(
    s3_bucket: str, s3_env: S3Server
) -> None:
    store = Store({})  # what every workload config carries: the endpoint comes from the env
    uri = f"s3://{s3_bucket}/recsys/models/v1"
    writer = ArtifactWriter(store, uri, "model")
    writer.put("weights/tower.bin", b"\x00\x01" * 1000)
    writer.put_json("metrics.json", {"recall@10": 0.25})
    manifest = writer.publish({"version": "v1"})

    # on the server itself, as a second client sees it
    client = s3_env.client()
    listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="recsys/models/v1/")
    keys = sorted(o["Key"] for o in listed["Contents"])
    assert keys == [
        "recsys/models/v1/manifest.json",
        "recsys/models/v1/metrics.json",
        "recsys/models/v1/weights/tower.bin",
    ]
    got = client.get_object(Bucket=s3_bucket, Key="recsys/models/v1/manifest.json")
    assert json.loads(got["Body"].read())["digest"] == manifest["digest"]

    reader = ArtifactReader(store, uri, "model")
    assert reader.read("weights/tower.bin") == b"\x00\x01" * 1000
    assert reader.read_json("metrics.json") == {"recall@10": 0.25}

    # modified after publishing: the manifest's sha256 catches it
    client.put_object(Bucket=s3_bucket, Key="recsys/models/v1/metrics.json", Body=b"{}")
    with pytest.raises(BadInputError, match="does not match the sha256"):
        ArtifactReader(store, uri, "model").read("metrics.json")
    # not published (no manifest): refused, not half-read
    with pytest.raises(BadInputError, match="is not published"):
        ArtifactReader(store, f"s3://{s3_bucket}/recsys/models/v2", "model")


def test_wrong_keys_are_refused_by_the_server(
    s3_bucket: str, s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server checks signatures: the identity config is in force, not decoration."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises((BadInputError, TransientError)) as err:
        Store({}).write_bytes(f"s3://{s3_bucket}/x.json", b"{}")
    assert f"s3://{s3_bucket}/x.json" in str(err.value)
    assert s3_env.client().list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0


def test_a_missing_bucket_is_bad_input_naming_the_uri_and_is_not_created(
    s3_env: S3Server,
) -> None:
    store = Store({})
    uri = "s3://no-such-bucket/recsys/models/v1/manifest.json"
    with pytest.raises(BadInputError, match="s3://no-such-bucket/recsys/models/v1") as err:
        store.write_bytes(uri, b"{}")
    assert "does not exist" in str(err.value)
    with pytest.raises(BadInputError, match="s3://no-such-bucket"):
        store.read_bytes(uri)
    with pytest.raises(BadInputError, match="s3://no-such-bucket"):
        ArtifactWriter(store, "s3://no-such-bucket/m", "model").put("a.bin", b"1")
    names = [b["Name"] for b in s3_env.client().list_buckets()["Buckets"]]
    assert "no-such-bucket" not in names


def test_an_unreachable_endpoint_is_transient(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    store = Store({"retries": 1})
    with pytest.raises(TransientError, match=r"unreachable at s3://models/v1/manifest\.json"):
        store.read_bytes("s3://models/v1/manifest.json")
    with pytest.raises(TransientError, match=r"s3://models/v1/a\.bin"):
        store.write_bytes("s3://models/v1/a.bin", b"1")


T0 = datetime(2024, 5, 1, tzinfo=UTC)


def test_materialize_a_feature_view_from_s3_parquet_into_redis(
    s3_bucket: str,
    s3_env: S3Server,
    redis_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("REDIS_PASSWORD", raising=False)
    schema = pa.schema(
        [("user_id", pa.int64()), ("event_timestamp", pa.timestamp("us", tz="UTC")),
         ("age", pa.int32())]
    )  # fmt: skip
    hour = timedelta(hours=1)
    parts = {
        "users/part-0.parquet": [(1, T0 - 3 * hour, 30), (1, T0 - hour, 31)],
        "users/part-1.parquet": [(2, T0 - 2 * hour, 40), (3, T0 + hour, 9)],
    }
    client = s3_env.client()
    for key, rows in parts.items():
        table = pa.Table.from_pylist(
            [dict(zip(schema.names, r, strict=True)) for r in rows], schema=schema
        )
        buf = io.BytesIO()
        pq.write_table(table, buf)
        client.put_object(Bucket=s3_bucket, Key=key, Body=buf.getvalue())
    view = "shop.users"
    config = {
        "featureView": view,
        "joinKey": "user_id",
        "source": {"uri": f"s3://{s3_bucket}/users/", "eventTimestampColumn": "event_timestamp"},
        "features": [{"name": "age", "type": "int32"}],
        "ttlSeconds": 86_400,
        "onlineStore": {"redisUrl": redis_url},
        "asOf": T0.isoformat(),
        "graceSeconds": 60,
    }
    code, summary = entry(materialize.main, tmp_path, "materialize", config)
    assert code == EXIT_OK, summary
    assert (summary["rowsRead"], summary["entitiesWritten"]) == (3, 2)
    rows = read_online_features(redis_client, FeatureViewKeys.of(view), [1, 2, 3]).rows
    assert rows == [{"age": 31}, {"age": 40}, None]  # user 3 is only known after asOf

    # a source in a bucket that does not exist: bad input, the live version untouched
    missing = {**config, "source": {**config["source"], "uri": "s3://no-such-bucket/users/"}}
    code, summary = entry(materialize.main, tmp_path, "missing", missing)
    assert code != EXIT_OK
    assert summary["reason"] == "BadInput", summary
    assert "s3://no-such-bucket/users/" in summary["message"]
    assert read_online_features(redis_client, FeatureViewKeys.of(view), [1]).rows == [{"age": 31}]


def test_train_and_index_with_data_and_artifacts_on_s3(
    s3_bucket: str, s3_env: S3Server, tmp_path: Path
) -> None:
    """The offline chain of test_offline_e2e (its tiny model, one short epoch) with every URI
    on the store: the dataset is written there, training reads it and publishes the model
    there, the index build reads the model and publishes the index there."""
    base = f"s3://{s3_bucket}/recsys"
    paths = movielens.write_dataset(f"{base}/ml-100k")
    artifact, index = f"{base}/models/ml-v1", f"{base}/indexes/ml-v1"
    code, train = entry(train_main, tmp_path, "train", tiny_train_config(paths, artifact, "ml-v1"))
    assert code == EXIT_OK, train
    code, built = entry(
        index_main,
        tmp_path,
        "index",
        {"version": "ml-v1", "modelArtifactUri": artifact, "indexUri": index},
    )
    assert code == EXIT_OK, built
    assert built["modelDigest"] == train["digest"]

    keys = {
        o["Key"]
        for page in s3_env.client().get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
        for o in page.get("Contents", [])
    }
    assert {"recsys/models/ml-v1/manifest.json", "recsys/indexes/ml-v1/manifest.json"} <= keys
    assert "recsys/ml-100k/interactions.parquet" in keys
    store = Store({})
    model = ArtifactReader(store, artifact, "model")
    assert model.manifest["digest"] == train["digest"]
    _index, manifest = load_index(store, index)  # checked against its manifest's sha256
    assert manifest["itemCount"] == train["itemCount"] == built["itemCount"]
