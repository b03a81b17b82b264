"""A FeatureView run split over shards (``shards`` > 1, the pods of one Indexed Job) against a
real redis-server and a real Redis Cluster.

The shards run at once, as separate processes through the real entry point (and as threads
where only the Redis protocol matters); what they leave must be exactly what one unsplit run
leaves, every entity's hash compared. A shard that never finishes leaves the live version as
it was, the lock is its run's until the lease lapses, and the next run reclaims the layer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster
from test_materialize import HOUR, T0, VIEW, make_config, row, run, write_ages, write_rows

import recsys_contract
import recsys_operator
from recsys_contract.keyspace import FeatureViewKeys, LivePointer
from recsys_contract.termination import EXIT_TRANSIENT
from recsys_operator.planning.jobstatus import job_outcome, termination_summary
from recsys_operator.planning.pods import MAIN_CONTAINER
from recsys_workloads import materialize
from recsys_workloads.featurestore.reader import read_online_features
from recsys_workloads.materialize import Shard
from recsys_workloads.runtime import BadInputError, TransientError
from testbed.redis_server import RedisCluster, start_redis

pytestmark = pytest.mark.redis

KEYS = FeatureViewKeys.of(VIEW)
USERS = 300


@pytest.fixture(autouse=True)
def _no_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_PASSWORD", raising=False)


def day_files(folder: Path, users: int = USERS) -> str:
    """Three daily files, each with a row for most users: an entity's latest row may be in any
    of them (and one row per user lies after asOf), so a split by file would be wrong."""
    for day in range(3):
        at = T0 - timedelta(days=2 - day) - HOUR
        rows = [row(u, at + u * timedelta(seconds=1), 20 + (u * 7 + day) % 60)
                for u in range(users) if (u + day) % 5]  # fmt: skip
        rows += [row(u, T0 + HOUR, 99) for u in range(0, users, 17)]  # after asOf: never read
        write_rows(folder / f"day-{day}.parquet", rows)
    return str(folder)


def keyspace(client: redis.Redis, keys: FeatureViewKeys = KEYS) -> dict[str, dict[bytes, bytes]]:
    """Every live entity hash, by entity id (layer numbers left out): what readers can get."""
    pointer = LivePointer.from_json(client.get(keys.live) or b"")
    out: dict[str, dict[bytes, bytes]] = {}
    for layer in reversed(pointer.layers):  # oldest first: newer layers win, as for a reader
        head = keys.layer(layer)
        found = list(client.scan_iter(match=head + "*", count=10_000))
        pipe = client.pipeline(transaction=False)
        for key in found:
            pipe.hgetall(key)
        for key, value in zip(found, pipe.execute(), strict=True):
            entity = key.decode()[len(head) :]
            if entity not in out or value[b"t"] >= out[entity][b"t"]:
                out[entity] = value
    return out


def pointer_shape(client: redis.Redis) -> dict[str, Any]:
    """The live pointer without what differs between two equal runs (numbers, times, run)."""
    data = json.loads(client.get(KEYS.live) or b"{}")
    for volatile in ("layers", "switched_at_us", "run"):
        data.pop(volatile)
    return data


def start_shards(
    config: dict[str, Any], shards: int, tmp_path: Path, run_id: str, only: list[int] | None = None
) -> list[tuple[Path, subprocess.Popen[bytes]]]:
    """Start every shard (or ``only`` some) at once, each its own process through the real
    entry point, the way the Indexed Job's pods run (the index and the run id in the
    environment); each with the path of its termination message."""
    config_path = tmp_path / f"sharded-{run_id}.json"
    config_path.write_text(json.dumps({**config, "shards": shards}))
    # the packages of this checkout, whatever the environment's editable install points at
    roots = [str(Path(m.__file__).parents[1]) for m in (recsys_contract, recsys_operator)]
    roots.append(str(Path(materialize.__file__).parents[1]))
    pythonpath = os.pathsep.join([*roots, os.environ.get("PYTHONPATH", "")])
    procs = []
    for index in only if only is not None else range(shards):
        env = {**os.environ, "PYTHONPATH": pythonpath, "JOB_COMPLETION_INDEX": str(index),
               "RECSYS_RUN_ID": run_id}  # fmt: skip
        log = tmp_path / f"log-{run_id}-{index}-{time.monotonic_ns()}"
        procs.append((log, subprocess.Popen(
            [sys.executable, "-m", "recsys_workloads.materialize", "--config", str(config_path),
             "--termination-log", str(log)], env=env,
        )))  # fmt: skip
    return procs


def finished(procs: list[tuple[Path, subprocess.Popen[bytes]]]) -> list[tuple[int, dict[str, Any]]]:
    return [(proc.wait(timeout=300), json.loads(log.read_text())) for log, proc in procs]


def shard_processes(
    config: dict[str, Any], shards: int, tmp_path: Path, run_id: str
) -> list[tuple[int, dict[str, Any]]]:
    """Run every shard at once as its own process; exit codes and termination messages."""
    return finished(start_shards(config, shards, tmp_path, run_id))


def shard_threads(
    config: dict[str, Any], shards: int, run_id: str, only: list[int] | None = None
) -> list[dict[str, Any] | BaseException]:
    """Run the shards (or ``only`` some) at once in threads of this process."""
    cfg = materialize.parse_config({**config, "shards": shards})

    def one(index: int) -> dict[str, Any] | BaseException:
        try:
            return materialize.materialize(cfg, None, shard=Shard(index, shards, run_id))
        except (TransientError, BadInputError) as exc:
            return exc

    with ThreadPoolExecutor(shards) as pool:
        return list(pool.map(one, only if only is not None else range(shards)))


def reporting(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The one summary that is not a worker's: the shard that switched."""
    (summary,) = [r for r in results if r.get("role") != "worker"]
    return summary


