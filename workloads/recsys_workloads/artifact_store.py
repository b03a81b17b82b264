"""Reading and writing artifacts through fsspec, with failures sorted into retryable or not.

Every workload addresses its inputs and outputs by URI (``file://``, ``s3://``, a bare local
path, ``memory://`` in tests), so the same code runs against a PVC and an object store. What a
Job's ``podFailurePolicy`` needs is the *kind* of failure: a missing input or a denied bucket
will not fix itself (bad input), while a refused connection or a timeout may (transient). The
store backends raise very different exception types for these (``OSError`` subclasses from the
local filesystem, botocore errors from s3fs, aiohttp errors from HTTP), so this module is the
one place that sorts them.

A versioned artifact directory is complete when its ``manifest.json`` exists: writers put every
other file first and the manifest last, and readers verify each file's sha256 against it. That
makes "publish" atomic on stores without rename (S3) and makes a half-written directory from a
killed pod harmless.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from recsys_contract.formats import join_uri, pvc_claim, pvc_local_path
from recsys_workloads.runtime import BadInputError, TransientError

MANIFEST_NAME = "manifest.json"
#: Bumped when the manifest's shape changes; readers refuse versions they do not know.
MANIFEST_FORMAT = 1


@contextlib.contextmanager
def store_errors(uri: str, what: str) -> Iterator[None]:
    """Translate a store failure into BadInputError or TransientError naming ``uri``.

    Anything that is not clearly the caller's fault (a missing file, a denied permission, an
    unknown protocol) counts as transient: an unreachable endpoint surfaces as ``OSError``,
    ``botocore.exceptions.EndpointConnectionError``, ``aiohttp.ClientError`` or a timeout,
    and all of them deserve a retry.
    """
    try:
        yield
    except (BadInputError, TransientError):
        raise
    except FileNotFoundError as exc:
        raise BadInputError(f"{what}: {uri} does not exist ({exc})") from exc
    except (PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        raise BadInputError(f"{what}: {uri} is not usable ({type(exc).__name__}: {exc})") from exc
    except ImportError as exc:
        raise BadInputError(
            f"{what}: the filesystem for {uri} is not installed ({exc}); install its fsspec "
            "backend (s3fs for s3://, gcsfs for gs://)"
        ) from exc
    except ValueError as exc:
        if "protocol" in str(exc).lower():
            raise BadInputError(f"{what}: {uri} has an unknown protocol ({exc})") from exc
        raise
    except Exception as exc:  # every other failure talking to the store deserves a retry
        raise TransientError(
            f"{what}: artifact store unreachable at {uri} ({type(exc).__name__}: {exc})"
        ) from exc


@dataclass(frozen=True)
class Store:
    """One filesystem plus the options (credentials, endpoint) it was opened with."""

    storage_options: Mapping[str, Any]

    def fs_and_path(self, uri: str) -> tuple[Any, str]:
        with store_errors(uri, "open"):
            fs, path = fsspec.core.url_to_fs(uri, **dict(self.storage_options))
        return fs, path

    def read_bytes(self, uri: str, what: str = "read") -> bytes:
        fs, path = self.fs_and_path(uri)
        with store_errors(uri, what):
            data: bytes = fs.cat_file(path)
        return data

    def write_bytes(self, uri: str, data: bytes, what: str = "write") -> None:
        """Write a whole file; readers see the old content or the new, never a torn one.

        Object stores give that for free (a PUT appears whole); on a local filesystem or a
        PVC the bytes go to a temporary name first and are renamed into place. An object store
        has no folders to make: s3fs's ``makedirs`` would *create a missing bucket*, turning a
        misspelt bucket into a new one instead of the bad-input error it is.
        """
        fs, path = self.fs_and_path(uri)
        with store_errors(uri, what):
            if isinstance(fs, LocalFileSystem):  # file:// and pvc://
                parent = path.rsplit("/", 1)[0] if "/" in path else ""
                if parent:
                    fs.makedirs(parent, exist_ok=True)
                # hidden (dataset readers skip dot files) and unique (pods of two Jobs may
                # share a pid, 1 in most containers, and write the same name on one PVC)
                head, _, base = path.rpartition("/")
                tmp = (
                    f"{head}/.{base}.tmp-{uuid.uuid4().hex}"
                    if head
                    else f".{base}.tmp-{uuid.uuid4().hex}"
                )
                with open(tmp, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, path)
            else:
                fs.pipe_file(path, data)

    def exists(self, uri: str, what: str = "look up") -> bool:
        fs, path = self.fs_and_path(uri)
        with store_errors(uri, what):
            return bool(fs.exists(path))

    def read_json(self, uri: str, what: str = "read") -> Any:
        raw = self.read_bytes(uri, what)
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"{what}: {uri} is not valid JSON ({exc})") from exc

    def write_json(self, uri: str, value: Any, what: str = "write") -> None:
        self.write_bytes(uri, canonical_json(value), what)

    def remove(self, uri: str, what: str = "remove") -> None:
        fs, path = self.fs_and_path(uri)
        with store_errors(uri, what):
            if fs.exists(path):
                fs.rm(path, recursive=True)


def canonical_json(value: Any) -> bytes:
    """Stable bytes for a JSON value, so digests over it are reproducible."""
    return json.dumps(value, indent=2, sort_keys=True, default=str).encode() + b"\n"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_of_files(files: Mapping[str, Mapping[str, Any]]) -> str:
    """The artifact digest: sha256 over the sorted (path, sha256) pairs, independent of order."""
    lines = "".join(f"{path}\t{files[path]['sha256']}\n" for path in sorted(files))
    return "sha256:" + sha256_hex(lines.encode())


class ArtifactWriter:
    """Collects the files of one versioned artifact directory and publishes its manifest last."""

    def __init__(self, store: Store, uri: str, kind: str) -> None:
        self.store = store
        self.uri = uri.rstrip("/")
        self.kind = kind
        self.files: dict[str, dict[str, Any]] = {}

    def put(self, relpath: str, data: bytes) -> None:
        self.store.write_bytes(join_uri(self.uri, relpath), data, what=f"write {self.kind}")
        self.files[relpath] = {"sha256": sha256_hex(data), "bytes": len(data)}

    def put_json(self, relpath: str, value: Any) -> None:
        self.put(relpath, canonical_json(value))

    def put_npy(self, relpath: str, array: Any) -> None:
        import numpy as np

        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        self.put(relpath, buf.getvalue())

    def publish(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        """Write the manifest; from here on the directory counts as published and immutable."""
        manifest = {
            "format": MANIFEST_FORMAT,
            "kind": self.kind,
            "files": dict(sorted(self.files.items())),
            "digest": digest_of_files(self.files),
            **extra,
        }
        self.store.write_json(
            join_uri(self.uri, MANIFEST_NAME), manifest, what=f"publish {self.kind}"
        )
        return manifest


class ArtifactReader:
    """Reads files of a published artifact, checking each against the manifest's sha256."""

    def __init__(self, store: Store, uri: str, kind: str) -> None:
        self.store = store
        self.uri = uri.rstrip("/")
        self.kind = kind
        manifest_uri = join_uri(self.uri, MANIFEST_NAME)
        if not store.exists(manifest_uri, what=f"read {kind}"):
            raise BadInputError(
                f"{kind} at {self.uri} is not published (no {MANIFEST_NAME}); point the URI at a "
                "completed artifact directory"
            )
        manifest = store.read_json(manifest_uri, what=f"read {kind} manifest")
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise BadInputError(
                f"{kind} manifest at {manifest_uri} has format "
                f"{manifest.get('format') if isinstance(manifest, dict) else '?'}, expected "
                f"{MANIFEST_FORMAT}"
            )
        if manifest.get("kind") != kind:
            raise BadInputError(
                f"{manifest_uri} describes a {manifest.get('kind')!r} artifact, expected {kind!r}"
            )
        files = manifest.get("files", {})
        if manifest.get("digest") != digest_of_files(files):
            raise BadInputError(f"{manifest_uri}: digest does not match its file list (tampered?)")
        self.manifest: dict[str, Any] = manifest

    def read(self, relpath: str) -> bytes:
        entry = self.manifest["files"].get(relpath)
        if entry is None:
            raise BadInputError(f"{self.kind} at {self.uri} has no file {relpath!r}")
        data = self.store.read_bytes(join_uri(self.uri, relpath), what=f"read {self.kind}")
        if sha256_hex(data) != entry["sha256"]:
            raise BadInputError(
                f"{self.kind} file {join_uri(self.uri, relpath)} does not match the sha256 in its "
                "manifest (corrupt or modified after publishing); rebuild the artifact"
            )
        return data

    def read_json(self, relpath: str) -> Any:
        return json.loads(self.read(relpath))

    def read_npy(self, relpath: str) -> Any:
        import numpy as np

        return np.load(io.BytesIO(self.read(relpath)), allow_pickle=False)

    def has(self, relpath: str) -> bool:
        return relpath in self.manifest["files"]


def local_path(uri: str) -> str | None:
    """The local filesystem path behind ``uri`` when there is one (used for faster I/O)."""
    if uri.startswith("file://"):
        return uri[len("file://") :]
    if pvc_claim(uri) is not None:
        from recsys_workloads.pvc import pvc_root

        return pvc_local_path(uri, pvc_root())
    if "://" not in uri:
        return os.path.abspath(uri)
    return None
