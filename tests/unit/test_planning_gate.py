"""The evaluation gate's decision, as a table of built metrics and gates."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from recsys_operator.api.training import BaselineComparison, EvaluationGate
from recsys_operator.planning.modelversion import evaluate_gate, gate_metrics

#: a training summary's headline metrics at k=20 (flat names, as the Job reports them)
HEADLINE = {
    "twoTower.recall@20": 0.19,
    "twoTower.ndcg@20": 0.12,
    "ranker.ranking.auc": 0.8,
    "served.final.recall@20": 0.20,
    "served.final.ndcg@20": 0.13,
    "served.final.ndcg@20.se": 0.01,
    "popularity.recall@20": 0.14,
    "popularity.ndcg@20": 0.10,
    "als.recall@20": 0.21,
    "als.ndcg@20": 0.14,
}
#: the same without the end-to-end figures (an older training image)
OLD = {k: v for k, v in HEADLINE.items() if not k.startswith("served.")}
#: a served list without its standard error, and baselines never carry one
NO_SE = {k: v for k, v in HEADLINE.items() if not k.endswith(".se")}
LOOSE = [{"name": "recallAtK", "thresholdRange": {"min": 0.0}}]


def gate(**fields: Any) -> EvaluationGate:
    return EvaluationGate.model_validate({"k": 20, "metrics": LOOSE, **fields})


CASES = [
    # (case, gate, headline, passes, words in the message)
    ("default: beats popularity", gate(), HEADLINE, True, ["0.1300±0.0100 vs popularity 0.1000"]),
    ("no standard error", gate(), NO_SE, True, ["served ndcg@20=0.1300 vs popularity 0.1000"]),
    (
        "below ALS",
        gate(baseline={"name": "als"}),
        HEADLINE,
        False,
        ["served ndcg@20=0.1300±0.0100 vs als 0.1400", "does not beat als"],
    ),
    (
        "by recall, above ALS",
        gate(baseline={"name": "als", "metric": "recallAtK"}),
        {**HEADLINE, "served.final.recall@20": 0.22},
        True,
        ["served recall@20=0.2200 vs als 0.2100"],
    ),
    (
        "a lift it misses",
        gate(baseline={"minLift": 0.5}),
        HEADLINE,
        False,
        ["by minLift +50% (needs above 0.1500)"],
    ),
    ("a lift it makes", gate(baseline={"minLift": 0.25}), HEADLINE, True, ["0.1300"]),
    (
        "a tolerated shortfall",
        gate(baseline={"name": "als", "minLift": -0.1}),
        HEADLINE,
        True,
        ["vs als 0.1400"],
    ),
    (
        "equal is not beating",
        gate(),
        {**HEADLINE, "served.final.ndcg@20": 0.10},
        False,
        ["does not beat popularity"],
    ),
    ("no end-to-end figures", gate(), OLD, False, ["were not reported", "name: none"]),
    ("compared with nothing", gate(baseline={"name": "none"}), OLD, True, ["recall@20=0.1900"]),
]


@pytest.mark.parametrize(
    ("gate_", "headline", "passes", "words"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_gate_decision(
    gate_: EvaluationGate, headline: dict[str, float], passes: bool, words: list[str]
) -> None:
    passed, message = evaluate_gate(gate_, gate_metrics(headline, gate_.k), None, None)
    assert passed is passes, message
    for word in words:
        assert word in message


def test_the_default_gate_compares_the_served_ndcg_with_popularity() -> None:
    default = EvaluationGate().baseline
    assert (default.name, default.metric, default.min_lift) == ("popularity", "ndcgAtK", None)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"name": "none", "minLift": 0.1}, "remove minLift"),
        ({"minLift": -1.5}, "greater than or equal to -1"),
        ({"name": "random"}, "popularity"),
    ],
)
def test_bad_baselines_are_refused_naming_the_fix(fields: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        BaselineComparison.model_validate(fields)
