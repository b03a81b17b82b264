"""Calling a version's models on Triton over the KServe v2 HTTP/JSON protocol, with a deadline.

JSON (orjson, straight from numpy arrays) rather than the binary tensor extension: the
tensors are small (one user, a few hundred item ids and scores). The transport is the
gateway's lean keep-alive client (``http1.py``). Every failure becomes
``TritonUnavailable`` with a short reason that ends up in the response's ``fallback`` and in
the metrics' ``reason`` label.

A per-endpoint circuit breaker stops the gateway from paying the full deadline on every
request while a Triton is down or hung: after ``threshold`` consecutive failures calls fail at
once for ``cooldown`` seconds, then one probe is let through.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from recsys_workloads.gateway.http1 import KeepAlivePool
from recsys_workloads.serving.contract import (
    EMBEDDING,
    HISTORY,
    ITEM_IDS,
    SCORES,
    USER_FEATURES,
    USER_ID,
    model_names,
)

FloatArray = npt.NDArray[np.float32]


class TritonUnavailable(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Breaker:
    threshold: int = 5
    cooldown: float = 2.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    open_until: float = 0.0
    probing: bool = field(default=False)

    def allow(self) -> bool:
        if self.failures < self.threshold:
            return True
        now = self.clock()
        if now < self.open_until or self.probing:
            return False
        self.probing = True
        return True

    def success(self) -> None:
        self.failures = 0
        self.probing = False

    def failure(self) -> None:
        self.failures += 1
        self.probing = False
        if self.failures >= self.threshold:
            self.open_until = self.clock() + self.cooldown


def _features_json(features: Mapping[str, Any] | None) -> str:
    return orjson.dumps(features if features else None, default=str).decode()


def user_tower_request(
    user_id: int, features: Mapping[str, Any] | None, history: Sequence[int] = ()
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [
            {"name": USER_ID, "shape": [1, 1], "datatype": "INT64", "data": [user_id]},
            {
                "name": USER_FEATURES,
                "shape": [1, 1],
                "datatype": "BYTES",
                "data": [_features_json(features)],
            },
        ],
        "outputs": [{"name": EMBEDDING}],
    }
    if len(history):
        body["inputs"].append(
            {"name": HISTORY, "shape": [1, len(history)], "datatype": "INT64", "data": history}
        )
    return body


def ranker_request(
    user_id: int,
    features: Mapping[str, Any] | None,
    item_ids: npt.NDArray[np.int64] | list[int],
    history: Sequence[int] = (),
) -> dict[str, Any]:
    body = user_tower_request(user_id, features, history)
    body["inputs"].append(
        {"name": ITEM_IDS, "shape": [1, len(item_ids)], "datatype": "INT64", "data": item_ids}
    )
    body["outputs"] = [{"name": SCORES}]
    return body


def output_of(response: Mapping[str, Any], name: str) -> FloatArray:
    for out in response.get("outputs", []):
        if out.get("name") == name:
            return np.asarray(out["data"], dtype=np.float32)
    raise TritonUnavailable("triton-bad-response", f"no output {name!r}")


class TritonClient:
    """One per gateway: a shared connection pool, a breaker per Triton endpoint."""

    def __init__(self, http: KeepAlivePool) -> None:
        self.http = http
        self.breakers: dict[str, Breaker] = {}

    def breaker(self, endpoint: str) -> Breaker:
        if endpoint not in self.breakers:
            self.breakers[endpoint] = Breaker()
        return self.breakers[endpoint]

    async def infer(
        self, endpoint: str, model: str, body: dict[str, Any], budget_s: float
    ) -> dict[str, Any]:
        breaker = self.breaker(endpoint)
        if not breaker.allow():
            raise TritonUnavailable("triton-circuit-open", endpoint)
        if budget_s <= 0:
            raise TritonUnavailable("triton-timeout", "no time left before the deadline")
        path = f"/v2/models/{model}/infer"
        try:
            async with asyncio.timeout(budget_s):
                data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
                status, payload = await self.http.post(endpoint, path, data)
            if status != 200:
                raise TritonUnavailable("triton-error", f"{model}: HTTP {status} {payload[:200]!r}")
            result: dict[str, Any] = orjson.loads(payload)
        except TritonUnavailable:
            breaker.failure()
            raise
        except TimeoutError as exc:
            breaker.failure()
            detail = f"{model} after {budget_s * 1000:.0f}ms"
            raise TritonUnavailable("triton-timeout", detail) from exc
        except (OSError, EOFError, ValueError) as exc:
            breaker.failure()
            raise TritonUnavailable("triton-unavailable", f"{model}: {exc}") from exc
        breaker.success()
        return result

    async def ready(self, endpoint: str, timeout_s: float) -> bool:
        """Whether the Triton at ``endpoint`` answers its readiness probe."""
        try:
            async with asyncio.timeout(timeout_s):
                status, _ = await self.http.get(endpoint, "/v2/health/ready")
        except (TimeoutError, OSError, EOFError, ValueError):
            return False
        return status == 200

    async def embed_user(
        self,
        endpoint: str,
        version: str,
        user_id: int,
        features: Mapping[str, Any] | None,
        history: Sequence[int],
        budget_s: float,
    ) -> FloatArray:
        name = model_names(version).user_tower
        body = user_tower_request(user_id, features, history)
        out = await self.infer(endpoint, name, body, budget_s)
        return output_of(out, EMBEDDING).reshape(1, -1)

    async def rank(
        self,
        endpoint: str,
        version: str,
        user_id: int,
        features: Mapping[str, Any] | None,
        history: Sequence[int],
        item_ids: npt.NDArray[np.int64],
        budget_s: float,
    ) -> FloatArray:
        name = model_names(version).ranker
        body = ranker_request(user_id, features, item_ids, history)
        scores = output_of(await self.infer(endpoint, name, body, budget_s), SCORES).reshape(-1)
        if scores.size != len(item_ids):
            raise TritonUnavailable(
                "triton-bad-response", f"{scores.size} scores for {len(item_ids)} items"
            )
        return scores
