"""Build the Triton model repository of one ModelVersion from its published artifact.

``python -m recsys_workloads.serving.repository --config PATH`` with a
``recsys_contract.repository`` config (its module shows an example; everything but the two
URIs has a default); the summary is ``RepositorySummary``.

It writes two python-backend models named after the version, so the repositories of a
stable and a canary version can share one server (or one directory) without clashing::

    <repositoryUri>/<version>.user-tower/config.pbtxt        dynamic batching, INT64/BYTES in
    <repositoryUri>/<version>.user-tower/1/model.py          two lines: serving.triton_python
    <repositoryUri>/<version>.user-tower/1/two_tower.pt, architecture.json, encoders.json
    <repositoryUri>/<version>.ranker/config.pbtxt            item_ids ragged across the batch
    <repositoryUri>/<version>.ranker/1/ranker.pt, architecture.json, encoders.json,
                                        item_features.npz    encoded features of indexed items

Each model directory is self-contained (Triton copies a remote model directory to local disk
before loading it). Every file read from the artifact is checked against its manifest, and the
artifact's digest is recorded in each config's parameters, so what a server runs can be traced
to a ModelVersion. The repository is derived data: rebuilding it from the same artifact and
options gives the same files, so it is built where it is served (an init container writing an
emptyDir) rather than stored inside the immutable artifact.

Both models encode raw feature values themselves (``encoding.py``) with the encoders the
version was trained with: a client sends a user's id and raw features as JSON, never indices,
so nothing outside the version needs to know its vocabularies.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from recsys_contract.formats import join_uri
from recsys_contract.repository import RepositoryConfig, RepositoryModels, RepositorySummary
from recsys_workloads.artifact_store import ArtifactReader, Store
from recsys_workloads.runtime import BadInputError, parse_config, run_entrypoint
from recsys_workloads.serving.contract import (
    EMBEDDING,
    HISTORY,
    ITEM_IDS,
    SCORES,
    USER_FEATURES,
    USER_ID,
    model_names,
)
from recsys_workloads.serving.inference import (
    ARCHITECTURE,
    ENCODERS,
    ITEM_FEATURES,
    RANKER_WEIGHTS,
    TWO_TOWER_WEIGHTS,
    ItemFeatureTable,
)
from recsys_workloads.train.config import parse_train_config
from recsys_workloads.train.data import EVENT_TIME, ITEM_KEY, read_table, validate_entity_table
from recsys_workloads.train.dataset import EntityRows
from recsys_workloads.train.features import EntityEncoder

log = logging.getLogger("recsys_workloads.serving.repository")

MODEL_KIND = "model"
TRITON_VERSION = "1"
#: The environment variable through which a server may add paths to the models' sys.path
#: (the testbed's tritonserver sets it to its virtual environment, the recsys-triton image's
#: tritonserver to the image's: images/triton/Containerfile).
PYTHONPATH_VARIABLE = "RECSYS_TRITON_PYTHONPATH"
PRELUDE = f"""\
import os as _os, sys as _sys
_sys.path[:0] = [p for p in _os.environ.get("{PYTHONPATH_VARIABLE}", "").split(_os.pathsep)
                 if p and p not in _sys.path]
"""
#: ...and runs their ``.pth`` files, through which an editable install finds its packages.
PTH_HOOKS = f"""\
import site as _site
for _p in _os.environ.get("{PYTHONPATH_VARIABLE}", "").split(_os.pathsep):
    if _p.endswith("-packages") and _os.path.isdir(_p):
        _site.addsitedir(_p)
