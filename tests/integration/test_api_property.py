"""Property: the models and the real apiserver are one validator.

Specs are generated from the models' own JSON schema (pydantic's, not the generated CRD, so a
constraint the generator dropped or invented shows up as disagreement). Every generated spec
goes to both: the models accept it exactly when the apiserver does, and where both accept it
the apiserver's defaulting produces exactly the models' defaults.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest
from api_support import dry_run_create, install_crds, manifest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lightkube import ApiError
from pydantic import BaseModel, ValidationError

from recsys_operator.api import KINDS, KindInfo
from recsys_operator.api.base import ApiModel

pytestmark = pytest.mark.testbed

INT_BOUND = 2**31
TEXT = st.characters(codec="utf-8", categories=["L", "N", "P", "Zs"])
MAP_KEY = st.from_regex(r"[a-z]([a-z0-9.-]{0,10}[a-z0-9])?(/[a-z0-9]{1,8})?", fullmatch=True)


def _resolve(node: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    if "$ref" in node:
        merged = dict(defs[node["$ref"].rsplit("/", 1)[-1]])
        merged.update({k: v for k, v in node.items() if k != "$ref"})
        return merged
    return node


def _strings(node: Mapping[str, Any]) -> st.SearchStrategy[str]:
    low, high = node.get("minLength", 0), node.get("maxLength", 64)
    if "pattern" in node:
        return st.from_regex(node["pattern"], fullmatch=True).filter(
            lambda s: low <= len(s) <= high
        )
    return st.text(TEXT, min_size=low, max_size=min(high, low + 16))


def _numbers(node: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    if node.get("type") == "integer":
        low = node.get("minimum", node.get("exclusiveMinimum", -INT_BOUND - 1) + 1)
        high = node.get("maximum", node.get("exclusiveMaximum", INT_BOUND + 1) - 1)
        return st.integers(min_value=low, max_value=high)
    return st.floats(
        min_value=node.get("minimum", node.get("exclusiveMinimum", -1e6)),
        max_value=node.get("maximum", node.get("exclusiveMaximum", 1e6)),
        exclude_min="exclusiveMinimum" in node,
        exclude_max="exclusiveMaximum" in node,
        allow_nan=False,
        allow_infinity=False,
    )


def strategy(node: Mapping[str, Any], defs: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    """Values the schema ``node`` describes, field by field (cross-field rules not consulted)."""
    node = _resolve(node, defs)
    if node.get("x-kubernetes-int-or-string"):
        # Quantities with exponents of five digits and more are left out: the apiserver's CEL
        # quantity() spends longer than the client waits on numbers of 10,000+ digits, so such
        # an example ends in a timeout, not in a verdict to compare.
        quantities = _strings({**node, "type": "string"}).filter(
            lambda s: not re.search(r"[eE][-+]?[0-9.]{5,}", s)
        )
        return st.one_of(st.integers(0, 10**12), quantities)
    if "anyOf" in node:  # Optional[X]: absence is handled by the enclosing object
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        return st.one_of([strategy(b, defs) for b in branches])
    if "const" in node:
        return st.just(node["const"])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node.get("type")
    if kind == "boolean":
        return st.booleans()
    if kind in ("integer", "number"):
        return _numbers(node)
    if kind == "string":
        return _strings(node)
    if kind == "array":
        low = node.get("minItems", 0)
        high = min(node.get("maxItems", 4), low + 3)
        keys = node.get("x-kubernetes-list-map-keys")
        unique_by = (lambda item: tuple(item[k] for k in keys)) if keys else None
        if node.get("x-kubernetes-list-type") == "set":
            unique_by = lambda item: item  # noqa: E731
        return st.lists(
            strategy(node["items"], defs), min_size=low, max_size=high, unique_by=unique_by
        )
    if kind == "object" and "properties" in node:
        required = set(node.get("required", ()))
        props = node["properties"]
        return st.fixed_dictionaries(
            {k: strategy(v, defs) for k, v in props.items() if k in required},
            optional={k: strategy(v, defs) for k, v in props.items() if k not in required},
        )
    if kind == "object":
        values = strategy(node.get("additionalProperties", {"type": "string"}), defs)
        return st.dictionaries(MAP_KEY, values, max_size=min(node.get("maxProperties", 3), 3))
    raise AssertionError(f"no strategy for {node}")


def specs_of(model: type[BaseModel]) -> st.SearchStrategy[dict[str, Any]]:
    schema = model.model_json_schema(by_alias=True)
    return strategy(schema, schema.get("$defs", {}))


@pytest.fixture(scope="module")
def property_namespace(testbed: Any) -> Any:
    install_crds(testbed)
    name = f"api-property-{uuid.uuid4().hex[:6]}"
    testbed.kubectl("create", "namespace", name, check=False)
    yield name
    testbed.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.mark.parametrize("kind", KINDS, ids=[k.kind for k in KINDS])
def test_models_and_apiserver_agree(kind: KindInfo, testbed: Any, property_namespace: str) -> None:
    client = testbed.client()
    outcomes: Counter[str] = Counter()

    @settings(
        max_examples=35,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(spec=specs_of(kind.spec_model))
    def agree(spec: dict[str, Any]) -> None:
        try:
            model: ApiModel | None = kind.spec_model.model_validate(spec)
            refused_by_model = ""
        except ValidationError as exc:
            model, refused_by_model = None, str(exc)
        try:
            stored = dry_run_create(
                client, manifest(kind.kind, "generated", spec), property_namespace
            )
            refused_by_api = ""
        except ApiError as exc:
            stored, refused_by_api = {}, f"{exc.status.code}: {exc.status.message}"
        shown = json.dumps(spec, sort_keys=True)
        assert bool(refused_by_model) == bool(refused_by_api), (
            f"the models {'refused' if refused_by_model else 'accepted'} and the apiserver "
            f"{'refused' if refused_by_api else 'accepted'} {shown}\n"
            f"models: {refused_by_model or 'ok'}\napiserver: {refused_by_api or 'ok'}"
        )
        if model is None:
            outcomes["refused"] += 1
            return
        outcomes["accepted"] += 1
        assert stored["spec"] == model.to_k8s(), f"defaults differ for {shown}"

    agree()
    print(f"{kind.kind}: {dict(outcomes)}")  # shown with -s / -rP: how balanced the run was
    # Both sides of the contract were exercised, not just one.
    assert outcomes["accepted"] >= 3, outcomes
    assert sum(outcomes.values()) >= 20, outcomes
