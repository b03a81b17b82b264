"""The model artifact: one immutable, versioned directory per ModelVersion.

Written through fsspec (``file://``, ``s3://``, ...) file by file, ``manifest.json`` last::

    <artifactUri>/
      manifest.json                  kind "model"; every file's sha256 and size; "digest"
      config.json                    the training config as run (defaults filled in)
      encoders.json                  {"user": EntityEncoder, "item": EntityEncoder}
      models/architecture.json       ModelShape: rebuilds the networks before loading weights
      models/two_tower.pt            state_dict of TwoTower (user_tower.*, item_tower.*)
      models/ranker.pt               state_dict of Ranker
      embeddings/item_ids.npy        int64 [n]     the items the index will hold
      embeddings/item_embeddings.npy float32 [n, d] item tower output, L2-normalised
      embeddings/query_user_ids.npy  int64 [q]     held-out (evaluated) users
      embeddings/query_embeddings.npy float32 [q, d] their user vectors: the index's recall queries
      popular_items.json             the most interacted items: the serving fallback
      scoring.json                   ScoreFusion: how ranker logits and retrieval scores make
                                     the final score (recsys_workloads.scoring); absent in
                                     versions exported before it: ranker only
      metrics.json                   evaluation (see evaluate.py) and training statistics
      profile.json                   feature distributions for drift checks (see profile.py)
      model_card.md, model_card.json what it is, what it was trained on, how good, limits

The manifest's ``digest`` (sha256 over the sorted file list and hashes) is what the
ModelVersion status records; ``load_model_artifact`` refuses a file whose hash differs. Models
are plain state dicts (loaded with ``weights_only=True``) rather than TorchScript: the Triton
python backend imports ``recsys_workloads.train.models`` and rebuilds them from
``architecture.json``, which keeps one definition of the network.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from recsys_contract.train import (
    FINAL,
    SERVED,
    TrainConfig,
    ranking_metric,
    retrieval_metric,
    served_metric,
)
from recsys_workloads.artifact_store import ArtifactReader, ArtifactWriter, Store
from recsys_workloads.scoring import RANKER_ONLY, SCORING_FILE, ScoreFusion, read_fusion
from recsys_workloads.train.features import EntityEncoder
from recsys_workloads.train.models import ModelShape, Ranker, TwoTower

MODEL_KIND = "model"
POPULAR_ITEMS = 100


def _state_bytes(model: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, buf)
    return buf.getvalue()


def headline_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The few numbers the operator's evaluation gate and the termination message carry."""
    out: dict[str, float] = {}
    for model, values in metrics.get("retrieval", {}).items():
        for name, value in values.items():
            out[retrieval_metric(model, name)] = round(float(value), 5)
    for model, values in metrics.get("ranking", {}).items():
        for name in ("auc", "ndcg@10"):
            if name in values:
                out[ranking_metric(model, name)] = round(float(values[name]), 5)
    # the final list only: its retrieval-order and baseline lists are the retrieval section's
    # (and a ModelVersion's status.metrics holds at most 64 numbers)
    for name, value in metrics.get(SERVED, {}).get(FINAL, {}).items():
        out[served_metric(FINAL, name)] = round(float(value), 5)
    return out


def _loss_name(cfg: TrainConfig) -> str:
    if cfg.model.negatives == "full":
        return "full softmax over the catalogue"
    if cfg.model.log_q_correction:
        return "in-batch softmax with logQ correction"
    return "in-batch softmax"