"""


def parse_repository_config(raw: Any) -> RepositoryConfig:
    return parse_config(RepositoryConfig, raw, "repository config")


# --- config.pbtxt (pure) ---------------------------------------------------------------------


def _tensor(name: str, dtype: str, dims: str, extra: str = "") -> str:
    return f'  {{ name: "{name}" data_type: {dtype} dims: [ {dims} ]{extra} }}'


def model_config(
    name: str,
    kind: Literal["user_tower", "ranker"],
    cfg: RepositoryConfig,
    *,
    embedding_dim: int,
    parameters: dict[str, str],
) -> str:
    """The ``config.pbtxt`` of one model."""
    inputs = [
        _tensor(USER_ID, "TYPE_INT64", "1"),
        _tensor(USER_FEATURES, "TYPE_STRING", "1", " optional: true"),
        _tensor(HISTORY, "TYPE_INT64", "-1", " optional: true allow_ragged_batch: true"),
    ]
    if kind == "ranker":
        inputs.append(_tensor(ITEM_IDS, "TYPE_INT64", "-1", " allow_ragged_batch: true"))
        outputs = [_tensor(SCORES, "TYPE_FP32", "-1")]
    else:
        outputs = [_tensor(EMBEDDING, "TYPE_FP32", str(embedding_dim))]
    instance_kind = "KIND_GPU" if cfg.device == "cuda" else "KIND_CPU"
    params = {**parameters, "torch_threads": str(cfg.torch_threads), "device": cfg.device}
    param_lines = ",\n".join(
        f'  {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in sorted(params.items())
    )
    return (
        f'name: "{name}"\n'
        'backend: "python"\n'
        f"max_batch_size: {cfg.max_batch_size}\n"
        "input [\n" + ",\n".join(inputs) + "\n]\n"
        "output [\n" + ",\n".join(outputs) + "\n]\n"
        "dynamic_batching {\n"
        f"  max_queue_delay_microseconds: {cfg.max_queue_delay_microseconds}\n"
        "}\n"
        f"instance_group [ {{ kind: {instance_kind} count: {cfg.instances} }} ]\n"
        "version_policy: { latest: { num_versions: 1 } }\n"
        "parameters [\n" + param_lines + "\n]\n"
    )


def model_py(adapter: str) -> str:
    return (
        PRELUDE
        + PTH_HOOKS
        + f"from recsys_workloads.serving.triton_python import {adapter} as TritonPythonModel\n"
        + '__all__ = ["TritonPythonModel"]\n'
    )


# --- item features ---------------------------------------------------------------------------


def item_feature_table(
    encoder: EntityEncoder, item_ids: np.ndarray[Any, Any], items: pa.Table | None
) -> ItemFeatureTable:
    """Each indexed item's encoded features from its latest row, as its embedding was made."""
    ids = np.unique(np.asarray(item_ids, dtype=np.int64))
    if not encoder.features:
        return ItemFeatureTable(ids, {})
    if items is None:
        raise BadInputError(
            "the model uses item features "
            f"{[f.name for f in encoder.features]} but its config.json names no "
            "data.itemsUri to read them from"
        )
    names = [f.name for f in encoder.features]
    checked, _ = validate_entity_table(items, "item", ITEM_KEY, names)
    rows = EntityRows.build(
        encoder, checked.sort_by([(ITEM_KEY, "ascending"), (EVENT_TIME, "ascending")])
    )
    picked = rows.rows_as_of(ids, None)
    return ItemFeatureTable(ids, {name: arr[picked] for name, arr in rows.features.items()})


# --- the build -------------------------------------------------------------------------------


def build_repository(raw: dict[str, Any]) -> dict[str, Any]:
    cfg = parse_repository_config(raw)
    store = Store(cfg.storage_options)
    reader = ArtifactReader(store, cfg.artifact_uri, MODEL_KIND)
    manifest = reader.manifest
    version = str(manifest.get("version") or "")
    if not version:
        raise BadInputError(f"{cfg.artifact_uri}: the manifest names no version")
    train_cfg = parse_train_config(reader.read_json("config.json"))
    encoders = reader.read_json(ENCODERS)
    item_encoder = EntityEncoder.from_json(encoders["item"])
    items_uri = train_cfg.data.items_uri
    items = None
    if item_encoder.features and items_uri:
        items = read_table(Store(train_cfg.storage_options), items_uri, "items")
    table = item_feature_table(item_encoder, reader.read_npy("embeddings/item_ids.npy"), items)

    names = model_names(version)
    params = {"model_version": version, "artifact_digest": str(manifest["digest"])}
    architecture = reader.read("models/" + ARCHITECTURE)
    dim = int(json.loads(architecture)["embedding_dim"])
    shared = {ARCHITECTURE: architecture, ENCODERS: reader.read(ENCODERS)}
    plan: list[tuple[str, Literal["user_tower", "ranker"], str, dict[str, bytes]]] = [
        (
            names.user_tower,
            "user_tower",
            "UserTowerModel",
            {**shared, TWO_TOWER_WEIGHTS: reader.read("models/" + TWO_TOWER_WEIGHTS)},
        ),
        (
            names.ranker,
            "ranker",
            "RankerModel",
            {
                **shared,
                RANKER_WEIGHTS: reader.read("models/" + RANKER_WEIGHTS),
                ITEM_FEATURES: table.to_npz(),
            },
        ),
    ]
    for name, kind, adapter, files in plan:
        folder = join_uri(cfg.repository_uri, name)
        for rel, data in {**files, "model.py": model_py(adapter).encode()}.items():
            store.write_bytes(join_uri(folder, TRITON_VERSION, rel), data)
        text = model_config(name, kind, cfg, embedding_dim=dim, parameters=params)
        store.write_bytes(join_uri(folder, "config.pbtxt"), text.encode())
    log.info("built the Triton repository of %s at %s", version, cfg.repository_uri)
    return RepositorySummary(
        version=version,
        repository_uri=cfg.repository_uri,
        artifact_digest=manifest["digest"],
        models=RepositoryModels(user_tower=names.user_tower, ranker=names.ranker),
        items=int(table.item_ids.size),
    ).to_wire()


def main(argv: list[str] | None = None) -> int:
    return run_entrypoint("triton-repository", build_repository, argv)


if __name__ == "__main__":
    sys.exit(main())
