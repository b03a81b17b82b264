"""The index build Job's config (rendered from a Recommender and a ModelVersion) and its summary.

Config (camelCase, unknown fields refused; everything but the two URIs has a default)::

    {
      "version": "movies-v3",
      "modelArtifactUri": "s3://recsys/movies/models/movies-v3",
      "indexUri": "s3://recsys/movies/indexes/movies-v3",
      "storageOptions": {},
      "index": {"kind": "auto", "flatThreshold": 20000, "hnswM": 32,
                "efConstruction": 200, "efSearch": 128,
                "approximate": "hnsw", "nlist": 1024, "nprobe": 16},
      "validation": {"k": 10, "queries": 1000, "minRecall": 0.95,
                     "efSearchCurve": [16, 32, 64, 128, 256, 512], "autoTuneEfSearch": true,
                     "nprobeCurve": [1, 2, 4, 8, 16, 32, 64, 128, 256], "autoTuneNprobe": true},
      "seed": 0
    }

What the Job does with it is told in ``recsys_workloads.index_build``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field

from recsys_contract.base import ConfigSection, Summary

#: How a model encodes a feature (``recsys_workloads.train.features``): a served value of
#: another kind is not what it learnt from.
FeatureKind = Literal["categorical", "numeric", "multi_hot"]

#: The approximate index ``kind: auto`` builds above ``flatThreshold`` items.
ApproximateKind = Literal["hnsw", "ivfFlat"]


class IndexSection(ConfigSection):
    kind: Literal["auto", "hnsw", "ivfFlat", "flat"] = "auto"
    flat_threshold: int = Field(default=20_000, ge=0)
    hnsw_m: int = Field(default=32, ge=4, le=256)
    ef_construction: int = Field(default=200, ge=8, le=4096)
    ef_search: int = Field(default=128, ge=1, le=65536)
    approximate: ApproximateKind = "hnsw"
    nlist: int = Field(default=1024, ge=1, le=65536)
    nprobe: int = Field(default=16, ge=1, le=65536)


class ValidationSection(ConfigSection):
    k: int = Field(default=10, ge=1, le=1000)
    queries: int = Field(default=1000, ge=1)
    min_recall: float = Field(default=0.95, ge=0, le=1)
    ef_search_curve: list[int] = Field(default_factory=lambda: [16, 32, 64, 128, 256, 512])
    auto_tune_ef_search: bool = True
    nprobe_curve: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64, 128, 256])
    auto_tune_nprobe: bool = True


class IndexBuildConfig(ConfigSection):
    version: str = Field(default="dev", min_length=1)
    model_artifact_uri: str = Field(min_length=1)
    index_uri: str = Field(min_length=1)
    storage_options: dict[str, Any] = Field(default_factory=dict)
    index: IndexSection = Field(default_factory=IndexSection)
    validation: ValidationSection = Field(default_factory=ValidationSection)
    seed: int = 0


class SchemaFeature(Summary):
    name: str
    kind: FeatureKind


class FeatureSchema(Summary):
    """The features a model was trained on, as its encoders hold them. Serving must supply
    every user feature by name and kind (item features are baked into its repository)."""

    user: list[SchemaFeature] = Field(default_factory=list)
    item: list[SchemaFeature] = Field(default_factory=list)

    def digest(self) -> str:
        """One name for one schema, the same whichever side computes it."""
        doc = {side: [[f.name, f.kind] for f in getattr(self, side)] for side in ("user", "item")}
        raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return "sha256:" + hashlib.sha256(raw).hexdigest()


class IndexSummary(Summary):
    """What a finished index build reports: the published index, checked against exact search."""

    version: str | None = None
    index_uri: str
    digest: str
    item_count: int
    index_type: str
    #: the efSearch (HNSW) or nprobe (IVF-Flat) serving uses (None for the other kinds)
    ef_search: int | None = None
    nprobe: int | None = None
    #: recall@k against exact search on held-out queries
    recall: float
    k: int
    #: the digest of the model artifact the index was built from
    model_digest: str
    #: the features the model was trained on (None from an index published before they were
    #: reported)
    features: FeatureSchema | None = None
    already_published: bool = False
