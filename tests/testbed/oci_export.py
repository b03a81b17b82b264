"""Stream podman images into containerd, sending only the layers containerd does not have.

``podman save`` writes every layer of an image, GBs of torch for the trainer and Triton
images, even when only the top layers (the project's own code) changed since the last
import, and containerd then reads every one of them again. Here the stream is an OCI image
layout built from podman's own storage: each image's stored manifest and config, and only
the layer blobs containerd's content store lacks. A layer is reassembled byte for byte from
its tar-split record (what containers-storage keeps so that a layer's tar can be reproduced
exactly, for pushes) and its files in the overlay ``diff`` directory.

Two checks guard it: each reassembled layer's digest is compared with the diffID the image
config names before the stream ends, and containerd verifies every blob it is sent. Anything
in the storage that is not as expected raises :class:`NotExportable`, and the caller falls
back to ``podman save`` (slow but general).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

#: tar-split entry types (github.com/vbatts/tar-split/tar/storage): a file's content, read
#: from the layer's files, and a raw segment of the tar stream (headers, padding).
_FILE_ENTRY = 1
_SEGMENT_ENTRY = 2


class NotExportable(Exception):
    """podman's storage does not hold what this export reads; use ``podman save``."""


@dataclass(frozen=True)
class Layer:
    diff_id: str
    size: int
    diff_dir: Path
    tar_split: Path


@dataclass(frozen=True)
class StoredImage:
    ref: str
    manifest: bytes
    config: bytes
    layers: tuple[Layer, ...]

    @property
    def manifest_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()


def _big_data(image_dir: Path, key: str) -> bytes:
    # containers-storage names a key's file by the key when it is only [.0-9a-z], else by
    # "=" and its base64
    plain = all(c == "." or c.isdigit() or "a" <= c <= "z" for c in key)
    path = image_dir / (key if plain else "=" + base64.b64encode(key.encode()).decode())
    try:
        return path.read_bytes()
    except OSError as exc:
        raise NotExportable(f"{path} cannot be read: {exc}") from exc


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise NotExportable(f"{path} cannot be read: {exc}") from exc


def stored_image(graph_root: Path, ref: str, image_id: str) -> StoredImage:
    """The image ``image_id`` (tagged ``ref``) as podman's overlay storage holds it."""
    images = {i["id"]: i for i in _load_json(graph_root / "overlay-images" / "images.json")}
    layers = {
        entry["id"]: entry for entry in _load_json(graph_root / "overlay-layers" / "layers.json")
    }
    if image_id not in images:
        raise NotExportable(f"image {image_id} is not in {graph_root}")
    image_dir = graph_root / "overlay-images" / image_id
    manifest = _big_data(image_dir, "manifest")
    config = _big_data(image_dir, f"sha256:{image_id}")
    if hashlib.sha256(config).hexdigest() != image_id:
        raise NotExportable(f"the stored config of {ref} does not match its ID")
    chain: list[dict[str, Any]] = []
    layer_id = images[image_id].get("layer")
    while layer_id:
        if layer_id not in layers:
            raise NotExportable(f"layer {layer_id} of {ref} is not in the storage")
        chain.append(layers[layer_id])
        layer_id = layers[layer_id].get("parent")
    chain.reverse()
    diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    described = [d["digest"] for d in json.loads(manifest)["layers"]]
    found = [entry.get("diff-digest") for entry in chain]
    if not diff_ids == described == found:
        raise NotExportable(f"{ref}: the manifest, config and storage name different layers")
    return StoredImage(
        ref=ref,
        manifest=manifest,
        config=config,
        layers=tuple(
            Layer(
                diff_id=entry["diff-digest"],
                size=int(entry["diff-size"]),
                diff_dir=graph_root / "overlay" / entry["id"] / "diff",
                tar_split=graph_root / "overlay-layers" / f"{entry['id']}.tar-split.gz",
            )
            for entry in chain
        ),
    )


def layer_chunks(layer: Layer) -> Iterator[bytes]:
    """The layer's tar, byte for byte as it was committed."""
    if not layer.tar_split.exists():
        raise NotExportable(f"{layer.tar_split} is missing")
    with gzip.open(layer.tar_split, "rt") as records:
        for line in records:
            entry = json.loads(line)
            if entry["type"] == _SEGMENT_ENTRY:
                yield base64.b64decode(entry["payload"])
            elif entry["type"] == _FILE_ENTRY and entry.get("size", 0):
                raw = entry.get("name_raw")
                name = (
                    base64.b64decode(raw).decode("utf-8", "surrogateescape")
                    if raw
                    else entry["name"]
                )
                left = int(entry["size"])
                with (layer.diff_dir / name).open("rb") as content:
                    while left:
                        chunk = content.read(min(left, 1 << 20))
                        if not chunk:
                            raise NotExportable(
                                f"{name} in {layer.diff_dir} is shorter than its record"
                            )
                        left -= len(chunk)
                        yield chunk


class _Checked(io.RawIOBase):
    """The layer's tar as a readable file that hashes what is read, for ``tarfile.addfile``."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = b""
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self.sha256.update(self._pending[:n])
        self._pending = self._pending[n:]
        return n


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_layout(out: IO[bytes], images: Sequence[StoredImage], present: set[str]) -> list[str]:
    """Write an OCI image layout archive of ``images`` to ``out``, leaving out the layers
    whose digests are in ``present`` (containerd's content store); return the layers sent."""
    sent: list[str] = []
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        for image in images:
            for layer in image.layers:
                if layer.diff_id in present or layer.diff_id in sent:
                    continue
                info = tarfile.TarInfo("blobs/" + layer.diff_id.replace(":", "/"))
                info.size = layer.size
                checked = _Checked(layer_chunks(layer))
                tar.addfile(info, io.BufferedReader(checked, 1 << 20))
                if "sha256:" + checked.sha256.hexdigest() != layer.diff_id:
                    raise NotExportable(
                        f"{image.ref}: layer {layer.diff_id} did not reassemble exactly"
                    )
                sent.append(layer.diff_id)
            config_digest = "sha256:" + hashlib.sha256(image.config).hexdigest()
            _add(tar, "blobs/" + config_digest.replace(":", "/"), image.config)
            _add(tar, "blobs/" + image.manifest_digest.replace(":", "/"), image.manifest)
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": image.manifest_digest,
                    "size": len(image.manifest),
                    "annotations": {
                        "io.containerd.image.name": image.ref,
                        "org.opencontainers.image.ref.name": image.ref.rsplit(":", 1)[-1],
                    },
                }
                for image in images
            ],
        }
        _add(tar, "index.json", json.dumps(index).encode())
    return sent