def model_card(
    cfg: TrainConfig, metrics: Mapping[str, Any], shape: ModelShape, training: Mapping[str, Any]
) -> tuple[dict[str, Any], str]:
    retrieval = metrics.get("retrieval", {})
    ranking = metrics.get("ranking", {})
    split = metrics.get("split", {})
    card = {
        "name": cfg.version,
        "task": "two-stage recommendation: two-tower retrieval + DCN-v2 ranking",
        "data": {
            "interactions": cfg.data.interactions_uri,
            "users": cfg.data.users_uri,
            "items": cfg.data.items_uri,
            "split": split,
        },
        "model": {
            "embeddingDim": shape.embedding_dim,
            "userFeatures": [f.name for f in shape.user.features],
            "itemFeatures": [f.name for f in shape.item.features],
            "users": shape.user.id_count - 1,
            "items": shape.item.id_count - 1,
        },
        "training": dict(training),
        "metrics": {"retrieval": retrieval, "ranking": ranking},
        "limitations": [
            "Ids unseen in training map to one shared unknown embedding; their vectors come "
            "from features alone (and are poor unless training used idDropout > 0).",
            "Offline metrics are from one time-split holdout; they do not measure "
            "online effects such as feedback loops or presentation bias.",
            "In-batch negatives are corrected for popularity (logQ) but the training data "
            "itself reflects what earlier systems showed.",
        ],
    }
    lines = [
        f"# Model card: {cfg.version}",
        "",
        f"Two-tower retrieval ({_loss_name(cfg)}, user history of "
        f"{cfg.model.history_length} items) and a DCN-v2 ranker, trained by recsys-operator.",
        "",
        "## Data",
        f"- interactions: `{cfg.data.interactions_uri}`",
        f"- users: `{cfg.data.users_uri}`; items: `{cfg.data.items_uri}`",
        f"- time split: {split.get('trainInteractions')} train / {split.get('testInteractions')}"
        f" test interactions; {split.get('evaluatedUsers')} evaluated users "
        f"({split.get('users')}), {split.get('catalogItems')} catalog items",
        "",
        "## Retrieval (time-split holdout)",
        "",
    ]
    if retrieval:
        cols = list(next(iter(retrieval.values())).keys())
        lines.append("| model | " + " | ".join(cols) + " |")
        lines.append("|---" * (len(cols) + 1) + "|")
        for name, vals in retrieval.items():
            lines.append(f"| {name} | " + " | ".join(f"{vals[c]:.4f}" for c in cols) + " |")
    if ranking:
        lines += ["", "## Ranking (relevant items among sampled negatives)", ""]
        cols = list(next(iter(ranking.values())).keys())
        lines.append("| model | " + " | ".join(cols) + " |")
        lines.append("|---" * (len(cols) + 1) + "|")
        for name, vals in ranking.items():
            lines.append(f"| {name} | " + " | ".join(f"{vals[c]:.4f}" for c in cols) + " |")
    lines += ["", "## Limitations", ""] + [f"- {text}" for text in card["limitations"]]
    return card, "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ExportInputs:
    cfg: TrainConfig
    shape: ModelShape
    user_encoder: EntityEncoder
    item_encoder: EntityEncoder
    two_tower: TwoTower
    ranker: Ranker
    item_ids: npt.NDArray[np.int64]
    item_vectors: npt.NDArray[np.float32]
    query_user_ids: npt.NDArray[np.int64]
    query_vectors: npt.NDArray[np.float32]
    popular: list[tuple[int, int]]
    metrics: dict[str, Any]
    profile: dict[str, Any]
    training: dict[str, Any]
    #: what the model learned from (``recsys_contract.train.Lineage``), kept in the manifest so
    #: a rerun after publishing reports it too
    lineage: dict[str, Any] | None = None
    #: the final score's formula, as the evaluation chose and applied it
    fusion: ScoreFusion = RANKER_ONLY


def export_model(store: Store, x: ExportInputs) -> dict[str, Any]:
    """Write the artifact directory; returns the published manifest."""
    w = ArtifactWriter(store, x.cfg.artifact_uri, MODEL_KIND)
    w.put_json("config.json", x.cfg.model_dump(mode="json", by_alias=True))
    w.put_json(
        "encoders.json", {"user": x.user_encoder.to_json(), "item": x.item_encoder.to_json()}
    )
    w.put_json("models/architecture.json", x.shape.to_json())
    w.put("models/two_tower.pt", _state_bytes(x.two_tower))
    w.put("models/ranker.pt", _state_bytes(x.ranker))
    w.put_npy("embeddings/item_ids.npy", x.item_ids.astype(np.int64))
    w.put_npy("embeddings/item_embeddings.npy", x.item_vectors.astype(np.float32))
    w.put_npy("embeddings/query_user_ids.npy", x.query_user_ids.astype(np.int64))
    w.put_npy("embeddings/query_embeddings.npy", x.query_vectors.astype(np.float32))
    w.put_json(
        "popular_items.json",
        [{"itemId": int(i), "count": int(c)} for i, c in x.popular[:POPULAR_ITEMS]],
    )
    w.put_json(SCORING_FILE, x.fusion.to_json())
    w.put_json("metrics.json", {**x.metrics, "training": x.training})
    w.put_json("profile.json", x.profile)
    card, card_md = model_card(x.cfg, x.metrics, x.shape, x.training)
    w.put_json("model_card.json", card)
    w.put("model_card.md", card_md.encode())
    return w.publish(
        {
            "version": x.cfg.version,
            "createdAt": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "embeddingDim": x.shape.embedding_dim,
            "itemCount": int(x.item_ids.size),
            "metric": "inner_product",
            "torch": torch.__version__,
            "metrics": headline_metrics(x.metrics),
            **({"lineage": x.lineage} if x.lineage else {}),
        }
    )


@dataclass
class LoadedModel:
    manifest: dict[str, Any]
    shape: ModelShape
    user_encoder: EntityEncoder
    item_encoder: EntityEncoder
    two_tower: TwoTower
    ranker: Ranker
    fusion: ScoreFusion = RANKER_ONLY


def load_model_artifact(store: Store, uri: str, device: str = "cpu") -> LoadedModel:
    """Rebuild both networks from a published artifact, every file checked against the manifest."""
    r = ArtifactReader(store, uri, MODEL_KIND)
    shape = ModelShape.from_json(r.read_json("models/architecture.json"))
    encoders = r.read_json("encoders.json")
    two_tower, ranker = TwoTower(shape), Ranker(shape)
    for model, rel in ((two_tower, "models/two_tower.pt"), (ranker, "models/ranker.pt")):
        state = torch.load(io.BytesIO(r.read(rel)), map_location=device, weights_only=True)
        model.load_state_dict(state)
        model.to(device).eval()
    return LoadedModel(
        r.manifest,
        shape,
        EntityEncoder.from_json(encoders["user"]),
        EntityEncoder.from_json(encoders["item"]),
        two_tower,
        ranker,
        read_fusion(r),
    )
