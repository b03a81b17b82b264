"""The descriptions reach users: the apiserver publishes them in its OpenAPI v3 document, and
`kubectl explain` prints them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from api_support import install_crds

from recsys_operator import crdgen
from recsys_operator.api import KINDS

pytestmark = pytest.mark.testbed


def _published(testbed: Any) -> dict[str, Any]:
    """The OpenAPI v3 document of recsys.dev/v1alpha1, once it lists all three kinds."""
    deadline = time.monotonic() + 60
    while True:
        raw = testbed.kubectl("get", "--raw", "/openapi/v3/apis/recsys.dev/v1alpha1", check=False)
        if raw.returncode == 0:
            doc: dict[str, Any] = json.loads(raw.stdout)
            schemas = doc.get("components", {}).get("schemas", {})
            if all(f"dev.recsys.v1alpha1.{k.kind}" in schemas for k in KINDS):
                return doc
        assert time.monotonic() < deadline, raw.stderr or "kinds missing from OpenAPI v3"
        time.sleep(1)


def _descriptions(schema: Mapping[str, Any], path: str) -> Iterator[tuple[str, str]]:
    for name, prop in schema.get("properties", {}).items():
        yield f"{path}.{name}", prop.get("description", "")
        yield from _descriptions(prop, f"{path}.{name}")
        if isinstance(prop.get("items"), dict):
            yield from _descriptions(prop["items"], f"{path}.{name}[]")


def test_openapi_v3_carries_every_description(testbed: Any) -> None:
    install_crds(testbed)
    schemas = _published(testbed)["components"]["schemas"]
    for kind in KINDS:
        published = schemas[f"dev.recsys.v1alpha1.{kind.kind}"]
        assert published["description"] == kind.description
        expected = crdgen.crd_for(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        want = dict(_descriptions(expected["properties"]["spec"], "spec"))
        got = dict(_descriptions(published["properties"]["spec"], "spec"))
        assert want, kind.kind
        missing = [p for p, text in want.items() if got.get(p) != text]
        assert not missing, f"{kind.kind}: descriptions not published for {missing[:5]}"
        assert "x-kubernetes-validations" in json.dumps(published)  # rules are published too


def test_kubectl_explain_teaches_the_rollout(testbed: Any) -> None:
    install_crds(testbed)
    _published(testbed)
    out = testbed.kubectl("explain", "recommender.spec.serving.rollout").stdout
    flat = " ".join(out.split())
    for text in (
        "KIND: Recommender",
        "Canary rollout of new ModelVersions",
        "steps raise its share of users (setWeight) and hold it (pause)",
        "failureLimit failed checks it is rolled back",
        "pinnedModelVersion",
        "steps <[]Object>",
        "analysis <Object>",
        "userSticky <boolean>",
        "Assign users to stable or canary by a hash of the user id",
    ):
        assert text in flat, f"{text!r} missing from:\n{out}"
    steps = " ".join(
        testbed.kubectl("explain", "rec.spec.serving.rollout.steps.pause").stdout.split()
    )
    assert "until promoted by hand" in steps
    metrics = " ".join(
        testbed.kubectl(
            "explain", "recommender.spec.serving.rollout.analysis.metrics"
        ).stdout.split()
    )
    assert "thresholdRange <Object> -required-" in metrics
    assert "request-success-rate" in metrics
