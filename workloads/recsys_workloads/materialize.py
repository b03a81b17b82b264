"""Materialize a FeatureView from its offline parquet source into Redis, blue/green.

``python -m recsys_workloads.materialize --config PATH [--termination-log PATH]``

The config is ``recsys_contract.materialize.MaterializeConfig`` (rendered by the operator from
the FeatureView spec; its module shows an example), the keys ``recsys_contract.keyspace``'s
(``FeatureViewKeys``), the summary ``MaterializeSummary``. The Redis password comes from
``$REDIS_PASSWORD`` (a Secret), never from the config. Feature types are those of
:mod:`recsys_workloads.featurestore.codec`.

What a run does:

1. Validates the config and the source (columns, types, values, emptiness) before it connects
   to Redis, so bad input never touches the live version.
2. Takes the FeatureView's lock, reads the live pointer, reclaims layers that a crashed run left
   or whose grace period is over.
3. Picks the mode: *incremental* when a live version with the same schema, source and TTL exists,
   ``asOf`` is not before its watermark and the chain is shorter than ``maxLayers``; otherwise
   *full*. It reads only the source rows in the window ``(lo, asOf]``, where ``lo`` is the later
   of ``asOf - ttl`` and (incremental) the watermark, and keeps per entity the latest row in it:
   point-in-time correct, a value from after ``asOf`` is never read. Of rows with the same
   event time, the one with the latest ``createdTimestampColumn`` wins (null: earliest), as in
   Feast; without that column, the row read last.
4. Writes those entities into a fresh layer (not yet visible) with large non-transactional
   pipelines (on a Redis Cluster, each key's slot picks its primary and each node gets its own
   pipeline: ``featurestore.resp.NodeWriters``), each key expiring at the end of its value's
   TTL window, measured from now: ``now + (event_time + ttl - asOf)``.
5. Switches the pointer with one compare-and-set: readers see the old version or the new one,
   never a mix. A full run then gives the replaced layers' keys ``graceSeconds`` to live
   (readers that fetched the old pointer finish their reads) and they expire; the few keys of
   entities absent from the new version are unlinked by the first run after the grace period.

Memory: the window's rows are held in memory for the point-in-time selection (about 150 bytes
per row for three features: 10M rows peaked at 1.5 GB RSS); size the Job's memory request
accordingly.

The watermark is ``asOf``: an incremental run reads rows with event time after it. Rows that
arrive late (event time before a watermark already passed) are picked up by the next full run
(``mode: full``, or the compaction every ``maxLayers`` runs).

Exit codes (runtime): 0 done; 2 bad input (config, missing column, wrong type, out-of-range
values, empty source, rejected credentials); 75 transient (Redis unreachable or failing, the
source store unreachable, another run holds the lock). The termination message is a JSON
summary: rows read, entities written, version, layers, watermark, durations, rows per second.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis
from numpy.typing import NDArray

from recsys_contract.keyspace import FeatureViewKeys, LivePointer
from recsys_contract.materialize import MaterializeConfig, MaterializeSummary
from recsys_workloads import runtime
from recsys_workloads.featurestore import codec
from recsys_workloads.featurestore.point_in_time import latest_rows, window_bounds_us
from recsys_workloads.featurestore.resp import (
    Batch,
    NodeWriters,
    hset_commands,
    key_commands,
    take,
)
from recsys_workloads.featurestore.source import OfflineSource, open_source
from recsys_workloads.redis_client import SyncRedis, redis_client, redis_errors, redis_password
from recsys_workloads.runtime import BadInputError, TransientError, run_entrypoint

log = logging.getLogger("recsys_workloads.materialize")
_SCAN_COUNT = 10_000


def parse_config(raw: Any) -> MaterializeConfig:
    return runtime.parse_config(MaterializeConfig, raw, "materialize config")


# --- Redis control operations (small commands through redis-py) ----------------------------

_RELEASE = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)
_REFRESH = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
)
#: KEYS: pointer, layers. ARGV: expected pointer ('' = none), new pointer, new layer ('' = none),
#: retired marker, retired layers...
_SWITCH = """
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('HDEL', KEYS[2], ARGV[3]) end
for i = 5, #ARGV do redis.call('HSET', KEYS[2], ARGV[i], ARGV[4]) end
return 1
"""


@dataclass
class Store:
    """The FeatureView's keys in one Redis database or one Redis Cluster, and the run's lock
    token. The lock and the sequence are single-key commands; the switch's two keys share the
    pointer's slot (``keyspace``), so the same script runs on a cluster."""

    client: SyncRedis
    url: str
    password: str | None
    keys: FeatureViewKeys
    timeout: float
    token: str = ""

    def lock(self, lease_s: int) -> None:
        self.token = uuid.uuid4().hex
        if not self.client.set(self.keys.lock, self.token, nx=True, px=lease_s * 1000):
            raise TransientError(
                f"another materialization of {self.keys.view} holds {self.keys.lock}; "
                "retry when it has finished"
            )

    def refresh(self, lease_s: int) -> None:
        if not self.client.eval(_REFRESH, 1, self.keys.lock, self.token, lease_s * 1000):
            raise TransientError(f"lost the lock of {self.keys.view} (lease expired); retry")

    def unlock(self) -> None:
        with contextlib.suppress(redis.exceptions.RedisError):
            self.client.eval(_RELEASE, 1, self.keys.lock, self.token)

    def live(self) -> tuple[bytes, LivePointer | None]:
        key = self.keys.live
        found = self.client.get(key)
        if not found:
            return b"", None
        raw = found.encode() if isinstance(found, str) else found
        try:
            return raw, LivePointer.from_json(raw)
        except (ValueError, TypeError, KeyError) as exc:
            raise BadInputError(
                f"{key} holds no pointer this version understands ({exc}); delete it and run with "
                "mode: full"
            ) from exc

    def layer_states(self) -> dict[int, str]:
        raw = self.client.hgetall(self.keys.layers)
        return {int(k): v.decode() if isinstance(v, bytes) else v for k, v in raw.items()}

    def new_layer(self, now_us: int) -> int:
        layer = int(self.client.incr(self.keys.seq))
        self.client.hset(self.keys.layers, str(layer), f"writing:{now_us}")
        return layer

    def switch(
        self,
        expected: bytes,
        pointer: LivePointer,
        new_layer: int | None,
        retired: list[int],
        now_us: int,
    ) -> None:
        done = self.client.eval(
            _SWITCH,
            2,
            self.keys.live,
            self.keys.layers,
            expected,
            pointer.to_json(),
            "" if new_layer is None else str(new_layer),
            f"retired:{now_us}",
            *[str(layer) for layer in retired],
        )
        if not done:
            raise TransientError(
                f"the live pointer of {self.keys.view} changed during the run (another writer?); "
                "nothing was switched, retry"
            )

    def writers(self) -> NodeWriters:
        """Raw pipelines for bulk commands: one per primary on a cluster."""
        return NodeWriters(self.client, self.url, self.password, self.timeout)

    def layer_keys(self, layer: int) -> Iterator[list[bytes | str]]:
        """``layer``'s keys in batches; the cluster client's SCAN walks every primary."""
        batch: list[bytes | str] = []
        for key in self.client.scan_iter(match=self.keys.layer(layer) + "*", count=_SCAN_COUNT):
            batch.append(key)
            if len(batch) >= _SCAN_COUNT:
                yield batch
                batch = []
        if batch:
            yield batch

    def unlink_layer(self, layer: int) -> int:
        """Delete every key left in ``layer`` (a walk of the keyspace: used only for leftovers)."""
        count = 0
        with self.writers() as writers:
            for found in self.layer_keys(layer):
                keys = pa.array(found, pa.binary())
                writers.send(keys, _keyed(b"UNLINK", keys))
                count += len(keys)
            writers.wait()
        return count

    def expire_entities(self, layers: list[int], ids: pa.Array, ms: int, batch_rows: int) -> None:
        """Give ``ids``' keys in ``layers`` at most ``ms`` to live, without walking the keyspace.

        The ids are those of the new version, so this reaches every old key whose entity is
        still served; keys of entities that dropped out expire by their own TTL or are unlinked
        by a later run's :func:`reclaim`.
        """
        args = (str(ms).encode(), b"LT")
        with self.writers() as writers:
            for layer in layers:
                head = self.keys.layer(layer).encode()
                for start in range(0, len(ids), batch_rows):
                    keys = pc.binary_join_element_wise(head, ids.slice(start, batch_rows), b"")
                    writers.send(keys, _keyed(b"PEXPIRE", keys, args))
            writers.wait()

    def forget_layer(self, layer: int) -> None:
        self.client.hdel(self.keys.layers, str(layer))


