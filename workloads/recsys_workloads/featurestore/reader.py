"""Reading online features the way the gateway does: follow the pointer, newest value wins.

Two round trips per call whatever the number of entities: ``GET`` the pointer, then one
pipeline of ``HGETALL`` over every (layer, entity) pair. The value with the newest event time
across the pointer's layers is the entity's current value (see ``keys`` for why layers exist).
Expired keys are gone from Redis, so stale values are never returned. The pure halves
(``FeatureViewKeys.entities``, :func:`decode_rows`) are shared with async callers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from recsys_contract.keyspace import TS_FIELD, FeatureViewKeys, LivePointer, feature_field
from recsys_contract.online_client import AsyncRedis
from recsys_workloads.featurestore.codec import decode
from recsys_workloads.redis_client import SyncRedis


@dataclass(frozen=True)
class OnlineFeatures:
    """Features of the requested entities, in request order; ``None`` for an unknown entity."""

    feature_view: str
    version: int | None
    names: list[str]
    rows: list[dict[str, Any] | None]
    #: Event time (µs) of each row's value, for logging what was served.
    event_us: list[int | None]


def decode_rows(
    feature_view: str,
    pointer: LivePointer | None,
    ids: Sequence[object],
    hashes: Sequence[dict[bytes, bytes]],
) -> OnlineFeatures:
    if pointer is None:
        return OnlineFeatures(feature_view, None, [], [None] * len(ids), [None] * len(ids))
    names = [f.name for f in pointer.features]
    fields = [feature_field(i) for i in range(len(pointer.features))]
    rows: list[dict[str, Any] | None] = []
    times: list[int | None] = []
    for position in range(len(ids)):
        best: dict[bytes, bytes] | None = None
        best_t = -1
        for layer in range(len(pointer.layers)):
            found = hashes[layer * len(ids) + position]
            if found and int(found.get(TS_FIELD, b"-1")) > best_t:
                best, best_t = found, int(found[TS_FIELD])
        if best is None:
            rows.append(None)
            times.append(None)
            continue
        rows.append(
            {
                f.name: decode(best.get(field), f.type)
                for f, field in zip(pointer.features, fields, strict=True)
            }
        )
        times.append(best_t)
    return OnlineFeatures(feature_view, pointer.version, names, rows, times)


def read_online_features(
    client: SyncRedis, keys: FeatureViewKeys, entity_ids: Sequence[object]
) -> OnlineFeatures:
    """The live features of ``entity_ids`` (ints or strings, as in the source's join key)."""
    raw = client.get(keys.live)
    pointer = LivePointer.from_json(raw) if raw else None
    if pointer is None or not entity_ids:
        return decode_rows(keys.view, pointer, entity_ids, [])
    pipe = client.pipeline(transaction=False)
    for key in keys.entities(pointer.layers, entity_ids):
        pipe.hgetall(key)
    return decode_rows(keys.view, pointer, entity_ids, pipe.execute())


async def aread_online_features(
    client: AsyncRedis, keys: FeatureViewKeys, entity_ids: Sequence[object]
) -> OnlineFeatures:
    """:func:`read_online_features` for asyncio callers."""
    raw = await client.get(keys.live)
    pointer = LivePointer.from_json(raw) if raw else None
    if pointer is None or not entity_ids:
        return decode_rows(keys.view, pointer, entity_ids, [])
    pipe = client.pipeline(transaction=False)
    for key in keys.entities(pointer.layers, entity_ids):
        pipe.hgetall(key)
    return decode_rows(keys.view, pointer, entity_ids, await pipe.execute())
