"""The CRD generator: checked-in files are fresh, and the schemas are structural and complete."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from recsys_operator import crdgen
from recsys_operator.api import KINDS
from recsys_operator.api.base import ApiModel

REPO = Path(__file__).resolve().parents[2]
CRDS = crdgen.generate_crds()

#: Keys a structural schema may carry (apiextensions.k8s.io/v1 JSONSchemaProps we use).
ALLOWED_KEYS = {
    "description", "type", "format", "default", "enum", "properties", "required", "items",
    "additionalProperties", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "minLength", "maxLength", "pattern", "minItems", "maxItems", "minProperties",
    "maxProperties", "x-kubernetes-validations", "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys", "x-kubernetes-int-or-string", "anyOf",
}  # fmt: skip


def _nodes(schema: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield path, schema
    for name, prop in schema.get("properties", {}).items():
        yield from _nodes(prop, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _nodes(schema[key], f"{path}[]")


def _root(kind_plural: str) -> Mapping[str, Any]:
    crd = CRDS[f"recsys.dev_{kind_plural}.yaml"]
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def test_checked_in_files_equal_a_fresh_generation() -> None:
    stale = crdgen.stale_files(REPO)
    assert stale == [], f"regenerate with `python -m recsys_operator.crdgen`: {stale}"


def test_check_cli_reports_stale_and_fresh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 1
    assert "stale:" in capsys.readouterr().err
    assert crdgen.main(["--root", str(tmp_path)]) == 0
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 0
    edited = tmp_path / "crds" / "recsys.dev_recommenders.yaml"
    edited.write_text(edited.read_text().replace("maxItems: 20", "maxItems: 21"))
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 1


def test_files_parse_back_to_the_generated_crds() -> None:
    for name, crd in CRDS.items():
        assert yaml.safe_load((REPO / "crds" / name).read_text()) == crd


@pytest.mark.parametrize("plural", [k.plural for k in KINDS])
def test_schema_is_structural(plural: str) -> None:
    for path, node in _nodes(_root(plural)):
        unknown = set(node) - ALLOWED_KEYS
        assert not unknown, f"{path}: {unknown}"
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path}: no type"
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), f"{path}: anyOf outside int-or-string"
            assert all(set(b) == {"type"} for b in node["anyOf"]), path
        assert not ("properties" in node and "additionalProperties" in node), path
        assert "nullable" not in node, path


@pytest.mark.parametrize("plural", [k.plural for k in KINDS])
def test_every_field_has_a_description(plural: str) -> None:
    for path, node in _nodes(_root(plural)):
        if path and path != ".metadata" and not path.endswith("[]"):
            assert len(node.get("description", "")) >= 10, f"{path} lacks a description"


@pytest.mark.parametrize("plural", [k.plural for k in KINDS])
def test_collections_and_strings_are_bounded(plural: str) -> None:
    """The apiserver's CEL cost estimator needs bounds to accept the rules."""
    for path, node in _nodes(_root(plural)["properties"]["spec"], "spec"):
        kind = node.get("type")
        if kind == "array":
            assert "maxItems" in node, f"{path}: array without maxItems"
        elif kind == "string" and "enum" not in node:
            assert "maxLength" in node, f"{path}: string without maxLength"
        elif kind == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, f"{path}: map without maxProperties"


@pytest.mark.parametrize("plural", [k.plural for k in KINDS])
def test_list_map_keys_are_required(plural: str) -> None:
    """The apiserver refuses a list-map whose keys are neither required nor defaulted."""
    for path, node in _nodes(_root(plural)):
        if node.get("x-kubernetes-list-type") == "map":
            keys = node["x-kubernetes-list-map-keys"]
            assert set(keys) <= set(node["items"].get("required", ())), path


def test_names_columns_and_subresources() -> None:
    for kind in KINDS:
        crd = CRDS[f"recsys.dev_{kind.plural}.yaml"]
        names = crd["spec"]["names"]
        assert names["categories"] == ["recsys"]
        assert names["shortNames"] == list(kind.short_names)
        version = crd["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
        assert {"observedGeneration", "conditions"} <= set(status)
        assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    columns = {k.kind: [c.name for c in k.printer_columns if not c.priority] for k in KINDS}
    assert columns == {
        "FeatureView": ["Ready", "Stale", "Last materialized", "Rows", "Age"],
        "Recommender": ["Ready", "Stable", "Canary", "Weight", "Age"],
        "ModelVersion": ["Phase", "Recall", "Age"],
    }


def test_printer_columns_point_at_real_fields() -> None:
    for kind in KINDS:
        root = _root(kind.plural)
        for column in kind.printer_columns:
            if column.json_path.startswith(".metadata"):
                continue
            node: Mapping[str, Any] = root
            for part in column.json_path.split("[")[0].strip(".").split("."):
                node = node["properties"][part]
            assert node, column


def test_modelversion_spec_is_immutable_and_rules_carry_messages() -> None:
    spec = _root("modelversions")["properties"]["spec"]
    assert spec["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"
    for kind in KINDS:
        for path, node in _nodes(_root(kind.plural)):
            for rule in node.get("x-kubernetes-validations", ()):
                assert len(rule["message"]) > 15, (path, rule)


def test_defaults_are_dumped_by_alias_without_nulls() -> None:
    rollout = _root("recommenders")["properties"]["spec"]["properties"]["serving"]["properties"][
        "rollout"
    ]
    assert rollout["default"] == {}
    assert rollout["properties"]["steps"]["default"][:2] == [
        {"setWeight": 10},
        {"pause": {"duration": "10m"}},
    ]
    for _path, node in _nodes(_root("recommenders")):
        assert node.get("default", 0) is not None


def test_exclusive_bounds_use_openapi_v3_form() -> None:
    lr = _root("recommenders")["properties"]["spec"]["properties"]["training"]["properties"][
        "hyperParameters"
    ]["properties"]["learningRate"]
    assert lr["minimum"] == 0
    assert lr["exclusiveMinimum"] is True


def test_unions_are_refused() -> None:
    class Bad(ApiModel):
        value: int | str
        """Either."""

    with pytest.raises(crdgen.SchemaError, match="unions are not structural"):
        crdgen.structural_schema(Bad)


def test_missing_description_is_refused() -> None:
    class Undocumented(BaseModel):
        value: int

    with pytest.raises(crdgen.SchemaError, match="no description"):
        crdgen.structural_schema(Undocumented)


def test_docs_cover_every_field_and_rule() -> None:
    docs = (REPO / "docs" / "api.md").read_text()
    for kind in KINDS:
        for path, _node in _nodes(_root(kind.plural)["properties"]["spec"], "spec"):
            if not path.endswith("[]"):
                assert f"`{path}`" in docs, f"{path} is missing from docs/api.md"
    assert "setWeight must be strictly increasing" in docs