# --- The run ---------------------------------------------------------------------------------


def _now_us() -> int:
    return time.time_ns() // 1000


def _iso(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1e6, tz=UTC).isoformat().replace("+00:00", "Z")


def plan_mode(
    requested: str,
    live: LivePointer | None,
    candidate: LivePointer,
    as_of_us: int,
    max_layers: int,
) -> tuple[Literal["full", "incremental"], str]:
    """Incremental only when it gives the same result as a full run would (see the module doc)."""
    if requested == "full":
        return "full", "mode: full requested"
    if live is None:
        return "full", "no live version yet"
    if not live.same_schema(candidate):
        return "full", "features, join key, TTL or source changed since the live version"
    if as_of_us < live.watermark_us:
        return "full", f"asOf is before the watermark {_iso(live.watermark_us)} (a backfill)"
    if len(live.layers) >= max_layers:
        return "full", f"compacting {len(live.layers)} layers (maxLayers {max_layers})"
    return "incremental", f"rows after the watermark {_iso(live.watermark_us)}"


def reclaim(store: Store, live: LivePointer | None, grace_s: int, now_us: int) -> list[int]:
    """Delete layers a crashed run left behind and replaced layers past their grace period."""
    reclaimed = []
    in_use = set(live.layers) if live else set()
    for layer, state in sorted(store.layer_states().items()):
        if layer in in_use:
            store.forget_layer(layer)
            continue
        kind, _, since = state.partition(":")
        if kind == "writing" or (kind == "retired" and int(since) + grace_s * 1_000_000 <= now_us):
            store.unlink_layer(layer)
            store.forget_layer(layer)
            reclaimed.append(layer)
    return reclaimed