@pytest.mark.parametrize("shards", [2, 3])
def test_shards_as_processes_leave_exactly_the_keyspace_of_one_run(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, shards: int
) -> None:
    config = make_config(day_files(tmp_path / "users"), redis_url)
    code, single = run(config, tmp_path)
    assert code == 0, single
    expected, expected_pointer = keyspace(redis_client), pointer_shape(redis_client)
    assert len(expected) == single["entitiesWritten"] > 200
    redis_client.flushdb()

    results = shard_processes(config, shards, tmp_path, uuid.uuid4().hex)
    assert [code for code, _ in results] == [0] * shards, results
    summaries = [summary for _, summary in results]
    total = reporting(summaries)
    workers = [s for s in summaries if s.get("role") == "worker"]
    assert len(workers) == shards - 1
    assert (total["rowsRead"], total["entitiesWritten"]) == (
        single["rowsRead"],
        single["entitiesWritten"],
    )
    assert total["shards"] == shards
    assert total["layers"] == [total["version"]]
    assert all(w["entitiesWritten"] > 0 for w in workers)  # each shard had a share
    assert keyspace(redis_client) == expected
    assert pointer_shape(redis_client) == expected_pointer
    # every key expires where the unsplit run's did: TTLs count from the same instant
    one = KEYS.layer(total["version"]) + "1"
    assert 0 < redis_client.pttl(one) <= 24 * 3600_000
    # the run's lock is released, its layer is live (out of the book of layers to reclaim)
    assert redis_client.get(KEYS.lock) is None
    assert redis_client.hgetall(KEYS.layers) == {}


