"""Artifact directories through fsspec: manifest last, digests checked, failures classified."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recsys_contract.formats import join_uri
from recsys_workloads.artifact_store import ArtifactReader, ArtifactWriter, Store, digest_of_files
from recsys_workloads.runtime import BadInputError


def test_join_uri_keeps_single_slashes() -> None:
    assert join_uri("s3://b/root/", "/models/", "v1") == "s3://b/root/models/v1"
    assert join_uri("/tmp/x", "a.json") == "/tmp/x/a.json"


def test_digest_is_independent_of_file_order() -> None:
    a = {"x": {"sha256": "1"}, "y": {"sha256": "2"}}
    b = {"y": {"sha256": "2"}, "x": {"sha256": "1"}}
    assert digest_of_files(a) == digest_of_files(b)
    assert digest_of_files(a) != digest_of_files({"x": {"sha256": "1"}, "y": {"sha256": "3"}})


def test_published_directory_round_trips(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/art"
    w = ArtifactWriter(Store({}), uri, "model")
    w.put_json("a/b.json", {"k": 1})
    w.put_npy("e.npy", np.arange(5, dtype=np.int64))
    assert not (tmp_path / "art/manifest.json").exists()  # nothing is published before publish()
    manifest = w.publish({"version": "v1"})
    r = ArtifactReader(Store({}), uri, "model")
    assert r.manifest == manifest
    assert r.read_json("a/b.json") == {"k": 1}
    np.testing.assert_array_equal(r.read_npy("e.npy"), np.arange(5))
    assert not list(tmp_path.glob("art/**/*.tmp-*"))  # atomic local writes leave no debris


def test_reader_refuses_other_kinds_tampered_manifests_and_unknown_files(tmp_path: Path) -> None:
    uri = str(tmp_path / "art")
    w = ArtifactWriter(Store({}), uri, "index")
    w.put("f", b"data")
    w.publish({})
    with pytest.raises(BadInputError, match="describes a 'index' artifact, expected 'model'"):
        ArtifactReader(Store({}), uri, "model")
    with pytest.raises(BadInputError, match="has no file 'g'"):
        ArtifactReader(Store({}), uri, "index").read("g")
    manifest = json.loads((tmp_path / "art/manifest.json").read_text())
    manifest["files"]["f"]["sha256"] = "0" * 64
    (tmp_path / "art/manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BadInputError, match="digest does not match"):
        ArtifactReader(Store({}), uri, "index")


def test_unknown_protocol_and_missing_file_are_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="unknown protocol"):
        Store({}).read_bytes("nosuchfs://bucket/x")
    with pytest.raises(BadInputError, match="does not exist"):
        Store({}).read_bytes(str(tmp_path / "missing"))
