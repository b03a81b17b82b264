"""One drift check: sample the served log, bin it as the profile does, compare, summarise.

Served user features are encoded with the serving version's own encoders (``encoders.json``,
``serving.encoding``: the exact indices the model saw) and counted per profile bin
(``train.profile.bin_counts``); the served scores are binned at the profile's score deciles.
Only user features are compared: the served log carries the requesting user's features, not
the served items' (and items chosen by the model are not distributed like items people
picked in training anyway); catalog drift is measured as the share of served items the model
never saw in training.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys_contract.drift import DriftConfig
from recsys_contract.keyspace import GatewayKeys
from recsys_contract.termination import TERMINATION_MESSAGE_LIMIT
from recsys_workloads.artifact_store import ArtifactReader, Store
from recsys_workloads.drift import stats
from recsys_workloads.gateway.served_log import ServedRecord
from recsys_workloads.redis_client import SyncRedis, redis_client, redis_errors
from recsys_workloads.runtime import BadInputError, parse_config
from recsys_workloads.serving.encoding import FeatureLookup, RequestEncoder
from recsys_workloads.train.features import EntityEncoder, FeatureSpec
from recsys_workloads.train.profile import PROFILE_FORMAT, bin_counts, score_spec

#: Entries read per XREVRANGE call, and how far past ``sampleSize`` entries a check may scan
#: looking for those of ``modelVersion`` (a canary's version may be rare in the log).
PAGE = 1000
SCAN_FACTOR = 10
#: Bin labels in the summary are cut to this many characters (long category values).
LABEL_CHARS = 40


@dataclass(frozen=True)
class Reference:
    """What the serving version was trained on: its profile and encoders."""

    profile: Mapping[str, Any]
    user: EntityEncoder
    item: EntityEncoder

    @classmethod
    def load(cls, store: Store, uri: str) -> Reference:
        reader = ArtifactReader(store, uri, "model")
        profile = reader.read_json("profile.json")
        if not isinstance(profile, dict) or profile.get("format") != PROFILE_FORMAT:
            got = profile.get("format") if isinstance(profile, dict) else type(profile).__name__
            raise BadInputError(
                f"modelArtifactUri: {uri}/profile.json has format {got!r}, expected "
                f"{PROFILE_FORMAT}; retrain the version or point at a newer one"
            )
        encoders = reader.read_json("encoders.json")
        return cls(
            profile,
            EntityEncoder.from_json(encoders["user"]),
            EntityEncoder.from_json(encoders["item"]),
        )


@dataclass(frozen=True)
class Sample:
    records: list[ServedRecord]
    scanned: int
    malformed: int


def _xrevrange(
    client: SyncRedis, key: str, high: str, count: int
) -> list[tuple[str, dict[bytes, bytes]]]:
    page: Any = client.xrevrange(key, max=high, min="-", count=count)
    return [(entry_id.decode(), fields) for entry_id, fields in page]


def read_sample(cfg: DriftConfig) -> Sample:
    """The newest ``sampleSize`` served entries (of ``modelVersion`` when set), newest first."""
    store = cfg.served_log
    stream = GatewayKeys.of(cfg.recommender, store.key_prefix).served
    client = redis_client(
        store.redis_url,
        store.connect_timeout_seconds,
        store.connect_timeout_seconds,
        cluster=store.redis_cluster,
    )
    records: list[ServedRecord] = []
    scanned = malformed = 0
    upper = "+"
    limit = cfg.sample_size * (SCAN_FACTOR if cfg.model_version else 1)
    with redis_errors(store.redis_url), client:
        while len(records) < cfg.sample_size and scanned < limit:
            count = min(PAGE, limit - scanned)
            page = _xrevrange(client, stream, upper, count)
            for entry_id, fields in page:
                scanned += 1
                upper = f"({entry_id}"
                try:
                    record = ServedRecord.from_fields(fields)
                except (KeyError, ValueError, TypeError, UnicodeDecodeError):
                    malformed += 1
                    continue
                if cfg.model_version is None or record.model_version == cfg.model_version:
                    records.append(record)
                    if len(records) == cfg.sample_size:
                        break
            if len(page) < count:
                break
    return Sample(records, scanned, malformed)


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")


def _selected(cfg: DriftConfig, ref: Reference) -> list[FeatureSpec]:
    """The user features to compare, as the config names them (checked against the model)."""
    specs = {f"user.{s.name}": s for s in ref.user.features if f"user.{s.name}" in _features(ref)}
    if cfg.features is None:
        return list(specs.values())
    out = []
    for name in cfg.features:
        key = name if name.startswith("user.") else f"user.{name}"
        if key not in specs:
            raise BadInputError(
                f"features: {name!r} is not a user feature of the model at "
                f"{cfg.model_artifact_uri} (it has {sorted(specs) or 'none'})"
            )
        out.append(specs[key])
    return out


def _features(ref: Reference) -> Mapping[str, Any]:
    features = ref.profile.get("features", {})
    return features if isinstance(features, dict) else {}


def _expected(entry: Mapping[str, Any], key: str, n_bins: int, what: str) -> np.ndarray[Any, Any]:
    dist = entry.get(key) or {}
    probs = np.asarray(dist.get("probabilities", []), dtype=np.float64)
    if probs.size != n_bins:
        raise BadInputError(
            f"modelArtifactUri: the profile's {what} has {probs.size} bins where its encoder "
            f"makes {n_bins}; the artifact is inconsistent, retrain it"
        )
    return probs


@dataclass(frozen=True)
class Comparison:
    name: str
    value: float
    bin: str
    expected: float
    actual: float


def compare(
    method: stats.Method,
    name: str,
    labels: Sequence[str],
    counts: Iterable[int],
    expected: np.ndarray[Any, Any],
) -> Comparison:
    """One feature's divergence and the bin that moved it most."""
    actual = stats.proportions(np.fromiter(counts, dtype=np.float64))
    terms = stats.divergence_terms(method, actual, expected)
    worst = int(np.argmax(np.abs(terms)))
    return Comparison(
        name,
        stats.divergence(method, actual, expected),
        str(labels[worst])[:LABEL_CHARS],
        float(expected[worst]),
        float(actual[worst]),
    )


