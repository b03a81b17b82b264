"""A child is re-applied only when the operator's intent changed (removals included) or a field
it sets differs."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from recsys_operator.diffing import (
    INTENT_HASH,
    contains,
    intent_hash,
    merge_patch,
    needs_apply,
    stamped,
)

DESIRED = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "triton", "namespace": "ns", "labels": {"app": "triton"}},
    "spec": {
        "replicas": 2,
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "triton",
                        "image": "nvcr.io/triton:24.08",
                        "resources": {"limits": {"nvidia.com/gpu": 1}},
                    }
                ]
            }
        },
    },
}


def observed_with_defaults() -> dict:  # type: ignore[type-arg]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "triton",
            "namespace": "ns",
            "labels": {"app": "triton"},
            "resourceVersion": "42",
            "uid": "u",
            "generation": 3,
        },
        "spec": {
            "replicas": 2,
            "progressDeadlineSeconds": 600,
            "template": {
                "spec": {
                    "restartPolicy": "Always",
                    "containers": [
                        {
                            "name": "triton",
                            "image": "nvcr.io/triton:24.08",
                            "imagePullPolicy": "IfNotPresent",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ],
                }
            },
        },
        "status": {"readyReplicas": 2},
    }


def applied(desired: dict, **change: object) -> dict:  # type: ignore[type-arg]
    """What the server holds after applying ``desired`` (as stamped), with defaults."""
    observed = observed_with_defaults()
    observed["metadata"]["annotations"] = dict(stamped(desired)["metadata"]["annotations"])
    for path, value in change.items():
        node = observed
        *parents, leaf = path.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return observed


def without_gpu_limit() -> dict:  # type: ignore[type-arg]
    desired = copy.deepcopy(DESIRED)
    del desired["spec"]["template"]["spec"]["containers"][0]["resources"]
    return desired


@pytest.mark.parametrize(
    ("case", "desired", "observed", "apply"),
    [
        ("server defaults and status are no difference", DESIRED, applied(DESIRED), False),
        ("a missing object", DESIRED, None, True),
        ("a changed field", DESIRED, applied(DESIRED, spec__replicas=3), True),
        ("a changed label", DESIRED, applied(DESIRED, metadata__labels={"app": "x"}), True),
        # The old child still has the limit, so containment alone sees nothing to do; the
        # intent hash differs, so the full intent is applied and the limit goes.
        ("a removed optional field", without_gpu_limit(), applied(DESIRED), True),
        (
            "applied without the annotation (older operator)",
            DESIRED,
            observed_with_defaults(),
            True,
        ),
        ("the removal once applied", without_gpu_limit(), applied(without_gpu_limit()), False),
    ],
)
def test_needs_apply(case: str, desired: dict, observed: dict | None, apply: bool) -> None:  # type: ignore[type-arg]
    assert needs_apply(stamped(desired), observed) is apply, case


def test_a_list_of_a_different_length_is_a_difference() -> None:
    observed = applied(DESIRED)
    observed["spec"]["template"]["spec"]["containers"].append({"name": "sidecar"})
    assert needs_apply(stamped(DESIRED), observed)


def test_the_hash_ignores_key_order_and_sees_values() -> None:
    reordered = dict(reversed(list(DESIRED.items())))
    assert intent_hash(reordered) == intent_hash(DESIRED)
    assert intent_hash(without_gpu_limit()) != intent_hash(DESIRED)
    assert INTENT_HASH in stamped(DESIRED)["metadata"]["annotations"]
    assert "annotations" not in DESIRED["metadata"], "stamping copies, never mutates"


def test_numbers_match_their_string_form_but_booleans_do_not() -> None:
    assert contains("1", 1)
    assert contains({"a": "0.5"}, {"a": 0.5})
    assert not contains("True", True)
    assert not contains("2", 1)


@pytest.mark.parametrize(
    ("observed", "desired", "patch"),
    [
        ({"a": 1}, {"a": 1}, {}),
        ({"a": 1}, {"a": 2}, {"a": 2}),
        ({"rollout": {"stable": "v2", "canary": "v2"}}, {"rollout": {"stable": "v2"}},
         {"rollout": {"canary": None}}),
        ({"drift": {"x": 1}, "b": 1}, {"b": 1}, {"drift": None}),
        ({"conditions": [{"type": "Ready"}]}, {"conditions": []}, {"conditions": []}),
        ({}, {"rollout": {"stable": "v1"}}, {"rollout": {"stable": "v1"}}),
        ({"rollout": "x"}, {"rollout": {"stable": "v1"}}, {"rollout": {"stable": "v1"}}),
    ],
)  # fmt: skip
def test_a_status_patch_removes_what_is_no_longer_reported(
    observed: dict[str, Any], desired: dict[str, Any], patch: dict[str, Any]
) -> None:
    assert merge_patch(observed, desired) == patch
