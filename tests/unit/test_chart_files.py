"""The Helm chart's static files agree with the code they package: the CRDs are the generated
ones, the versions match the Python distribution, the default images match the operator's."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import yaml

from recsys_operator import crdgen, images

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "recsys-operator"


def test_chart_crds_are_the_generated_crds() -> None:
    """crdgen writes both copies; this names the file when the chart's copy was edited by hand
    or not regenerated."""
    generated = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    in_chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert in_chart == generated, "charts/recsys-operator/crds/ must hold exactly crds/*.yaml"
    for name in generated:
        ours, theirs = (REPO / "crds" / name).read_text(), (CHART / "crds" / name).read_text()
        assert ours == theirs, (
            f"charts/recsys-operator/crds/{name} differs from crds/{name}: "
            "run `python -m recsys_operator.crdgen`"
        )
    written = {p.name for p in crdgen.expected_files(REPO) if p.parent == CHART / "crds"}
    assert written == set(generated), "crdgen must write the chart's copies too"


def test_chart_versions_follow_the_distribution() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "recsys-operator"
    assert chart["appVersion"] == project["version"], "Chart.yaml appVersion != pyproject version"


def test_default_workload_images_match_the_operator() -> None:
    """Installing the chart with default values must give the same workload images as running
    the operator without the environment variables: the chart leaves them empty and derives
    them from image.repository's directory, which is the operator's REGISTRY (the rendered
    references are checked against ``images.reference`` in tests/integration/test_chart.py)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["workloadImages"] == {key: "" for key in images.IMAGES}
    assert values["image"]["repository"] == f"{images.REGISTRY}/recsys-operator"
    assert values["image"]["tag"] == ""
    assert images.default_images({}) == {
        "workloads": images.reference("workloads"),
        "trainer": images.reference("trainer"),
        "gateway": images.reference("workloads"),
        "triton": images.reference("triton"),
    }


def test_values_schema_names_every_top_level_value() -> None:
    """The schema refuses unknown keys (a typo such as ``watchNamespace`` fails at install), so
    every key of values.yaml must be described there."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert schema["additionalProperties"] is False
    assert set(values) <= set(schema["properties"]), set(values) - set(schema["properties"])
    for key, value in values.items():
        sub = schema["properties"][key]
        if isinstance(value, dict) and sub.get("additionalProperties") is False:
            assert set(value) <= set(sub["properties"]), (key, set(value) - set(sub["properties"]))
