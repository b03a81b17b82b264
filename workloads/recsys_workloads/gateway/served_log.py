"""Log and wait: every served response, and every outcome posted later, as Redis Stream entries.

``served`` entries (one per response) hold what the next training run and the drift check
need to learn from what was shown: the request id, time, user, variant and model version,
the index, the raw user features and recent items (history) the models saw, the retrieved
candidates and the served items with their scores, the request's context, whether it was
a fallback, and whether the list was computed live or stored ahead (``source``). ``events``
entries hold outcomes (click, purchase) with the request id they belong to; the two meet in
the log join (``recsys_workloads.logjoin``), which waits for late outcomes before it turns
them into training rows.

Fields are flat strings (lists and objects as compact JSON), the shape Redis Streams keep.
Appends are batched by a background writer (one pipeline per batch), so logging adds no
round trip to a request; a bounded queue means a Redis outage drops log entries (counted in
``recsys_gateway_served_log_dropped_total``) instead of growing the gateway's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio
import redis.exceptions

from recsys_contract.online_client import AsyncRedis

log = logging.getLogger("recsys_workloads.gateway.served_log")

EVENT_TYPES = ("click", "purchase")


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class ServedRecord:
    request_id: str
    ts_ms: int
    user_id: int
    variant: str
    model_version: str
    index: str
    fallback: str | None
    items: list[tuple[int, float]]
    candidates: list[int]
    features: Mapping[str, Any] | None
    context: Mapping[str, str] = field(default_factory=dict)
    #: the user's recent items the models saw, most recent first
    history: list[int] = field(default_factory=list)
    #: ``live`` (computed for this request) or ``precomputed`` (a stored head list, filtered
    #: and ordered again): the analysis and the log join can tell the two apart
    source: str = "live"

    def to_fields(self) -> dict[str, str]:
        return {
            "requestId": self.request_id,
            "ts": str(self.ts_ms),
            "userId": str(self.user_id),
            "variant": self.variant,
            "modelVersion": self.model_version,
            "index": self.index,
            "fallback": self.fallback or "",
            "items": _json([[i, round(s, 6)] for i, s in self.items]),
            "candidates": _json(self.candidates),
            "features": _json(self.features),
            "context": _json(dict(self.context)),
            "history": _json(self.history),
            "source": self.source,
        }

    @classmethod
    def from_fields(cls, raw: Mapping[bytes, bytes]) -> ServedRecord:
        f = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            request_id=f["requestId"],
            ts_ms=int(f["ts"]),
            user_id=int(f["userId"]),
            variant=f["variant"],
            model_version=f["modelVersion"],
            index=f.get("index", ""),
            fallback=f.get("fallback") or None,
            items=[(int(i), float(s)) for i, s in json.loads(f["items"])],
            candidates=[int(c) for c in json.loads(f.get("candidates", "[]"))],
            features=json.loads(f.get("features", "null")),
            context=json.loads(f.get("context", "{}")),
            history=[int(i) for i in json.loads(f.get("history", "[]"))],
            source=f.get("source", "live"),
        )


@dataclass(frozen=True)
class EventRecord:
    request_id: str
    ts_ms: int
    type: str
    item_id: int
    user_id: int | None = None

    def to_fields(self) -> dict[str, str]:
        out = {
            "requestId": self.request_id,
            "ts": str(self.ts_ms),
            "type": self.type,
            "itemId": str(self.item_id),
        }
        if self.user_id is not None:
            out["userId"] = str(self.user_id)
        return out

    @classmethod
    def from_fields(cls, raw: Mapping[bytes, bytes]) -> EventRecord:
        f = {k.decode(): v.decode() for k, v in raw.items()}
        user = f.get("userId")
        return cls(
            f["requestId"], int(f["ts"]), f["type"], int(f["itemId"]), int(user) if user else None
        )


class StreamWriter:
    """Appends entries to one stream in batches, from a bounded queue."""

    def __init__(
        self,
        client: AsyncRedis,
        stream: str,
        max_len: int,
        on_drop: Callable[[str, int], None],
        queue_size: int = 10_000,
        batch: int = 256,
    ) -> None:
        self.client = client
        self.stream = stream
        self.max_len = max_len
        self.on_drop = on_drop
        self.queue: asyncio.Queue[dict[str, str]] = asyncio.Queue(queue_size)
        self.batch = batch
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    def append(self, fields: dict[str, str]) -> None:
        try:
            self.queue.put_nowait(fields)
        except asyncio.QueueFull:
            self.on_drop("queue-full", 1)

    async def _flush(self, entries: list[dict[str, str]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for entry in entries:
            pipe.xadd(self.stream, entry, maxlen=self.max_len, approximate=True)  # type: ignore[arg-type]
        try:
            await pipe.execute()
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("could not append %d entries to %s: %s", len(entries), self.stream, exc)
            self.on_drop("redis", len(entries))
            await asyncio.sleep(0.5)

    async def _run(self) -> None:
        while True:
            entries = [await self.queue.get()]
            while len(entries) < self.batch and not self.queue.empty():
                entries.append(self.queue.get_nowait())
            try:
                await self._flush(entries)
            finally:
                for _ in entries:
                    self.queue.task_done()

    async def close(self, grace_s: float = 5.0) -> None:
        """Write what is queued (for at most ``grace_s`` seconds), then stop."""
        if self.task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.queue.join(), grace_s)
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        dropped = self.queue.qsize()
        if dropped:
            self.on_drop("shutdown", dropped)
