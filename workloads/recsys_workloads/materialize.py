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

Split runs (``shards`` > 1, one pod per shard of an Indexed Job; see
``recsys_contract.materialize`` for where the shard's index and the run's id come from):

- Partition: shard ``i`` keeps the rows whose entity id hashes to ``i`` modulo ``shards``
  (splitmix64 of an integer id, FNV-1a and the same mix of a string's bytes: stable across
  processes and releases, unlike Python's ``hash``). Each entity is handled by exactly one
  shard, so the point-in-time rule (latest row per entity) is decided by one process with all
  of the entity's rows, as in an unsplit run. Files or row groups would be cheaper to split by,
  but one entity's rows spread over files (each day's file holds a new row for it), and two
  shards would each write their own "latest" value of it, the older one winning when it lands
  last. Each shard filters every batch as it reads it, so it holds about ``1/shards`` of the
  rows; every shard still reads and hashes the whole window, which bounds the gain from
  splitting (measured in ``benchmarks/README.md``).
- Joining one run: the lock's token is the run id. The first shard to arrive takes the lock,
  or finds its own run id in it and joins; another id in it is a transient error, as for an
  unsplit run. The first shard to book the run (``FeatureViewKeys.run``, with the layer book
  entry in the same script) decides the layer, the mode, ``asOf``, the time the TTLs count
  from and the pointer it replaces; the others read them, so all shards write one layer the
  same way. The record carries a digest of the config: a shard started after the config
  changed refuses to write into the run. The shard that booked the run reclaims crashed runs'
  layers, as an unsplit run does. Writing shards keep the lock's lease alive.
- Finishing: each shard adds its index to ``run:done`` and its counts to the record; the shard
  whose addition completes the set switches the pointer (compare-and-set against the recorded
  pointer, so exactly one switch happens and only after every shard has written), gives the
  replaced layers their grace period by walking their keys (it knows only its own entities),
  releases the lock and reports the run's totals. The others report ``role: worker`` with their
  share, which the operator reads only if the switching pod left no message.
- Failures: a shard that fails leaves its index out of ``run:done``, so nothing is switched;
  the Job retries it (a retry rewrites the same values into the same layer, idempotent), and a
  run the Job gives up on keeps the lock until its lease lapses, after which the next run
  reclaims its layer, still booked as ``writing``. A shard that arrives after its run has
  switched (a retry of a pod that finished) does nothing. A Redis that loses the run's record
  mid-run (a restart without persistence) fails the writing shards as transient; their retries
  book the run anew, but the shards that had finished are not run again, so it never switches:
  the Job completes with only workers' messages, which the operator reports as
  ``ResultNotReported``, and the next run reclaims the layer once the lease lapses.

All the scripts' keys share the pointer's slot (the lock is a single-key command), so a split
run works on a Redis Cluster too, where the shards' writes spread over every primary.

Memory: the window's rows are held in memory for the point-in-time selection (about 150 bytes
per row for three features; measured peaks in ``benchmarks/README.md``); size the Job's memory
request accordingly, or split the run (``shards``) so each pod holds its share.

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
import hashlib
import logging
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis
from numpy.typing import NDArray

from recsys_contract.keyspace import FeatureViewKeys, LivePointer
from recsys_contract.materialize import (
    RUN_ID_ENV,
    SHARD_INDEX_ENV,
    MaterializeConfig,
    MaterializeSummary,
)
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
#: KEYS: pointer, layers[, a sharded run's record, marked switched]. ARGV: expected pointer
#: ('' = none), new pointer, new layer ('' = none), retired marker, retired layers...
_SWITCH = """
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('HDEL', KEYS[2], ARGV[3]) end
for i = 5, #ARGV do redis.call('HSET', KEYS[2], ARGV[i], ARGV[4]) end
if KEYS[3] then redis.call('HSET', KEYS[3], 'switched', '1') end
return 1
"""


