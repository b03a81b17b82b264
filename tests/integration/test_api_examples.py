"""The examples apply as they are to a real apiserver, read back as the models expect, and the
kubectl ergonomics (short names, category, printer columns, field selectors, status
subresource, immutability) work on them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from api_support import EXAMPLES, install_crds

from recsys_operator.api import KINDS, ModelVersionStatus, RecommenderStatus

pytestmark = pytest.mark.testbed

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))
MODELS = {k.kind: k for k in KINDS}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _contains(big: Any, small: Any, path: str = "spec") -> None:
    """Everything the user wrote is stored unchanged (defaults may add, never alter)."""
    if isinstance(small, dict):
        assert isinstance(big, dict), path
        for key, value in small.items():
            assert key in big, f"{path}.{key} was dropped"
            _contains(big[key], value, f"{path}.{key}")
    elif isinstance(small, list):
        assert isinstance(big, list), path
        assert len(big) == len(small), path
        for i, (b, s) in enumerate(zip(big, small, strict=True)):
            _contains(b, s, f"{path}[{i}]")
    else:
        assert big == small, f"{path}: {big!r} != {small!r}"


def test_there_are_the_promised_examples() -> None:
    names = {p.name for p in EXAMPLE_FILES}
    assert {
        "recommender.yaml",
        "distributed-gpu-training.yaml",
        "pinned-rollback.yaml",
        "imported-modelversion.yaml",
    } <= names
    kinds = [d["kind"] for d in _docs(EXAMPLES / "recommender.yaml")]
    assert kinds == ["FeatureView", "FeatureView", "Recommender"]


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[p.stem for p in EXAMPLE_FILES])
def test_example_applies_and_reads_back(path: Path, testbed: Any, namespace: str) -> None:
    install_crds(testbed)
    testbed.kubectl("apply", "--server-side", "-n", namespace, "-f", str(path))
    stored = json.loads(
        testbed.kubectl("get", "-n", namespace, "-f", str(path), "-o", "json").stdout
    )
    items = stored["items"] if stored.get("kind") == "List" else [stored]
    written = _docs(path)
    assert [(o["kind"], o["metadata"]["name"]) for o in items] == [
        (d["kind"], d["metadata"]["name"]) for d in written
    ]
    for doc, obj in zip(written, items, strict=True):
        _contains(obj["spec"], doc["spec"])
        info = MODELS[doc["kind"]]
        parsed = info.object_model.model_validate(obj)
        # The apiserver's defaults and the models' defaults are the same defaults.
        assert parsed.spec.to_k8s() == obj["spec"]
        assert info.spec_model.model_validate(doc["spec"]).to_k8s() == obj["spec"]


def test_kubectl_ergonomics(testbed: Any, namespace: str) -> None:
    install_crds(testbed)
    testbed.kubectl(
        "apply", "--server-side", "-n", namespace, "-f", str(EXAMPLES / "recommender.yaml")
    )
    testbed.kubectl(
        "apply",
        "--server-side",
        "-n",
        namespace,
        "-f",
        str(EXAMPLES / "imported-modelversion.yaml"),
    )
    listed = testbed.kubectl("get", "recsys", "-n", namespace, "-o", "name").stdout.split()
    assert sorted(listed) == [
        "featureview.recsys.dev/movie-items",
        "featureview.recsys.dev/movie-users",
        "modelversion.recsys.dev/movies-imported-2024-06",
        "recommender.recsys.dev/movies",
    ]
    for short in ("rec", "fv", "mv"):
        assert testbed.kubectl("get", short, "-n", namespace, "-o", "name").stdout.strip()

    rec_status = RecommenderStatus.model_validate(
        {
            "observedGeneration": 1,
            "activeIndex": "movies-v7",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "observedGeneration": 1,
                    "lastTransitionTime": "2024-06-01T10:00:00Z",
                    "reason": "Serving",
                    "message": "movies-v7 serves 75% of users, movies-v8 25%",
                }
            ],
            "rollout": {
                "phase": "Paused",
                "pauseReason": "PauseStep",
                "stable": "movies-v7",
                "canary": "movies-v8",
                "canaryWeight": 25,
                "currentStepIndex": 2,
                "failedChecks": 0,
                "analysis": [
                    {
                        "time": "2024-06-01T10:05:00Z",
                        "verdict": "Passed",
                        "metrics": [
                            {
                                "name": "click-through-rate",
                                "canary": 101.5,
                                "stable": 100.0,
                                "min": 95.0,
                                "verdict": "Passed",
                            }
                        ],
                    }
                ],
            },
        }
    ).to_k8s()
    patch = json.dumps({"status": rec_status})
    testbed.kubectl(
        "patch",
        "rec",
        "movies",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        patch,
    )
    stored = json.loads(
        testbed.kubectl("get", "rec", "movies", "-n", namespace, "-o", "json").stdout
    )
    assert stored["status"] == rec_status
    table = testbed.kubectl("get", "rec", "movies", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "STABLE", "CANARY", "WEIGHT", "AGE"]
    assert table[1].split()[:5] == ["movies", "True", "movies-v7", "movies-v8", "25"]

    mv_status = ModelVersionStatus.model_validate(
        {
            "phase": "Ready",
            "evaluation": {"k": 20, "recallAtK": 0.3125, "passed": True},
            "metrics": {"recall@20": 0.3125, "ndcg@20": 0.18},
            "artifactUri": "s3://recsys-models/notebooks/movies-2024-06",
            "digest": "sha256:" + "0" * 64,
        }
    ).to_k8s()
    testbed.kubectl(
        "patch", "mv", "movies-imported-2024-06", "-n", namespace, "--subresource=status",
        "--type=merge", "-p", json.dumps({"status": mv_status}),
    )  # fmt: skip
    table = testbed.kubectl("get", "mv", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "RECALL", "AGE"]
    assert table[1].split()[:3] == ["movies-imported-2024-06", "Ready", "0.3125"]

    selected = testbed.kubectl(
        "get", "mv", "-n", namespace, "--field-selector=spec.recommenderRef.name=movies",
        "-o", "name",
    ).stdout.split()  # fmt: skip
    assert selected == ["modelversion.recsys.dev/movies-imported-2024-06"]
    other = testbed.kubectl(
        "get", "mv", "-n", namespace, "--field-selector=spec.recommenderRef.name=books",
        "-o", "name",
    ).stdout.split()  # fmt: skip
    assert other == []


def test_modelversion_spec_is_immutable_but_status_is_not(testbed: Any, namespace: str) -> None:
    install_crds(testbed)
    path = EXAMPLES / "imported-modelversion.yaml"
    testbed.kubectl("apply", "--server-side", "-n", namespace, "-f", str(path))
    name = _docs(path)[0]["metadata"]["name"]
    changed = testbed.kubectl(
        "patch", "mv", name, "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"storageUri": "s3://elsewhere/model"}}), check=False,
    )  # fmt: skip
    assert changed.returncode != 0
    assert "spec: Invalid value" in changed.stderr
    assert "spec is immutable" in changed.stderr
    assert "create a new ModelVersion" in changed.stderr
    labels = testbed.kubectl(
        "label", "mv", name, "-n", namespace, "example.com/keep=yes", check=False
    )
    assert labels.returncode == 0, labels.stderr  # metadata stays editable
    status = testbed.kubectl(
        "patch", "mv", name, "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"phase": "Evaluating"}}),
    )  # fmt: skip
    assert status.returncode == 0