def _check_values(source: OfflineSource, table: pa.Table) -> None:
    for feature in source.features:
        problem = codec.value_problem(table[feature.name], feature.type)
        if problem:
            raise BadInputError(
                f"source {source.uri}: feature column {feature.name!r} {problem}; change the "
                "feature's type in the FeatureView or fix the data"
            )


def write_layer(
    store: Store,
    source: OfflineSource,
    table: pa.Table,
    event_us: NDArray[np.int64],
    layer: int,
    *,
    ttl_s: int,
    as_of_us: int,
    now_us: int,
    batch_rows: int,
    lease_s: int,
) -> None:
    """Stream every row of ``table`` (one per entity) into ``layer``'s hashes."""
    key_head = store.keys.layer(layer).encode()
    last_refresh = time.monotonic()
    with store.writers() as writers:
        for start in range(0, table.num_rows, batch_rows):
            chunk = table.slice(start, batch_rows)
            times = event_us[start : start + batch_rows]
            ids = pc.cast(pc.cast(chunk[source.join_key], pa.string()), pa.binary())
            keys = pc.binary_join_element_wise(key_head, ids.combine_chunks(), b"")
            values = [codec.encode(chunk[f.name].combine_chunks(), f.type) for f in source.features]
            expire = None
            if ttl_s > 0:
                expire = pa.array((now_us - as_of_us + times) // 1000 + ttl_s * 1000)
            writers.send(keys, _hset_batch(keys, pa.array(times), values, expire))
            if time.monotonic() - last_refresh > lease_s / 3:
                store.refresh(lease_s)
                last_refresh = time.monotonic()
        writers.wait()


def _hset_batch(
    keys: pa.Array, times: pa.Array, values: list[pa.Array], expire: pa.Array | None
) -> Batch:
    """One chunk's HSET (and PEXPIREAT) commands for the rows a node owns."""

    def build(rows: pa.Array | None) -> tuple[memoryview, int]:
        return hset_commands(
            take(keys, rows),
            take(times, rows),
            [take(v, rows) for v in values],
            None if expire is None else take(expire, rows),
        )

    return build


def _keyed(command: bytes, keys: pa.Array, args: tuple[bytes, ...] = ()) -> Batch:
    """``<command> key <args...>`` for the keys a node owns."""

    def build(rows: pa.Array | None) -> tuple[memoryview, int]:
        mine = take(keys, rows)
        return key_commands(command, mine, args), len(mine)

    return build


def materialize(
    cfg: MaterializeConfig, password: str | None, now_us: int | None = None
) -> dict[str, Any]:
    started = time.monotonic()
    now_us = now_us if now_us is not None else _now_us()
    as_of_us = int(cfg.as_of.timestamp() * 1_000_000) if cfg.as_of else now_us
    source = open_source(
        cfg.source.uri,
        cfg.join_key,
        cfg.source.event_timestamp_column,
        cfg.feature_schema,
        cfg.source.storage_options,
        cfg.source.created_timestamp_column,
    )
    url = cfg.online_store.redis_url
    client = redis_client(
        url,
        cfg.online_store.connect_timeout_seconds,
        cfg.online_store.connect_timeout_seconds * 3,
        password=password,
        cluster=cfg.online_store.redis_cluster,
    )
    store = Store(
        client,
        url,
        password,
        cfg.keys,
        cfg.online_store.connect_timeout_seconds,
    )
    where = url.split("://", 1)[1].split("/", 1)[0]
    with redis_errors(where):
        client.ping()
        store.lock(cfg.lock_lease_seconds)
        try:
            return _run(cfg, store, source, as_of_us, now_us, started)
        finally:
            store.unlock()
            client.close()


def _run(
    cfg: MaterializeConfig,
    store: Store,
    source: OfflineSource,
    as_of_us: int,
    now_us: int,
    started: float,
) -> dict[str, Any]:
    expected_raw, live = store.live()
    reclaimed = reclaim(store, live, cfg.grace_seconds, now_us)
    candidate = LivePointer(
        layers=[],
        features=cfg.feature_schema,
        join_key=cfg.join_key,
        ttl_seconds=cfg.ttl_seconds,
        source_uri=cfg.source.uri,
        event_timestamp_column=cfg.source.event_timestamp_column,
        created_timestamp_column=cfg.source.created_timestamp_column,
        watermark_us=as_of_us,
        switched_at_us=now_us,
    )
    mode, reason = plan_mode(cfg.mode, live, candidate, as_of_us, cfg.max_layers)
    watermark = live.watermark_us if mode == "incremental" and live else None
    lo, hi = window_bounds_us(as_of_us, cfg.ttl_seconds, watermark)
    read_started = time.monotonic()
    table, event_us = source.read_window(lo, hi)
    rows_read = table.num_rows
    if mode == "full" and rows_read == 0:
        window = f"after {_iso(lo)} and " if lo is not None else ""
        raise BadInputError(
            f"source {source.uri} has no rows {window}at or before asOf {_iso(as_of_us)} "
            f"(column {source.event_column!r}, ttlSeconds {cfg.ttl_seconds}); check asOf, the "
            "TTL and the source's event times — the live version is left as it is"
        )
    chosen = latest_rows(table[source.join_key], event_us, source.created_us(table))
    table, event_us = table.take(pa.array(chosen)), event_us[chosen]
    _check_values(source, table)
    read_seconds = time.monotonic() - read_started

    write_started = time.monotonic()
    layer: int | None = None
    if table.num_rows:
        layer = store.new_layer(now_us)
        write_layer(
            store,
            source,
            table,
            event_us,
            layer,
            ttl_s=cfg.ttl_seconds,
            as_of_us=as_of_us,
            now_us=now_us,
            batch_rows=cfg.batch_rows,
            lease_s=cfg.lock_lease_seconds,
        )
    write_seconds = time.monotonic() - write_started

    previous = live.layers if live else []
    if mode == "incremental":
        layers = ([layer] if layer is not None else []) + previous
        retired: list[int] = []
    else:
        layers = [layer] if layer is not None else []
        retired = previous
    run = {
        "mode": mode,
        "asOf": _iso(as_of_us),
        "rowsRead": rows_read,
        "entitiesWritten": int(table.num_rows),
    }
    pointer = LivePointer(
        layers=layers,
        features=cfg.feature_schema,
        join_key=cfg.join_key,
        ttl_seconds=cfg.ttl_seconds,
        source_uri=cfg.source.uri,
        event_timestamp_column=cfg.source.event_timestamp_column,
        created_timestamp_column=cfg.source.created_timestamp_column,
        watermark_us=as_of_us,
        switched_at_us=_now_us(),
        run=run,
    )
    store.switch(expected_raw, pointer, layer, retired, now_us)
    retire_started = time.monotonic()
    retire_error: str | None = None
    if retired and table.num_rows:
        ids = pc.cast(pc.cast(table[source.join_key], pa.string()), pa.binary()).combine_chunks()
        try:
            store.expire_entities(retired, ids, max(cfg.grace_seconds, 1) * 1000, cfg.batch_rows)
        except (TransientError, redis.exceptions.RedisError) as exc:
            # The new version is live: this run succeeded. The old layers stay "retired" in
            # the layers hash, and the next run unlinks them once the grace period is over.
            log.warning("could not expire the replaced layers %s: %s", retired, exc)
            retire_error = str(exc)
    summary = MaterializeSummary(
        feature_view=cfg.feature_view,
        mode=mode,
        mode_reason=reason,
        as_of=_iso(as_of_us),
        watermark=_iso(as_of_us),
        rows_read=rows_read,
        entities_written=int(table.num_rows),
        read_seconds=round(read_seconds, 3),
        write_seconds=round(write_seconds, 3),
        rows_per_second=round(table.num_rows / write_seconds) if write_seconds > 0 else 0,
        version=pointer.layers[0] if pointer.layers else None,
        layers=pointer.layers,
        retired_layers=retired,
        reclaimed_layers=reclaimed,
        retire_seconds=round(time.monotonic() - retire_started, 3),
        duration_seconds=round(time.monotonic() - started, 3),
    )
    if retire_error:
        summary = summary.model_copy(update={"retire_error": retire_error})
    log.info("materialized %s: %s", cfg.feature_view, summary.to_wire())
    return summary.to_wire()


def work(raw: dict[str, Any]) -> dict[str, Any]:
    return materialize(parse_config(raw), redis_password())


def main(argv: list[str] | None = None) -> int:
    return run_entrypoint("materialize", work, argv)


if __name__ == "__main__":
    sys.exit(main())