def _r(x: float) -> float:
    return round(float(x), 6)


def check(cfg: DriftConfig, ref: Reference, sample: Sample) -> dict[str, Any]:
    """The summary of one check (what the termination message carries)."""
    records = sample.records
    threshold = cfg.effective_threshold
    summary: dict[str, Any] = {
        "recommender": cfg.recommender,
        "modelVersion": cfg.model_version,
        "method": cfg.method,
        "threshold": threshold,
        "epsilon": stats.EPSILON,
        "reference": cfg.reference,
        "sample": {
            "size": len(records),
            "requested": cfg.sample_size,
            "scanned": sample.scanned,
            "malformed": sample.malformed,
        },
    }
    if records:
        times = [r.ts_ms for r in records]
        summary["sample"] |= {"from": _iso(min(times)), "to": _iso(max(times))}
    if len(records) < cfg.min_sample_size:
        return summary | {
            "judged": False,
            "drifted": False,
            "reason": f"InsufficientSample: {len(records)} served entries, "
            f"at least {cfg.min_sample_size} needed",
        }
    specs = _selected(cfg, ref)
    rows = [r.features for r in records]
    summary["sample"]["withoutFeatures"] = sum(1 for r in rows if r is None)
    encoded = RequestEncoder(ref.user, tuple(FeatureLookup.of(s) for s in specs)).encode_rows(rows)
    results = []
    for spec in specs:
        key = f"user.{spec.name}"
        entry = _features(ref)[key]
        labels = entry.get("bins", [])
        expected = _expected(entry, cfg.reference, len(labels), f"{key}.{cfg.reference}")
        counts = bin_counts(spec, encoded[spec.name])
        results.append(compare(cfg.method, key, labels, counts, expected))
    results.sort(key=lambda c: -c.value)
    drifted = [c.name for c in results if c.value > threshold]
    summary["featuresChecked"] = len(results)
    summary["features"] = [
        {
            "name": c.name,
            "value": _r(c.value),
            "drifted": c.value > threshold,
            "bin": c.bin,
            "expected": _r(c.expected),
            "actual": _r(c.actual),
        }
        for c in results[: cfg.top_features]
    ]
    summary["driftedFeatures"] = drifted
    summary["driftedCount"] = len(drifted)
    score = score_drift(cfg, ref, records)
    summary["score"] = score
    catalog = catalog_drift(ref, records)
    catalog["drifted"] = (
        cfg.unseen_item_threshold is not None
        and catalog["unseenItemShare"] > cfg.unseen_item_threshold
    )
    summary["catalog"] = catalog
    summary |= {
        "judged": True,
        "drifted": bool(drifted) or bool(score.get("drifted")) or catalog["drifted"],
    }
    return fit_summary(summary)


