"""A child is re-applied only when a field the operator sets differs."""

from __future__ import annotations

from recsys_operator.diffing import contains, needs_apply

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


def test_server_defaults_and_status_are_not_a_difference() -> None:
    assert not needs_apply(DESIRED, observed_with_defaults())


def test_a_missing_object_needs_apply() -> None:
    assert needs_apply(DESIRED, None)


def test_a_changed_field_needs_apply() -> None:
    observed = observed_with_defaults()
    observed["spec"]["replicas"] = 3
    assert needs_apply(DESIRED, observed)


def test_a_changed_label_needs_apply() -> None:
    observed = observed_with_defaults()
    observed["metadata"]["labels"] = {"app": "other"}
    assert needs_apply(DESIRED, observed)


def test_a_list_of_a_different_length_is_a_difference() -> None:
    observed = observed_with_defaults()
    observed["spec"]["template"]["spec"]["containers"].append({"name": "sidecar"})
    assert needs_apply(DESIRED, observed)


def test_numbers_match_their_string_form_but_booleans_do_not() -> None:
    assert contains("1", 1)
    assert contains({"a": "0.5"}, {"a": 0.5})
    assert not contains("True", True)
    assert not contains("2", 1)
