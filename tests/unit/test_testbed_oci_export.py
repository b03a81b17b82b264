"""The real node's image export reads podman's storage and refuses, rather than guesses, when
the storage is not what it expects: the caller then sends whole images with ``podman save``."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from testbed.oci_export import Layer, NotExportable, layer_chunks, stored_image

LAYER = "sha256:" + "a" * 64


def storage(root: Path, *, layer_digest: str = LAYER, manifest_digest: str = LAYER) -> str:
    """A one-layer image as containers-storage lays it out; returns its ID."""
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [LAYER]}}).encode()
    image_id = hashlib.sha256(config).hexdigest()
    manifest = json.dumps({"layers": [{"digest": manifest_digest, "size": 1}]}).encode()
    (root / "overlay-images" / image_id).mkdir(parents=True)
    (root / "overlay-layers").mkdir()
    (root / "overlay-images" / "images.json").write_text(
        json.dumps([{"id": image_id, "layer": "l1"}])
    )
    (root / "overlay-layers" / "layers.json").write_text(
        json.dumps([{"id": "l1", "diff-digest": layer_digest, "diff-size": 1}])
    )
    (root / "overlay-images" / image_id / "manifest").write_bytes(manifest)
    key = "=" + base64.b64encode(f"sha256:{image_id}".encode()).decode()
    (root / "overlay-images" / image_id / key).write_bytes(config)
    return image_id


def test_a_well_formed_storage_gives_the_image_its_layers(tmp_path: Path) -> None:
    image_id = storage(tmp_path)
    image = stored_image(tmp_path, "r:1", image_id)
    assert [(layer.diff_id, layer.size) for layer in image.layers] == [(LAYER, 1)]
    assert image.layers[0].diff_dir == tmp_path / "overlay" / "l1" / "diff"


def _unknown_image(root: Path) -> str:
    storage(root)
    return "b" * 64


def _no_config(root: Path) -> str:
    image_id = storage(root)
    for path in (root / "overlay-images" / image_id).glob("=*"):
        path.unlink()
    return image_id


def _config_changed(root: Path) -> str:
    image_id = storage(root)
    for path in (root / "overlay-images" / image_id).glob("=*"):
        path.write_bytes(path.read_bytes() + b" ")
    return image_id


def _layer_missing(root: Path) -> str:
    image_id = storage(root)
    (root / "overlay-layers" / "layers.json").write_text("[]")
    return image_id


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        pytest.param(_unknown_image, "is not in", id="image not in the storage"),
        pytest.param(_no_config, "cannot be read", id="config file missing"),
        pytest.param(_config_changed, "does not match its ID", id="config not its ID's"),
        pytest.param(_layer_missing, "is not in the storage", id="layer record missing"),
        pytest.param(
            lambda root: storage(root, layer_digest="sha256:" + "c" * 64),
            "name different layers",
            id="storage's layer is another",
        ),
        pytest.param(
            lambda root: storage(root, manifest_digest="sha256:" + "c" * 64),
            "name different layers",
            id="manifest's layer is another",
        ),
    ],
)
def test_a_storage_it_cannot_read_exactly_is_refused(
    tmp_path: Path, break_it: Callable[[Path], str], message: str
) -> None:
    image_id = break_it(tmp_path)
    with pytest.raises(NotExportable, match=message):
        stored_image(tmp_path, "r:1", image_id)


def test_a_layer_file_shorter_than_its_record_is_refused(tmp_path: Path) -> None:
    (tmp_path / "diff").mkdir()
    (tmp_path / "diff" / "f").write_bytes(b"abc")
    record = tmp_path / "l.tar-split.gz"
    with gzip.open(record, "wt") as out:
        out.write(json.dumps({"type": 2, "payload": base64.b64encode(b"HDR").decode()}) + "\n")
        out.write(json.dumps({"type": 1, "name": "f", "size": 5}) + "\n")
    layer = Layer(LAYER, 8, tmp_path / "diff", record)
    with pytest.raises(NotExportable, match="shorter than its record"):
        list(layer_chunks(layer))
    assert next(layer_chunks(layer)) == b"HDR"