def _size(summary: Mapping[str, Any]) -> int:
    # measured as runtime.write_termination_message writes it, plus its "status" field
    text = json.dumps(summary, separators=(",", ":"), sort_keys=True, default=str)
    return len(text.encode()) + len(',"status":"Succeeded"')


def fit_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """Drop drifted names, then the lowest of the top features, until the summary fits in a
    termination message (long feature names); ``trimmed`` says so, ``driftedCount`` stays."""
    while _size(summary) > TERMINATION_MESSAGE_LIMIT:
        if summary.get("driftedFeatures"):
            summary["driftedFeatures"] = summary["driftedFeatures"][:-1]
        elif len(summary.get("features", [])) > 1:
            summary["features"] = summary["features"][:-1]
        else:
            break
        summary["trimmed"] = True
    return summary


def score_drift(
    cfg: DriftConfig, ref: Reference, records: Sequence[ServedRecord]
) -> dict[str, Any]:
    """The served scores' divergence from the profile's histogram (entries that were not a
    fallback, their first ``topK`` items: the ranker's logits, after any boosts). Served lists
    shorter than ``topK`` are compared with the same ranks of training (``byRank``)."""
    entry = ref.profile.get("scores")
    if not isinstance(entry, dict):
        return {"value": None, "note": "the profile has no score histogram"}
    top_k = int(entry.get("topK", 0)) or None
    ranked = [r.items[:top_k] for r in records if r.fallback is None]
    scores = [s for items in ranked for _, s in items]
    if not scores:
        return {"value": None, "note": "no served scores outside fallbacks", "entries": 0}
    spec = score_spec(list(entry.get("boundaries", [])))
    labels = entry.get("bins", [])
    expected = _expected(entry, "distribution", len(labels), "scores")
    by_rank = np.asarray(entry.get("byRank", []), dtype=np.float64)
    if by_rank.ndim == 2 and by_rank.shape[1] == len(labels) and by_rank.shape[0] > 0:
        # training's mixture at the served ranks: each rank weighs as often as it was served
        served_at = np.bincount([len(items) for items in ranked], minlength=by_rank.shape[0] + 1)
        at_least = np.cumsum(served_at[::-1])[::-1][1 : by_rank.shape[0] + 1]
        per_rank = by_rank / np.maximum(by_rank.sum(axis=1, keepdims=True), 1.0)
        expected = stats.proportions(at_least @ per_rank)
    counts = bin_counts(spec, FeatureLookup.of(spec).encode(scores))
    c = compare(cfg.method, "score", labels, counts, expected)
    return {
        "value": _r(c.value),
        "drifted": c.value > cfg.effective_threshold,
        "bin": c.bin,
        "expected": _r(c.expected),
        "actual": _r(c.actual),
        "entries": len(ranked),
        "values": len(scores),
        "topK": top_k,
    }


def catalog_drift(ref: Reference, records: Sequence[ServedRecord]) -> dict[str, Any]:
    """Shares of served items and of requesting users the model never saw in training."""
    items = np.fromiter((i for r in records for i, _ in r.items), dtype=np.int64)
    users = np.fromiter((r.user_id for r in records), dtype=np.int64)
    unseen_items = float((ref.item.ids.encode(items) == 0).mean()) if items.size else 0.0
    unseen_users = float((ref.user.ids.encode(users) == 0).mean()) if users.size else 0.0
    return {
        "unseenItemShare": _r(unseen_items),
        "servedItems": int(items.size),
        "unseenUserShare": _r(unseen_users),
    }


def run(raw: dict[str, Any]) -> dict[str, Any]:
    cfg = parse_config(DriftConfig, raw, "drift config")
    ref = Reference.load(Store(cfg.storage_options), cfg.model_artifact_uri)
    _selected(cfg, ref)  # a misnamed feature is bad input before Redis is read
    return check(cfg, ref, read_sample(cfg))
