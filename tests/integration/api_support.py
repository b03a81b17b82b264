"""Shared by the API's integration tests: install the generated CRDs once per cluster, and talk
to the apiserver about recsys objects (server-side dry runs, error messages)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightkube import ApiError, Client
from lightkube.generic_resource import create_namespaced_resource

from fixtures.operator import install_crds as install_crds  # shared with the operator tests
from recsys_operator.api import KINDS

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
EXAMPLES = REPO / "examples"

#: lightkube resource classes for the three kinds, by kind name.
RESOURCES = {
    k.kind: create_namespaced_resource(k.group, k.version, k.kind, k.plural) for k in KINDS
}


def manifest(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "recsys.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }


def dry_run_create(client: Client, obj: dict[str, Any], namespace: str) -> dict[str, Any]:
    """What the apiserver would store for ``obj`` (defaults applied), or ApiError."""
    resource = RESOURCES[obj["kind"]].from_dict(obj)
    created = client.create(resource, namespace=namespace, dry_run=True)
    return created.to_dict()  # type: ignore[no-any-return]


def api_error_message(exc: ApiError) -> str:
    return f"{exc.status.code}: {exc.status.message}"


def as_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)