#: A sharded run's lock. KEYS: lock. ARGV: run id, lease ms. 1: taken, 2: joined (own run id
#: found; lease renewed), 0: another run holds it.
_JOIN_LOCK = """
local current = redis.call('GET', KEYS[1])
if not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 2
end
return 0
"""
#: Book a sharded run, or join the one booked. KEYS: pointer, layers, run, run:done. ARGV: run
#: id, layer, expected pointer, mode, reason, asOf µs, now µs, config digest, record TTL ms.
#: Returns the run's record (HGETALL), or false when the pointer is no longer ``expected``.
_BOOK_RUN = """
if redis.call('HGET', KEYS[3], 'run') == ARGV[1] then return redis.call('HGETALL', KEYS[3]) end
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[3] then return false end
redis.call('DEL', KEYS[3], KEYS[4])
redis.call('HSET', KEYS[3], 'run', ARGV[1], 'layer', ARGV[2], 'expected', ARGV[3],
  'mode', ARGV[4], 'reason', ARGV[5], 'asOf', ARGV[6], 'now', ARGV[7], 'digest', ARGV[8],
  'rowsRead', 0, 'entities', 0)
redis.call('PEXPIRE', KEYS[3], ARGV[9])
redis.call('HSET', KEYS[2], ARGV[2], 'writing:' .. ARGV[7])
return redis.call('HGETALL', KEYS[3])
"""
#: A shard has written its share. KEYS: run, run:done. ARGV: run id, shard, rows read, entities,
#: shards, record TTL ms. -1: the record is another run's; 1: this shard switches; 0: not (yet).
_SHARD_DONE = """
if redis.call('HGET', KEYS[1], 'run') ~= ARGV[1] then return -1 end
if redis.call('SADD', KEYS[2], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'rowsRead', ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'entities', ARGV[4])
end
redis.call('PEXPIRE', KEYS[2], ARGV[6])
if redis.call('SCARD', KEYS[2]) < tonumber(ARGV[5]) then return 0 end
local switcher = redis.call('HGET', KEYS[1], 'switcher')
if not switcher then
  redis.call('HSET', KEYS[1], 'switcher', ARGV[2])
  switcher = ARGV[2]
end
if switcher == ARGV[2] then return 1 end
return 0
"""
#: How long a sharded run's record outlives its lock: long enough that a pod of the Job
#: retried after the switch finds it and does nothing, short enough to leave no litter.
_RECORD_TTL_MS = 86_400_000


@dataclass(frozen=True)
class Shard:
    """One pod's part of a split run: its index, the number of shards, the run's id."""

    index: int
    count: int
    run_id: str


def shard_from_env(cfg: MaterializeConfig, env: dict[str, str] | None = None) -> Shard | None:
    """The pod's shard, from what Kubernetes and the operator put in its environment."""
    if cfg.shards == 1:
        return None
    env = dict(os.environ) if env is None else env
    raw, run_id = env.get(SHARD_INDEX_ENV, ""), env.get(RUN_ID_ENV, "")
    if not raw.isdigit() or int(raw) >= cfg.shards:
        raise BadInputError(
            f"shards is {cfg.shards} but ${SHARD_INDEX_ENV} is {raw!r}: a split run needs an "
            f"Indexed Job with completions = {cfg.shards}"
        )
    if not run_id:
        raise BadInputError(
            f"shards is {cfg.shards} but ${RUN_ID_ENV} is empty: every pod of the run needs the "
            "same run id (the Job's UID)"
        )
    return Shard(int(raw), cfg.shards, run_id)


_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)


