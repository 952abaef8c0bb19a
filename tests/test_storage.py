"""``raygenre.storage``: paths and URIs, atomic writes, the output commit protocol, leases (local and S3)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from raygenre import storage
from raygenre.storage import OutputExistsError


def test_uris_and_local_paths(tmp_path: Path) -> None:
    assert storage.is_uri("s3://b/k") and storage.is_uri("file:///x") and not storage.is_uri("/x/y")
    fs, inner = storage.resolve(tmp_path / "a" / ".." / "b")
    assert isinstance(fs, pafs.LocalFileSystem) and inner == str(tmp_path / "b")  # local paths become absolute
    assert storage.local_path(f"file://{tmp_path}") == tmp_path
    assert storage.join("s3://bucket/pre/", "/a/", "b") == "s3://bucket/pre/a/b"  # URIs keep their scheme
    assert storage.join(str(tmp_path), "a", "b") == str(tmp_path / "a" / "b")


@pytest.mark.parametrize("scheme", ["local", "file"])
def test_atomic_writes_read_back_and_remove(tmp_path: Path, scheme: str) -> None:
    root = str(tmp_path) if scheme == "local" else f"file://{tmp_path}"
    path = storage.join(root, "d", "x.json")
    assert not storage.exists(path)
    storage.write_json_atomic(path, {"a": 1})
    assert json.loads(storage.read_text(path)) == {"a": 1}
    storage.write_bytes_atomic(path, b"\x00\x01")
    assert storage.read_bytes(path) == b"\x00\x01"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["x.json"]  # no temporary file left
    storage.remove(storage.join(root, "d"))
    assert not storage.exists(path)
    storage.remove(path)  # absent: nothing to do


def test_committed_path_follows_the_manifest_and_refuses_escapes(tmp_path: Path) -> None:
    assert storage.committed_path("/o", {"attempt": "attempts/1"}, "segments") == "/o/attempts/1/segments"
    assert storage.committed_path("/o", {}, "segments") == "/o/segments"  # old layout
    for bad in ("/etc", "../x", "s3://b/k"):
        with pytest.raises(ValueError, match="outside the folder"):
            storage.committed_path("/o", {"attempt": bad}, "x")


def test_open_output_commits_last_and_cleans_up(tmp_path: Path) -> None:
    root = str(tmp_path / "model")
    with storage.open_output(root, "model", overwrite=False) as out:
        storage.write_text_atomic(storage.join(out.dir, "w.bin"), "weights")
        assert not (tmp_path / "model" / "model.json").exists()  # nothing reads as finished yet
        manifest = out.commit({"model": "ann"})
    assert manifest["attempt"] == out.attempt
    assert json.loads((tmp_path / "model" / "model.json").read_text())["attempt"] == out.attempt
    assert storage.read_text(storage.committed_path(root, manifest, "w.bin")) == "weights"
    assert not (tmp_path / "model" / storage.LEASE).exists()  # released
    with pytest.raises(OutputExistsError, match="already holds a raygenre model"):
        storage.check_output(root, "model", overwrite=False)
    with pytest.raises(OutputExistsError, match="not a feature table"):
        storage.check_output(root, "feature table", overwrite=True)
    with storage.open_output(root, "model", overwrite=True) as out2:
        out2.commit({"model": "cnn"})
    assert [p.name for p in (tmp_path / "model" / "attempts").iterdir()] == [out2.attempt.split("/")[1]]


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "new"
    with pytest.raises(RuntimeError, match="boom"), storage.open_output(str(root), "model", overwrite=False) as out:
        storage.write_text_atomic(storage.join(out.dir, "half"), "x")
        raise RuntimeError("boom")
    assert not root.exists()  # it did not exist before: no empty folder behind


def test_foreign_folders_and_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("not raygenre's")
    with pytest.raises(OutputExistsError, match="is a file"):
        storage.check_output(str(tmp_path / "mine.txt"), "model", overwrite=True)
    with pytest.raises(OutputExistsError, match="not a raygenre model"):
        storage.check_output(str(tmp_path), "model", overwrite=True)
    assert (tmp_path / "mine.txt").read_text() == "not raygenre's"


def test_a_live_lease_refuses_a_second_writer(tmp_path: Path) -> None:
    lease = storage.Lease.acquire(str(tmp_path / "o"), "tune")
    try:
        with pytest.raises(OutputExistsError):
            storage.Lease.acquire(str(tmp_path / "o"), "tune")
    finally:
        lease.release()
    storage.Lease.acquire(str(tmp_path / "o"), "tune").release()  # free again once released


def test_the_same_calls_on_s3(s3: str) -> None:
    path = storage.join(s3, "d", "x.json")
    assert not storage.exists(path)
    storage.write_json_atomic(path, {"a": [1, 2]})
    assert storage.exists(path) and json.loads(storage.read_text(path)) == {"a": [1, 2]}
    with storage.open_output(storage.join(s3, "m"), "model", overwrite=False) as out:
        storage.write_bytes_atomic(storage.join(out.dir, "w.bin"), b"w")
        manifest = out.commit({"model": "ann"})
    assert storage.read_bytes(storage.committed_path(storage.join(s3, "m"), manifest, "w.bin")) == b"w"
    storage.remove(storage.join(s3, "d"))
    assert not storage.exists(path)
