"""The workloads' side of ``pvc://CLAIM/path``: the claim's folder under the mount root (the
operator's /mnt/pvc/CLAIM; RECSYS_PVC_ROOT here), through the artifact store and the parquet
readers and writers alike."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from recsys_workloads.artifact_store import ArtifactReader, ArtifactWriter, Store, local_path
from recsys_workloads.datasets.parquet_io import write_table
from recsys_workloads.runtime import BadInputError
from recsys_workloads.train.data import read_table


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RECSYS_PVC_ROOT", str(tmp_path))
    (tmp_path / "models").mkdir()
    return tmp_path


def test_an_artifact_on_a_claim_is_a_folder_on_its_mount(root: Path) -> None:
    store = Store({})
    writer = ArtifactWriter(store, "pvc://models/recsys/v1", "model")
    writer.put("weights.bin", b"abc")
    writer.publish({"version": "v1"})
    folder = root / "models" / "recsys" / "v1"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "weights.bin"]
    assert ArtifactReader(store, "pvc://models/recsys/v1", "model").read("weights.bin") == b"abc"
    assert local_path("pvc://models/recsys/v1") == str(folder)


def test_parquet_on_a_claim(root: Path) -> None:
    schema = pa.schema([("user_id", pa.int64())])
    rows = write_table("pvc://models/data/users.parquet", pa.table({"user_id": [1, 2]}), schema)
    assert rows == 2
    assert (root / "models" / "data" / "users.parquet").is_file()
    table = read_table(Store({}), "pvc://models/data/users.parquet", "users")
    assert table.column("user_id").to_pylist() == [1, 2]


def test_a_claim_that_is_not_mounted_is_bad_input_naming_the_uri(root: Path) -> None:
    with pytest.raises(BadInputError, match="pvc://absent/v1"):
        ArtifactReader(Store({}), "pvc://absent/v1", "model")