def shard_of(ids: pa.Array | pa.ChunkedArray, count: int) -> NDArray[np.int64]:
    """Each id's shard: a stable 64-bit hash modulo ``count``; of the value for integer ids
    (the common case, a few vector operations), of the bytes for the others."""
    if isinstance(ids, pa.ChunkedArray):
        parts = [shard_of(chunk, count) for chunk in ids.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if pa.types.is_integer(ids.type):
        values = pc.cast(ids, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        return (_mix(values.view(np.uint64)) % np.uint64(count)).astype(np.int64)
    binary = pc.cast(pc.cast(ids, pa.string()), pa.binary())
    n = len(binary)
    if n == 0:
        return np.zeros(0, np.int64)
    buffers = binary.buffers()
    offsets = np.frombuffer(buffers[1], np.int32)[binary.offset : binary.offset + n + 1]
    # at least one byte, so the clipped gather below stays in bounds when every id is empty
    raw = buffers[2]
    data = np.frombuffer(raw, np.uint8) if raw is not None and raw.size else np.zeros(1, np.uint8)
    starts, lengths = offsets[:-1].astype(np.int64), np.diff(offsets)
    h = np.full(n, _FNV_OFFSET, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(int(lengths.max(initial=0))):
            byte = data[np.minimum(starts + j, len(data) - 1)].astype(np.uint64)
            h = np.where(lengths > j, (h ^ byte) * _FNV_PRIME, h)
    # FNV's low bits alone spread poorly over a small modulus: mix the high ones in.
    return (_mix(h) % np.uint64(count)).astype(np.int64)


def _mix(h: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """splitmix64's finalizer: every input bit moves every output bit."""
    with np.errstate(over="ignore"):
        z = h + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class RunRecord:
    """A sharded run as booked in Redis: what every shard of it writes the same way."""

    run_id: str
    layer: int
    expected: bytes
    mode: Literal["full", "incremental"]
    reason: str
    as_of_us: int
    now_us: int
    digest: str
    rows_read: int
    entities: int
    switcher: str | None
    switched: bool

    @classmethod
    def parse(cls, flat: list[bytes | str]) -> RunRecord:
        raw = {_text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}
        expected = raw["expected"]
        mode = _text(raw["mode"])
        if mode not in ("full", "incremental"):
            raise TransientError(f"a sharded run's record holds mode {mode!r}; retry")
        return cls(
            run_id=_text(raw["run"]),
            layer=int(raw["layer"]),
            expected=expected.encode() if isinstance(expected, str) else expected,
            mode="full" if mode == "full" else "incremental",
            reason=_text(raw["reason"]),
            as_of_us=int(raw["asOf"]),
            now_us=int(raw["now"]),
            digest=_text(raw["digest"]),
            rows_read=int(raw["rowsRead"]),
            entities=int(raw["entities"]),
            switcher=_text(raw["switcher"]) if "switcher" in raw else None,
            switched="switched" in raw,
        )


def config_digest(cfg: MaterializeConfig) -> str:
    """What the shards of one run must agree on: the whole config."""
    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:16]


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

    def join(self, run_id: str, lease_s: int) -> bool:
        """Take the lock for a sharded run or join it; True when this shard took it."""
        self.token = run_id
        got = int(self.client.eval(_JOIN_LOCK, 1, self.keys.lock, run_id, lease_s * 1000))
        if got == 0:
            raise TransientError(
                f"another materialization of {self.keys.view} holds {self.keys.lock}; "
                "retry when it has finished"
            )
        return got == 1

    def run_record(self, run_id: str) -> RunRecord | None:
        found = self.client.hgetall(self.keys.run)
        flat: list[bytes | str] = [x for kv in found.items() for x in kv]
        record = RunRecord.parse(flat) if flat else None
        return record if record is not None and record.run_id == run_id else None

    def book_run(
        self,
        run_id: str,
        layer: int,
        expected: bytes,
        mode: str,
        reason: str,
        as_of_us: int,
        now_us: int,
        digest: str,
    ) -> RunRecord | None:
        """Book the run with ``layer``, or get the record another shard booked first; None
        when the pointer is no longer ``expected``."""
        flat = self.client.eval(
            _BOOK_RUN,
            4,
            self.keys.live,
            self.keys.layers,
            self.keys.run,
            self.keys.run_done,
            run_id,
            str(layer),
            expected,
            mode,
            reason,
            str(as_of_us),
            str(now_us),
            digest,
            str(_RECORD_TTL_MS),
        )
        return RunRecord.parse(flat) if flat else None

    def shard_done(self, shard: Shard, rows_read: int, entities: int) -> int:
        return int(
            self.client.eval(
                _SHARD_DONE,
                2,
                self.keys.run,
                self.keys.run_done,
                shard.run_id,
                str(shard.index),
                str(rows_read),
                str(entities),
                str(shard.count),
                str(_RECORD_TTL_MS),
            )
        )

    def next_layer(self) -> int:
        return int(self.client.incr(self.keys.seq))

    def switch(
        self,
        expected: bytes,
        pointer: LivePointer,
        new_layer: int | None,
        retired: list[int],
        now_us: int,
        run_key: str | None = None,
    ) -> None:
        keys = [self.keys.live, self.keys.layers, *([run_key] if run_key else [])]
        done = self.client.eval(
            _SWITCH,
            len(keys),
            *keys,
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

    def expire_layers(self, layers: list[int], ms: int) -> None:
        """Give every key of ``layers`` at most ``ms`` to live, by walking them: a split run's
        switching shard knows only its own entities, so it cannot name the others' keys."""
        args = (str(ms).encode(), b"LT")
        with self.writers() as writers:
            for layer in layers:
                for found in self.layer_keys(layer):
                    keys = pa.array(found, pa.binary())
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


def reclaim(
    store: Store, live: LivePointer | None, grace_s: int, now_us: int, own: int | None = None
) -> list[int]:
    """Delete layers a crashed run left behind and replaced layers past their grace period
    (``own``: the layer this run writes, booked before the reclaim in a split run)."""
    reclaimed = []
    in_use = set(live.layers) if live else set()
    for layer, state in sorted(store.layer_states().items()):
        if layer == own:
            continue
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
    cfg: MaterializeConfig,
    password: str | None,
    now_us: int | None = None,
    shard: Shard | None = None,
) -> dict[str, Any]:
    """Run ``cfg`` (one shard of it when ``shard`` is given) and return its summary."""
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
        if shard is not None:
            try:
                return _run_shard(cfg, store, source, shard, as_of_us, now_us, started)
            finally:
                client.close()
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


def _book(
    cfg: MaterializeConfig, store: Store, shard: Shard, as_of_us: int, now_us: int
) -> tuple[RunRecord, bool]:
    """The run's record, booked now if no shard did yet; True when this shard booked it."""
    digest = config_digest(cfg)
    for _ in range(3):
        record = store.run_record(shard.run_id)
        if record is None:
            expected_raw, live = store.live()
            mode, reason = plan_mode(
                cfg.mode, live, _candidate(cfg, as_of_us, now_us), as_of_us, cfg.max_layers
            )
            layer = store.next_layer()  # a shard that loses the race leaves a gap: harmless
            record = store.book_run(
                shard.run_id, layer, expected_raw, mode, reason, as_of_us, now_us, digest
            )
            if record is None:
                continue  # the pointer moved between the read and the booking: read again
            booked = record.layer == layer
        else:
            booked = False
        if record.digest != digest:
            raise BadInputError(
                f"shard {shard.index} of run {shard.run_id} has another config than the shard "
                "that booked the run (was the FeatureView changed while it ran?); the run "
                "cannot be finished, the next one replaces it"
            )
        return record, booked
    raise TransientError(f"the live pointer of {store.keys.view} keeps changing; retry")


def _candidate(cfg: MaterializeConfig, as_of_us: int, now_us: int) -> LivePointer:
    return LivePointer(
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


def _run_shard(
    cfg: MaterializeConfig,
    store: Store,
    source: OfflineSource,
    shard: Shard,
    as_of_us: int,
    now_us: int,
    started: float,
) -> dict[str, Any]:
    """One shard of a split run (the module doc's "Split runs")."""
    took = store.join(shard.run_id, cfg.lock_lease_seconds)
    done = store.run_record(shard.run_id)
    if done is not None and done.switched:
        # A retry of a pod whose run is already live: nothing left to do.
        if took:
            store.unlock()
        return _worker(cfg, shard, done.mode, done.as_of_us, 0, 0, 0.0, 0.0, switched=True)
    record, booked = _book(cfg, store, shard, as_of_us, now_us)
    # Every shard counts TTLs from the same instant and reads the same window.
    as_of_us, now_us, mode = record.as_of_us, record.now_us, record.mode
    live = LivePointer.from_json(record.expected) if record.expected else None
    reclaimed = reclaim(store, live, cfg.grace_seconds, now_us, own=record.layer) if booked else []
    watermark = live.watermark_us if mode == "incremental" and live else None
    lo, hi = window_bounds_us(as_of_us, cfg.ttl_seconds, watermark)

    read_started = time.monotonic()

    def mine(batch: pa.RecordBatch) -> pa.Array:
        return pa.array(shard_of(batch.column(source.join_key), shard.count) == shard.index)

    table, event_us = source.read_window(lo, hi, keep=mine)
    rows_read = table.num_rows
    chosen = latest_rows(table[source.join_key], event_us, source.created_us(table))
    table, event_us = table.take(pa.array(chosen)), event_us[chosen]
    _check_values(source, table)
    read_seconds = time.monotonic() - read_started
    write_started = time.monotonic()
    if table.num_rows:
        store.refresh(cfg.lock_lease_seconds)
        write_layer(
            store,
            source,
            table,
            event_us,
            record.layer,
            ttl_s=cfg.ttl_seconds,
            as_of_us=as_of_us,
            now_us=now_us,
            batch_rows=cfg.batch_rows,
            lease_s=cfg.lock_lease_seconds,
        )
    write_seconds = time.monotonic() - write_started
    entities = int(table.num_rows)
    del table, event_us
    store.refresh(cfg.lock_lease_seconds)  # still this run's: its share may count
    verdict = store.shard_done(shard, rows_read, entities)
    if verdict < 0:
        raise TransientError(
            f"run {shard.run_id} of {store.keys.view} was replaced while shard {shard.index} "
            "wrote (its lease lapsed); it will not be switched"
        )
    if verdict == 0:
        return _worker(cfg, shard, mode, as_of_us, rows_read, entities, read_seconds, write_seconds)
    return _switch_run(
        cfg, store, source, shard, live, reclaimed, read_seconds, write_seconds, started
    )


def _switch_run(
    cfg: MaterializeConfig,
    store: Store,
    source: OfflineSource,
    shard: Shard,
    live: LivePointer | None,
    reclaimed: list[int],
    read_seconds: float,
    write_seconds: float,
    started: float,
) -> dict[str, Any]:
    """Every shard has written its share: switch once, retire, release, report the totals."""
    record = store.run_record(shard.run_id)
    if record is None:
        raise TransientError(f"run {shard.run_id} of {store.keys.view} lost its record; retry")
    mode, as_of_us, now_us = record.mode, record.as_of_us, record.now_us
    try:
        if mode == "full" and record.rows_read == 0:
            lo, _ = window_bounds_us(as_of_us, cfg.ttl_seconds, None)
            window = f"after {_iso(lo)} and " if lo is not None else ""
            raise BadInputError(
                f"source {source.uri} has no rows {window}at or before asOf {_iso(as_of_us)} "
                f"(column {source.event_column!r}, ttlSeconds {cfg.ttl_seconds}); check asOf, "
                "the TTL and the source's event times — the live version is left as it is"
            )
        written = record.entities > 0
        previous = live.layers if live else []
        if mode == "incremental":
            layers = ([record.layer] if written else []) + previous
            retired: list[int] = []
        else:
            layers, retired = [record.layer], previous
        run = {
            "mode": mode,
            "asOf": _iso(as_of_us),
            "rowsRead": record.rows_read,
            "entitiesWritten": record.entities,
            "runId": shard.run_id,
            "shards": shard.count,
        }
        pointer = replace(
            _candidate(cfg, as_of_us, now_us), layers=layers, switched_at_us=_now_us(), run=run
        )
        try:
            # An empty incremental share leaves its booked (empty) layer out of the chain and
            # out of the book alike.
            store.switch(record.expected, pointer, record.layer, retired, now_us, store.keys.run)
        except TransientError:
            again = store.run_record(shard.run_id)
            if again is None or not again.switched:
                raise
            # A retried switching pod whose switch had happened: report it as done.
        retire_started = time.monotonic()
        retire_error: str | None = None
        if retired:
            try:
                store.expire_layers(retired, max(cfg.grace_seconds, 1) * 1000)
            except (TransientError, redis.exceptions.RedisError) as exc:
                log.warning("could not expire the replaced layers %s: %s", retired, exc)
                retire_error = str(exc)
    finally:
        store.unlock()
    summary = MaterializeSummary(
        feature_view=cfg.feature_view,
        mode=mode,
        mode_reason=record.reason,
        as_of=_iso(as_of_us),
        watermark=_iso(as_of_us),
        rows_read=record.rows_read,
        entities_written=record.entities,
        read_seconds=round(read_seconds, 3),
        write_seconds=round(write_seconds, 3),
        rows_per_second=round(record.entities / (time.monotonic() - started))
        if record.entities
        else 0,
        version=pointer.layers[0] if pointer.layers else None,
        layers=pointer.layers,
        retired_layers=retired,
        reclaimed_layers=reclaimed,
        retire_seconds=round(time.monotonic() - retire_started, 3),
        duration_seconds=round(time.monotonic() - started, 3),
        shards=shard.count,
    )
    if retire_error:
        summary = summary.model_copy(update={"retire_error": retire_error})
    log.info("materialized %s (%d shards): %s", cfg.feature_view, shard.count, summary.to_wire())
    return summary.to_wire()


def _worker(
    cfg: MaterializeConfig,
    shard: Shard,
    mode: str,
    as_of_us: int,
    rows_read: int,
    entities: int,
    read_seconds: float,
    write_seconds: float,
    switched: bool = False,
) -> dict[str, Any]:
    """A shard's report when another shard switches: its own share, as ``role: worker``, and
    deliberately not a ``MaterializeSummary`` (no watermark), so the FeatureView's status is
    never made of one shard's counts."""
    return {
        "role": "worker",
        "featureView": cfg.feature_view,
        "shard": shard.index,
        "shards": shard.count,
        "runId": shard.run_id,
        "mode": mode,
        "asOf": _iso(as_of_us),
        "rowsRead": rows_read,
        "entitiesWritten": entities,
        "readSeconds": round(read_seconds, 3),
        "writeSeconds": round(write_seconds, 3),
        "alreadySwitched": switched,
    }


def work(raw: dict[str, Any]) -> dict[str, Any]:
    cfg = parse_config(raw)
    return materialize(cfg, redis_password(), shard=shard_from_env(cfg))


def main(argv: list[str] | None = None) -> int:
    return run_entrypoint("materialize", work, argv)


if __name__ == "__main__":
    sys.exit(main())