def test_a_shard_that_never_finishes_switches_nothing_and_its_layer_is_reclaimed(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    source = day_files(tmp_path / "users")
    config = make_config(source, redis_url, lockLeaseSeconds=2)
    code, first = run(config, tmp_path)
    assert code == 0, first
    before, served = redis_client.get(KEYS.live), keyspace(redis_client)

    # shard 1 of 2 runs alone: shard 0's pod died (or was never retried successfully)
    (alone,) = shard_threads(config, 2, "run-a", only=[1])
    assert isinstance(alone, dict), alone
    assert alone["role"] == "worker"
    assert redis_client.get(KEYS.live) == before
    assert keyspace(redis_client) == served
    orphan = int(redis_client.hget(KEYS.run, "layer") or 0)
    assert redis_client.hget(KEYS.layers, str(orphan)).startswith(b"writing:")  # type: ignore[union-attr]
    assert redis_client.get(KEYS.lock) == b"run-a"

    # another run (split or not) is refused while run-a's lease holds
    (other,) = shard_threads(config, 2, "run-b", only=[0])
    assert isinstance(other, TransientError), other
    assert "holds" in str(other)
    code, unsplit = run(config, tmp_path)
    assert (code, unsplit["reason"]) == (75, "Transient"), unsplit
    assert redis_client.get(KEYS.live) == before

    time.sleep(2.5)  # run-a's lease lapses: nobody refreshes it any more
    code, after = run(config, tmp_path)
    assert code == 0, after
    assert orphan in after["reclaimedLayers"]
    assert not list(redis_client.scan_iter(match=KEYS.layer(orphan) + "*", count=10_000))
    assert keyspace(redis_client) == served  # the same source: the same values


def test_a_shard_killed_mid_write_switches_nothing_and_its_retry_completes_the_run(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    big = write_ages(tmp_path / "big.parquet", 100_000, age=1)
    config = make_config(
        str(big), redis_url, batchRows=500, features=[{"name": "age", "type": "int32"}]
    )
    code, single = run(config, tmp_path)
    assert code == 0, single
    expected = keyspace(redis_client)
    redis_client.flushdb()

    procs = start_shards(config, 2, tmp_path, "killed")
    (log0, shard0), (_, shard1) = procs
    try:
        deadline = time.monotonic() + 60
        while redis_client.dbsize() < 3_000:  # both shards are writing their shares
            assert shard1.poll() is None, "shard 1 ended before it could be killed mid-write"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        shard1.kill()  # the pod's node died
    finally:
        shard1.wait()
    ((code, worker),) = finished([(log0, shard0)])
    assert code == 0, worker
    assert worker["role"] == "worker"
    assert redis_client.get(KEYS.live) is None  # nothing switched: shard 1 never finished
    assert redis_client.get(KEYS.lock) == b"killed"  # the run keeps its lock for the retry

    ((code, total),) = finished(start_shards(config, 2, tmp_path, "killed", only=[1]))
    assert code == 0, total
    assert total.get("role") != "worker"
    assert total["entitiesWritten"] == single["entitiesWritten"] == 100_000
    assert keyspace(redis_client) == expected  # the retry rewrote its share: no gap, no extra
    assert redis_client.get(KEYS.lock) is None


def test_a_retried_shard_completes_the_run_and_a_late_retry_does_nothing(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    config = make_config(day_files(tmp_path / "users"), redis_url)
    code, single = run(config, tmp_path)
    assert code == 0
    expected = keyspace(redis_client)
    redis_client.flushdb()

    first, second = shard_threads(config, 2, "run-r", only=[0, 0])  # shard 0 twice at once
    assert isinstance(first, dict)
    assert isinstance(second, dict)
    assert redis_client.get(KEYS.live) is None  # shard 1 has not written yet
    (last,) = shard_threads(config, 2, "run-r", only=[1])  # shard 1, "retried" later
    assert isinstance(last, dict), last
    assert last.get("role") != "worker"
    assert last["entitiesWritten"] == single["entitiesWritten"]  # shard 0 counted once
    assert keyspace(redis_client) == expected
    version = last["version"]

    (late,) = shard_threads(config, 2, "run-r", only=[0])  # a pod retried after the switch
    assert isinstance(late, dict), late
    assert late["alreadySwitched"] is True
    assert json.loads(redis_client.get(KEYS.live) or b"")["layers"] == [version]
    assert redis_client.get(KEYS.lock) is None


def test_split_incremental_run_then_a_full_one_retires_the_chain(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    folder = tmp_path / "users"
    write_rows(folder / "part-0.parquet", [row(u, T0 - HOUR, 20 + u % 50) for u in range(USERS)])
    config = make_config(str(folder), redis_url, graceSeconds=30)
    full = reporting([r for r in shard_threads(config, 3, "full") if isinstance(r, dict)])
    assert (full["mode"], full["entitiesWritten"]) == ("full", USERS)

    changed = [row(u, T0 + HOUR / 2, 90) for u in (3, 150, 299)]
    write_rows(folder / "part-1.parquet", changed)
    later = {**config, "asOf": (T0 + HOUR).isoformat()}
    results = shard_threads(later, 3, "inc")
    inc = reporting([r for r in results if isinstance(r, dict)])
    assert (inc["mode"], inc["rowsRead"], inc["entitiesWritten"]) == ("incremental", 3, 3)
    assert inc["layers"] == [inc["version"], full["version"]]
    got = read_online_features(redis_client, KEYS, [3, 150, 299, 4]).rows
    assert [r["age"] if r else None for r in got] == [90, 90, 90, 24]

    # a split full run replaces both layers and gives all their keys the grace period
    results = shard_threads({**later, "mode": "full"}, 2, "again")
    last = reporting([r for r in results if isinstance(r, dict)])
    assert sorted(last["retiredLayers"]) == sorted(inc["layers"])
    old = KEYS.layer(full["version"]) + "7"
    assert 0 < redis_client.pttl(old) <= 30_000
    assert len(keyspace(redis_client)) == USERS
    got = read_online_features(redis_client, KEYS, [3, 150, 299, 4]).rows
    assert [r["age"] if r else None for r in got] == [90, 90, 90, 24]


def test_a_split_run_over_an_empty_window_is_bad_input_and_switches_nothing(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    source = write_rows(tmp_path / "users.parquet", [row(1, T0 + HOUR, 30)])  # after asOf only
    results = shard_threads(make_config(source, redis_url), 2, "empty")
    (failed,) = [r for r in results if isinstance(r, BaseException)]
    assert isinstance(failed, BadInputError)
    assert "has no rows" in str(failed)
    assert redis_client.get(KEYS.live) is None
    assert redis_client.get(KEYS.lock) is None  # the last shard gave it back


def test_split_run_on_a_redis_cluster(
    tmp_path: Path, redis_cluster: RedisCluster, cluster_prefix: str
) -> None:
    keys = FeatureViewKeys.of(VIEW, cluster_prefix)
    source = day_files(tmp_path / "users")
    online = {"redisUrl": redis_cluster.url, "redisCluster": True, "keyPrefix": cluster_prefix}
    config = make_config(source, redis_cluster.url, onlineStore=online)
    results = shard_threads(config, 3, "on-cluster")
    assert all(isinstance(r, dict) for r in results), results
    total = reporting([r for r in results if isinstance(r, dict)])
    client = redis.cluster.RedisCluster.from_url(redis_cluster.url)
    try:
        pointer = json.loads(client.get(keys.live))  # type: ignore[arg-type]
        assert pointer["layers"] == [total["version"]]
        got = read_online_features(client, keys, [1, 2, USERS + 5]).rows
        assert got[0] is not None
        assert got[1] is not None
        assert got[2] is None
        assert client.get(keys.lock) is None
    finally:
        client.close()


def _pod(log: Path, finished: int) -> dict[str, Any]:
    """A finished pod of the Job as the apiserver shows it, with a shard's termination message."""
    term = {"message": log.read_text(), "finishedAt": f"2026-01-01T00:00:{finished:02d}Z"}
    return {"status": {"containerStatuses": [{"name": MAIN_CONTAINER,
                                              "state": {"terminated": term}}]}}  # fmt: skip


@pytest.mark.chaos
def test_redis_restarted_mid_split_run_switches_nothing_and_the_job_is_not_called_a_success(
    tmp_path: Path,
) -> None:
    """Chaos: shard 0 of 2 has finished its share, and Redis is killed while shard 1 writes,
    then started again on its port (empty: it keeps nothing across a restart). Shard 1 fails
    as transient; its retry (the Indexed Job's, same run id) finds no record of the run on the
    new server, books it anew and ends as a worker whose partner will never come: nothing is
    switched, so no half-written version goes live. Every pod of the Job then ended well, and
    the operator must not read that as a run that made data live. The next run, once the
    orphaned run's lease lapses, makes every entity live and reclaims the orphan's layer."""
    entities = 300_000
    big = write_ages(tmp_path / "big.parquet", entities, age=7)
    server = start_redis(databases=1)
    config = make_config(str(big), server.url, batchRows=500, lockLeaseSeconds=2,
                         features=[{"name": "age", "type": "int32"}])  # fmt: skip
    back = None
    try:
        client = redis.Redis.from_url(server.url)
        ((code, first),) = finished(start_shards(config, 2, tmp_path, "r1", only=[0]))
        assert (code, first["role"]) == (0, "worker"), first
        written = client.dbsize()

        ((log1, shard1),) = start_shards(config, 2, tmp_path, "r1", only=[1])
        deadline = time.monotonic() + 60
        while client.dbsize() < written + 1_000:  # shard 1 is writing its share
            assert shard1.poll() is None, "shard 1 ended before Redis could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        server.stop()
        time.sleep(0.3)
        back = start_redis(databases=1, port=server.port)
        ((code, failed),) = finished([(log1, shard1)])
        assert code == EXIT_TRANSIENT, failed
        assert failed["reason"] == "Transient"

        ((code, retry),) = finished(start_shards(config, 2, tmp_path, "r1", only=[1]))
        log_retry = sorted(tmp_path.glob("log-r1-1-*"))[-1]
        assert (code, retry["role"]) == (0, "worker"), retry
        client = redis.Redis.from_url(back.url)
        assert client.get(KEYS.live) is None, "a run switched over a lost record"
        orphan = int(client.hget(KEYS.run, "layer") or 0)
        layer_keys = KEYS.layer(orphan) + "*"
        assert next(client.scan_iter(match=layer_keys, count=10_000), None), "the retry wrote"

        # What the operator reads from the Job's three pods: not a run that made data live.
        logs = [sorted(tmp_path.glob("log-r1-0-*"))[-1], log1, log_retry]
        outcome = job_outcome(
            {"metadata": {"name": "fv-run"}, "status": {"conditions": [
                {"type": "Complete", "status": "True"}]}},
            termination_summary([_pod(log, i) for i, log in enumerate(logs)]),
        )  # fmt: skip
        print(f"\nchaos: Redis restarted mid split run: {outcome.reason}: {outcome.message}")
        assert (outcome.finished, outcome.succeeded) == (True, False)
        assert outcome.reason == "ResultNotReported"

        # The next run, once the orphan's lease has lapsed, makes every entity live.
        time.sleep(2.5)
        results = finished(start_shards(config, 2, tmp_path, "r2"))
        assert [c for c, _ in results] == [0, 0], results
        total = reporting([r for _, r in results])
        assert total["entitiesWritten"] == entities
        rows = read_online_features(client, KEYS, list(range(0, entities, 997))).rows
        assert all(r == {"age": 7} for r in rows)
        assert not next(client.scan_iter(match=layer_keys, count=10_000), None), "not reclaimed"
        assert client.get(KEYS.lock) is None
    finally:
        server.stop()
        if back is not None:
            back.stop()
