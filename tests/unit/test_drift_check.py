"""One drift check on hand-made profiles and served entries: what is compared, what is reported."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from recsys_contract.drift import DriftConfig, DriftSummary
from recsys_contract.termination import TERMINATION_MESSAGE_LIMIT
from recsys_workloads.drift.check import Reference, Sample, check
from recsys_workloads.gateway.served_log import ServedRecord
from recsys_workloads.runtime import BadInputError, parse_config
from recsys_workloads.train.features import EntityEncoder, FeatureSpec, IdVocabulary
from recsys_workloads.train.profile import PROFILE_FORMAT, bin_labels, score_profile

COLOR = FeatureSpec("color", "categorical", vocabulary=("red", "green", "blue"))
AGE = FeatureSpec("age", "numeric", boundaries=(20.0, 40.0))
# training: colors 50/30/20 (never missing), ages 0.25 / 0.5 / 0.25 in the three buckets
TRAINED = {"user.color": [0.0, 0.5, 0.3, 0.2], "user.age": [0.0, 0.25, 0.5, 0.25]}


def reference(scores: dict[str, Any] | None = None, **probs: list[float]) -> Reference:
    features = {}
    for spec in (COLOR, AGE):
        key = f"user.{spec.name}"
        p = probs.get(spec.name, TRAINED[key])
        features[key] = {
            "entity": "user",
            "name": spec.name,
            "kind": spec.kind,
            "bins": bin_labels(spec),
            "entityRows": {"count": 100, "probabilities": p},
            "interactionRows": {"count": 1000, "probabilities": p},
        }
    profile: dict[str, Any] = {"format": PROFILE_FORMAT, "cutoff": 0, "features": features}
    if scores is not None:
        profile["scores"] = scores
    users = EntityEncoder("user", "user_id", IdVocabulary(np.arange(1, 101)), (COLOR, AGE))
    items = EntityEncoder("item", "item_id", IdVocabulary(np.arange(1000, 1100)))
    return Reference(profile, users, items)


def config(**extra: Any) -> dict[str, Any]:
    return {
        "recommender": "shop.movies",
        "servedLog": {"redisUrl": "redis://localhost:6379/0"},
        "modelArtifactUri": "memory://models/v1",
        **extra,
    }


def entries(
    colors: dict[str | None, int],
    ages: list[float] | None = None,
    *,
    items: list[tuple[int, float]] | None = None,
    fallback: str | None = None,
    user: int = 1,
    t0: int = 1_700_000_000_000,
) -> list[ServedRecord]:
    values = [c for c, n in colors.items() for _ in range(n)]
    ages = ages or [30.0] * len(values)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(values))
    return [
        ServedRecord(
            request_id=f"r{n}-s",
            ts_ms=t0 + 1000 * n,
            user_id=user,
            variant="stable",
            model_version="v1",
            index="",
            fallback=fallback,
            items=items or [(1000, 1.0)],
            candidates=[],
            features={"color": values[i], "age": ages[i % len(ages)]},
        )
        for n, i in enumerate(order.tolist())
    ]


def ages_like_training(n: int) -> list[float]:
    return [10.0] * (n // 4) + [30.0] * (n // 2) + [50.0] * (n - n // 4 - n // 2)


def run(ref: Reference, records: list[ServedRecord], **extra: Any) -> dict[str, Any]:
    return check(parse_drift(config(**extra)), ref, Sample(records, len(records), 0))


def test_traffic_like_training_is_not_drift() -> None:
    records = entries({"red": 500, "green": 300, "blue": 200}, ages_like_training(1000))
    s = run(reference(), records)
    assert s["judged"] is True
    assert s["drifted"] is False
    assert s["driftedFeatures"] == []
    assert {f["name"] for f in s["features"]} == {"user.color", "user.age"}
    assert all(f["value"] == pytest.approx(0.0, abs=1e-9) for f in s["features"])
    assert s["method"] == "PSI"
    assert s["threshold"] == 0.2
    assert s["epsilon"] == 1e-4
    assert s["sample"]["size"] == 1000
    assert s["sample"]["withoutFeatures"] == 0
    assert s["sample"]["from"] == "2023-11-14T22:13:20+00:00"
    assert s["sample"]["to"] == "2023-11-14T22:29:59+00:00"


@pytest.mark.parametrize(
    ("colors", "method", "drifted", "worst_bin"),
    [
        # 50/30/20 -> 20/40/40: PSI 0.44 (red moved most), KL 0.21 (blue weighs most)
        ({"red": 200, "green": 400, "blue": 400}, "PSI", True, "red"),
        ({"red": 200, "green": 400, "blue": 400}, "KL", True, "blue"),
        # a nudge: PSI 0.0108, KL 0.0054
        ({"red": 450, "green": 330, "blue": 220}, "PSI", False, "red"),
        # a quarter of the users arrive without the feature, which training never saw
        ({"red": 375, "green": 225, "blue": 150, None: 250}, "KL", True, "missing"),
    ],
)
def test_a_moved_feature_is_named_with_the_bin_that_moved(
    colors: dict[str | None, int], method: str, drifted: bool, worst_bin: str
) -> None:
    n = sum(colors.values())
    s = run(reference(), entries(colors, ages_like_training(n)), method=method)
    color = next(f for f in s["features"] if f["name"] == "user.color")
    assert color["drifted"] is drifted
    assert s["drifted"] is drifted
    assert s["driftedFeatures"] == (["user.color"] if drifted else [])
    assert color["bin"] == worst_bin
    assert s["features"][0]["name"] == "user.color"  # sorted by score, highest first


def test_psi_figure_is_the_formula() -> None:
    s = run(reference(), entries({"red": 200, "green": 400, "blue": 400}, ages_like_training(1000)))
    color = s["features"][0]
    want = 0.3 * np.log(2.5) + 0.1 * np.log(4 / 3) + 0.2 * np.log(2)
    assert color["value"] == pytest.approx(want, abs=1e-6)
    assert (color["expected"], color["actual"]) == (0.5, 0.2)


def test_too_few_entries_judge_nothing() -> None:
    s = run(reference(), entries({"red": 50}), minSampleSize=100, sampleSize=1000)
    assert s["judged"] is False
    assert s["drifted"] is False
    assert s["reason"].startswith("InsufficientSample: 50 served entries")
    s = run(reference(), [], sampleSize=1000)
    assert s["judged"] is False
    assert "from" not in s["sample"]


def test_only_the_named_features_are_compared() -> None:
    records = entries({"red": 100, "green": 100, "blue": 800})
    s = run(reference(), records, features=["age"])
    assert [f["name"] for f in s["features"]] == ["user.age"]
    s = run(reference(), records, features=["user.color"])
    assert s["driftedFeatures"] == ["user.color"]
    with pytest.raises(BadInputError, match=r"features: 'height' is not a user feature.*user\.age"):
        run(reference(), records, features=["height"])


def training_scores() -> dict[str, Any]:
    """Two items per user, best first: the max and the min of two standard normals."""
    pairs = -np.sort(-np.random.default_rng(1).normal(0.0, 1.0, (10_000, 2)), axis=1)
    ranks = np.tile([0, 1], 10_000)
    entry = score_profile(pairs.ravel(), ranks, users=10_000, top_k=2, candidates=10)
    assert entry is not None
    return entry


def test_score_profile_is_deciles() -> None:
    entry = training_scores()
    assert len(entry["boundaries"]) == 9
    assert entry["bins"][0] == "missing"
    probs = entry["distribution"]["probabilities"]
    assert probs[0] == 0.0
    assert probs[1:] == pytest.approx([0.1] * 10, abs=1e-3)
    assert [sum(r) for r in entry["byRank"]] == [10_000, 10_000]
    # the first item's scores sit high: few in the lowest decile, many in the highest
    assert entry["byRank"][0][1] < 300
    assert entry["byRank"][0][-1] > 1700
    assert score_profile(np.array([np.nan]), np.array([0]), users=0, top_k=1, candidates=1) is None


@pytest.mark.parametrize(
    ("mean", "served", "fallback", "drifted"),
    [
        (0.0, 3, None, False),
        (1.5, 3, None, True),
        # one item served: compared with training's first items only, not with both ranks
        (0.0, 1, None, False),
        (-1.0, 1, None, True),
        (1.5, 3, "triton-timeout", None),
    ],
)
def test_served_scores_against_the_profile(
    mean: float, served: int, fallback: str | None, drifted: bool | None
) -> None:
    rng = np.random.default_rng(2)
    base = entries({"red": 1000, "green": 600, "blue": 400}, ages_like_training(2000),
                   fallback=fallback)  # fmt: skip
    records = []
    for r in base:
        # the first topK (2) items are compared; the third is past it and far off
        a, b = sorted(rng.normal(mean, 1.0, 2), reverse=True)
        items = [(1000, a), (1001, b), (1002, 99.0)]
        records.append(replace(r, items=items[:served]))
    s = run(reference(training_scores()), records)
    score = s["score"]
    if drifted is None:  # fallbacks serve no model scores
        assert score["value"] is None
        assert score["entries"] == 0
        return
    assert score["drifted"] is drifted
    assert score["topK"] == 2
    assert score["values"] == 2000 * min(served, 2)
    assert score["entries"] == 2000
    assert s["driftedFeatures"] == []
    assert s["drifted"] is drifted


def test_no_score_histogram_in_the_profile_is_said() -> None:
    s = run(reference(), entries({"red": 500, "green": 300, "blue": 200}))
    assert s["score"] == {"value": None, "note": "the profile has no score histogram"}


def test_items_and_users_training_never_saw() -> None:
    served = [(1000, 1.0), (5000, 0.5), (1001, 0.2), (5001, 0.1)]
    records = entries({"red": 500, "green": 300, "blue": 200}, ages_like_training(1000),
                      items=served, user=777)  # fmt: skip
    s = run(reference(), records)
    assert s["catalog"] == {
        "unseenItemShare": 0.5,
        "servedItems": 4000,
        "unseenUserShare": 1.0,
        "drifted": False,
    }
    assert s["drifted"] is False
    s = run(reference(), records, unseenItemThreshold=0.3)
    assert s["catalog"]["drifted"] is True
    assert s["drifted"] is True


def test_the_summary_fits_a_termination_message() -> None:
    long = FeatureSpec("c", "categorical", vocabulary=tuple("x" * 200 + str(i) for i in range(30)))
    features = {}
    for i in range(40):
        spec = FeatureSpec(f"f{i:02d}_{'y' * 100}", "categorical", vocabulary=long.vocabulary)
        features[f"user.{spec.name}"] = {
            "bins": bin_labels(spec),
            "interactionRows": {"probabilities": [1.0] + [0.0] * 30},
        }
    specs = tuple(
        FeatureSpec(k.removeprefix("user."), "categorical", vocabulary=long.vocabulary)
        for k in features
    )
    users = EntityEncoder("user", "user_id", IdVocabulary(np.arange(1)), specs)
    ref = Reference({"format": 1, "features": features}, users, reference().item)
    rows = {s.name: long.vocabulary[0] for s in specs}
    records = [
        ServedRecord(f"r{n}", n, 1, "stable", "v1", "", None, [(1, 0.1)], [], rows)
        for n in range(200)
    ]
    s = run(ref, records, topFeatures=20)
    assert s["driftedCount"] == 40
    assert s["trimmed"] is True
    assert len(s["features"]) >= 10
    assert len(json.dumps(s | {"status": "Succeeded"}, separators=(",", ":"))) <= (
        TERMINATION_MESSAGE_LIMIT
    )
    short = run(reference(), entries({"red": 100, "blue": 900}, ages_like_training(1000)))
    assert "trimmed" not in short
    assert short["driftedFeatures"] == ["user.color"]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"sampleSize": 5}, "sampleSize"),
        ({"method": "JS"}, "method"),
        ({"threshold": 5.0}, "threshold"),
        ({"method": "KL", "threshold": 1.5}, "threshold"),
        ({"minSampleSize": 500, "sampleSize": 200}, "minSampleSize"),
        ({"topFeatures": 0}, "topFeatures"),
        ({"sampelSize": 100}, "sampelSize: unknown field"),
        ({"servedLog": {"redisUrl": "redis://u:pw@host:6379/0"}}, "servedLog.redisUrl"),
        ({"recommender": "movies"}, "recommender"),
        ({"reference": "allRows"}, "reference"),
    ],
)
def test_bad_config_names_the_field(extra: dict[str, Any], field: str) -> None:
    with pytest.raises(BadInputError, match=rf"drift config: .*{field}"):
        parse_drift(config(**extra))


def test_defaults() -> None:
    cfg = parse_drift(config())
    assert (cfg.method, cfg.effective_threshold, cfg.sample_size) == ("PSI", 0.2, 10_000)
    assert parse_drift(config(method="KL")).effective_threshold == 0.1
    assert cfg.served_log.key_prefix == ""


def parse_drift(raw: dict[str, Any]) -> DriftConfig:
    return parse_config(DriftConfig, raw, "drift config")


@pytest.mark.parametrize("shifted", [False, True])
def test_the_summary_is_the_contract_the_operator_reads(shifted: bool) -> None:
    colors = {"red": 200, "green": 400, "blue": 400} if shifted else {"red": 500, "green": 300,
                                                                        "blue": 200}  # fmt: skip
    s = run(reference(), entries(colors, ages_like_training(1000)))
    read = DriftSummary.read({"status": "Succeeded", **s})
    assert read is not None
    assert (read.judged, read.drifted, read.method) == (True, shifted, "PSI")
    assert read.drifted_features == s["driftedFeatures"]
    assert [f.name for f in read.features] == [f["name"] for f in s["features"]]
