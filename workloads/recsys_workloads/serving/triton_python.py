"""Triton python-backend adapters around ``inference.UserTower`` and ``inference.RankerScorer``.

A model directory's ``model.py`` is two lines that import one of these classes as
``TritonPythonModel`` (see ``repository.py``), so the model code lives in this package,
typed and unit-tested, and a repository holds only configs and weights.

``triton_python_backend_utils`` exists only inside Triton's stub process, so it is imported
when Triton calls ``initialize``. Each ``execute`` gets every request the dynamic batcher
gathered; they are decoded one by one (a malformed request gets its own error response and
does not fail its neighbours) and then scored in one forward pass.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys_workloads.serving.contract import (
    EMBEDDING,
    HISTORY,
    ITEM_IDS,
    SCORES,
    USER_FEATURES,
    USER_ID,
)
from recsys_workloads.serving.inference import (
    RankerScorer,
    RankQuery,
    UserTower,
    parse_features,
)


def _utils() -> Any:
    """``triton_python_backend_utils``: the stub provides it, nothing else does."""
    return importlib.import_module("triton_python_backend_utils")


def _folder(args: dict[str, Any]) -> Path:
    return Path(args["model_repository"]) / str(args["model_version"])


def _parameters(args: dict[str, Any]) -> dict[str, str]:
    config = json.loads(args.get("model_config") or "{}")
    params = config.get("parameters") or {}
    return {k: str(v.get("string_value", "")) for k, v in params.items()}


def _configure(args: dict[str, Any]) -> str:
    """Set torch's CPU threads from the config; returns the device the model runs on."""
    params = _parameters(args)
    torch.set_num_threads(max(int(params.get("torch_threads") or 1), 1))
    device = params.get("device") or "cpu"
    if device == "cuda" and args.get("model_instance_kind") == "GPU":
        return f"cuda:{args.get('model_instance_device_id', 0)}"
    return device


Users = tuple[list[int], list[dict[str, Any] | None], list[Any]]


def _rows(pb: Any, request: Any) -> Users:
    """A request's users: ids, raw feature rows and histories (each may be absent)."""
    ids = pb.get_input_tensor_by_name(request, USER_ID).as_numpy().reshape(-1)
    n = ids.size
    rows: list[dict[str, Any] | None] = [None] * n
    feats_tensor = pb.get_input_tensor_by_name(request, USER_FEATURES)
    if feats_tensor is not None:
        raw = feats_tensor.as_numpy().reshape(-1)
        if raw.size != n:
            raise ValueError(f"{USER_FEATURES} has {raw.size} rows but {USER_ID} has {n}")
        rows = [parse_features(r) for r in raw]
    histories: list[Any] = [None] * n
    history_tensor = pb.get_input_tensor_by_name(request, HISTORY)
    if history_tensor is not None:
        histories = list(history_tensor.as_numpy().reshape(n, -1))
    return [int(i) for i in ids], rows, histories


def _error(pb: Any, exc: Exception) -> Any:
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(str(exc)))


class UserTowerModel:
    """Inputs ``user_id`` INT64 [1], ``user_features`` BYTES [1] (JSON object);
    output ``embedding`` FP32 [dim]."""

    def initialize(self, args: dict[str, Any]) -> None:
        device = _configure(args)
        self.pb = _utils()
        self.model = UserTower.load(_folder(args), device)

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self.pb
        parsed: list[Users | Exception] = []
        for request in requests:
            try:
                parsed.append(_rows(pb, request))
            except Exception as exc:  # one bad request must not fail the batch
                parsed.append(exc)
        ids = [i for p in parsed if not isinstance(p, Exception) for i in p[0]]
        rows = [r for p in parsed if not isinstance(p, Exception) for r in p[1]]
        hist = [h for p in parsed if not isinstance(p, Exception) for h in p[2]]
        vectors = self.model.embed(ids, rows, hist) if ids else np.zeros((0, self.model.dim))
        responses = []
        start = 0
        for p in parsed:
            if isinstance(p, Exception):
                responses.append(_error(pb, p))
                continue
            n = len(p[0])
            out = pb.Tensor(EMBEDDING, vectors[start : start + n].astype(np.float32))
            responses.append(pb.InferenceResponse(output_tensors=[out]))
            start += n
        return responses

    def finalize(self) -> None:
        self.model = None  # type: ignore[assignment]


class RankerModel:
    """Inputs ``user_id`` INT64 [1], ``user_features`` BYTES [1], ``item_ids`` INT64 [-1]
    (ragged across the batch); output ``scores`` FP32 [-1], one logit per item."""

    def initialize(self, args: dict[str, Any]) -> None:
        device = _configure(args)
        self.pb = _utils()
        self.model = RankerScorer.load(_folder(args), device)

    def _queries(self, request: Any) -> list[RankQuery]:
        ids, rows, histories = _rows(self.pb, request)
        items = self.pb.get_input_tensor_by_name(request, ITEM_IDS).as_numpy()
        items = items.reshape(len(ids), -1).astype(np.int64)
        return [
            RankQuery(u, r, items[n], h)
            for n, (u, r, h) in enumerate(zip(ids, rows, histories, strict=True))
        ]

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self.pb
        parsed: list[list[RankQuery] | Exception] = []
        for request in requests:
            try:
                parsed.append(self._queries(request))
            except Exception as exc:  # one bad request must not fail the batch
                parsed.append(exc)
        queries = [q for p in parsed if not isinstance(p, Exception) for q in p]
        scores = self.model.score(queries) if queries else []
        responses = []
        start = 0
        for p in parsed:
            if isinstance(p, Exception):
                responses.append(_error(pb, p))
                continue
            mine = scores[start : start + len(p)]
            start += len(p)
            out = pb.Tensor(SCORES, np.stack(mine).astype(np.float32))
            responses.append(pb.InferenceResponse(output_tensors=[out]))
        return responses

    def finalize(self) -> None:
        self.model = None  # type: ignore[assignment]
