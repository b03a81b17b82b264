"""How a served Deployment's pods are kept: a fixed ``replicas``, or an autoscaler that owns the
count; a disruption budget once there are two pods or more; a drain delay before a pod stops
(``planning.serving``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from api_objects import recommender
from pydantic import ValidationError

from recsys_operator.api.recommender import Recommender
from recsys_operator.planning import serving
from recsys_operator.planning.rollout import Routing

OWNER = {"apiVersion": "recsys.dev/v1alpha1", "kind": "Recommender",
         "metadata": {"name": "movies", "uid": "u-1"}}  # fmt: skip
CPU = {"requests": {"cpu": "500m"}}


def children(r: Recommender, component: str) -> dict[str, dict[str, Any]]:
    if component == "gateway":
        table = serving.routing_table(r, Routing("v1", None, 0), {"v1": "s3://m/indexes/v1"})
        objs = serving.gateway_objects(r, OWNER, table, "img", {})
    else:
        objs = serving.triton_objects(r, OWNER, "v1", "s3://m/models/v1", "img", "img")
    return {o["kind"]: o for o in objs}


@dataclass(frozen=True)
class Case:
    name: str
    component: str
    spec: dict[str, Any]
    #: The Deployment's replicas as applied; None: left out (the autoscaler's).
    replicas: int | None
    #: (minReplicas, maxReplicas, averageUtilization) of the autoscaler; None: no autoscaler.
    hpa: tuple[int, int, int] | None
    budget: bool


CASES = [
    Case("gateway default: two pods, a budget", "gateway", {}, 2, None, True),
    Case("gateway one pod: no budget", "gateway", {"replicas": 1}, 1, None, False),
    Case("gateway none: no budget", "gateway", {"replicas": 0}, 0, None, False),
    Case("triton default: one pod", "triton", {}, 1, None, False),
    Case("triton three pods: a budget", "triton", {"replicas": 3}, 3, None, True),
    Case(
        "gateway autoscaled from one: no budget, replicas left out",
        "gateway",
        {"autoscaling": {"maxReplicas": 5}, "resources": CPU},
        None,
        (1, 5, 80),
        False,
    ),
    Case(
        "gateway autoscaled from two: a budget; replicas ignored",
        "gateway",
        {
            "replicas": 1,
            "resources": CPU,
            "autoscaling": {
                "minReplicas": 2,
                "maxReplicas": 6,
                "targetCPUUtilizationPercentage": 60,
            },
        },
        None,
        (2, 6, 60),
        True,
    ),
    Case(
        "triton autoscaled on a CPU limit alone",
        "triton",
        {"autoscaling": {"minReplicas": 2, "maxReplicas": 2}, "resources": {"limits": {"cpu": 2}}},
        None,
        (2, 2, 80),
        True,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_pods_are_kept_as_the_spec_says(case: Case) -> None:
    r = recommender(serving={case.component: case.spec})
    spec = getattr(r.spec.serving, case.component)
    objs = children(r, case.component)
    deployment = objs["Deployment"]
    assert deployment["spec"].get("replicas") == case.replicas
    # a pod told to stop (a scale-down, a drain) keeps answering while its endpoint leaves
    # the Service's rules, whoever owns the count
    served = next(c for c in deployment["spec"]["template"]["spec"]["containers"]
                  if c["name"] == case.component)  # fmt: skip
    assert served["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    assert ("HorizontalPodAutoscaler" in objs) == (case.hpa is not None)
    assert ("PodDisruptionBudget" in objs) == case.budget
    # what is not applied is removed, so turning a field off converges
    unwanted = {kind for _, kind in serving.unwanted_scaling(spec)}
    assert unwanted.isdisjoint(objs)
    assert unwanted | {
        k for k in objs if k in {"HorizontalPodAutoscaler", "PodDisruptionBudget"}
    } == {
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    if case.hpa is not None:
        hpa = objs["HorizontalPodAutoscaler"]["spec"]
        assert hpa["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": deployment["metadata"]["name"],
        }
        target = hpa["metrics"][0]["resource"]
        assert (hpa["minReplicas"], hpa["maxReplicas"], target["target"]["averageUtilization"]) == (
            case.hpa
        )
        assert target["name"] == "cpu"
    if case.budget:
        pdb = objs["PodDisruptionBudget"]
        assert pdb["spec"] == {
            "maxUnavailable": 1,
            "selector": deployment["spec"]["selector"],
        }
        assert pdb["metadata"]["name"] == deployment["metadata"]["name"]
        assert pdb["metadata"]["ownerReferences"] == deployment["metadata"]["ownerReferences"]


@pytest.mark.parametrize(
    ("component", "spec", "message"),
    [
        ("gateway", {"autoscaling": {"maxReplicas": 3}}, "set serving.gateway.resources"),
        (
            "triton",
            {"autoscaling": {"maxReplicas": 3}, "resources": {"requests": {"memory": "1Gi"}}},
            "set serving.triton.resources.requests.cpu",
        ),
        (
            "gateway",
            {"autoscaling": {"minReplicas": 4, "maxReplicas": 3}, "resources": CPU},
            "minReplicas must not exceed maxReplicas",
        ),
        ("gateway", {"autoscaling": {"minReplicas": 2}, "resources": CPU}, "maxReplicas"),
        (
            "gateway",
            {
                "autoscaling": {"maxReplicas": 3, "targetCPUUtilizationPercentage": 0},
                "resources": CPU,
            },
            "targetCPUUtilizationPercentage",
        ),
    ],
)
def test_autoscaling_that_cannot_work_is_refused(
    component: str, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        recommender(serving={component: spec})
