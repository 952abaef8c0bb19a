"""Issue #19 (storage layer and the writers outside label/): raygenre never deletes, moves or writes a path
outside its output, never through a symlink, and never stores or prints credentials from a URI. Each test
builds the crafted layout in ``tmp_path`` and checks that the victim is byte-for-byte unchanged and the error
is the exact one line the CLI prints. Pure: no Ray (evaluate refuses before it starts Ray)."""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import time
from pathlib import Path

import pytest
from conftest import tree_of
from test_artifact import _save

from raygenre import storage
from raygenre.model.artifact import LEGACY, META, WEIGHTS, ArtifactError, load_model, save_model
from raygenre.storage import OutputExistsError, UnsafePathError

VICTIM_BYTES = b"# the user's own file: export SECRET_PATH=1\n" * 3




def _victim(tmp_path: Path) -> tuple[Path, dict[str, bytes | str]]:
    """A user's folder outside every output: two files and a subfolder."""
    home = tmp_path / "home"
    (home / "docs").mkdir(parents=True)
    (home / ".bashrc").write_bytes(VICTIM_BYTES)
    (home / "docs" / "thesis.docx").write_bytes(b"PK\x03\x04 years of work")
    return home, tree_of(home)


# ------------------------------------------------------------------------------------ resolve, remove, inside
def test_resolve_never_follows_links(tmp_path: Path) -> None:
    home, _ = _victim(tmp_path)
    (tmp_path / "link").symlink_to(home)
    fs, inner = storage.resolve(tmp_path / "link" / "x" / ".." / ".bashrc")
    assert inner == str(tmp_path / "link" / ".bashrc")  # absolute and folded, the link kept
    assert storage.local_path(tmp_path / "link") == tmp_path / "link"


def test_remove_unlinks_links_and_never_descends_into_them(tmp_path: Path) -> None:
    home, before = _victim(tmp_path)
    out = tmp_path / "out"
    (out / "real" / "sub").mkdir(parents=True)
    (out / "real" / "sub" / "f").write_bytes(b"raygenre's")
    (out / "real" / "to_home").symlink_to(home)  # a link to a folder inside a real folder
    (out / "real" / "sub" / "to_file").symlink_to(home / ".bashrc")
    (out / "dirlink").symlink_to(home)
    (out / "filelink").symlink_to(home / ".bashrc")
    (out / "dangling").symlink_to(tmp_path / "nothing")
    for name in ("dirlink", "filelink", "dangling", "real"):
        storage.remove(out / name)
    assert sorted(os.listdir(out)) == []
    assert tree_of(home) == before


def test_check_inside_judges_the_real_location(tmp_path: Path) -> None:
    home, _ = _victim(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "docs").symlink_to(home / "docs")
    storage.check_inside(out / "docs", out)  # the link itself lives inside
    storage.check_inside(out, out)
    storage.check_inside(out / "new" / "x", out)  # not there yet: fine
    with pytest.raises(UnsafePathError, match=r"docs/thesis.docx: its real location .*/home/docs/thesis.docx is "
                                              r"outside .*/out \(a symlink on the way leads elsewhere\)"):
        storage.check_inside(out / "docs" / "thesis.docx", out)
    with pytest.raises(UnsafePathError):
        storage.check_inside(tmp_path / "out2", out)  # a sibling sharing the prefix is not inside
    storage.check_inside("s3://bucket/x", out)  # object stores have no links: no network, no error
    assert issubclass(UnsafePathError, OutputExistsError) and issubclass(UnsafePathError, FileExistsError)


# -------------------------------------------------------------------------------------------------- writers
@pytest.mark.parametrize("writer", ["atomic", "durable", "json"])
def test_writers_refuse_a_planted_link_and_leave_its_target(tmp_path: Path, writer: str) -> None:
    home, before = _victim(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").symlink_to(home / ".bashrc")
    write = {"atomic": lambda p: storage.write_bytes_atomic(p, b"x"),
             "durable": lambda p: storage.write_bytes_durable(p, b"x"),
             "json": lambda p: storage.write_json_atomic(p, {"x": 1})}[writer]
    with pytest.raises(UnsafePathError, match=r"metrics.json is a symlink \(to .*\.bashrc\), which raygenre never "
                                              r"creates: it neither writes through it nor replaces it"):
        write(out / "metrics.json")
    assert tree_of(home) == before
    assert tree_of(out) == {"metrics.json": f"-> {home / '.bashrc'}"}  # the link kept, no temporary file left


def test_writers_refuse_a_folder_and_a_parent_that_leaves_the_root(tmp_path: Path) -> None:
    home, before = _victim(tmp_path)
    out = tmp_path / "out"
    (out / "model.safetensors").mkdir(parents=True)
    with pytest.raises(OutputExistsError, match="model.safetensors is a folder where raygenre writes a file"):
        storage.write_bytes_atomic(out / "model.safetensors", b"w")
    (out / "attempts").symlink_to(home)
    with pytest.raises(UnsafePathError, match="outside"):
        storage.write_bytes_atomic(out / "attempts" / "new.bin", b"w", root=out)
    with pytest.raises(UnsafePathError, match="outside"):
        storage.write_bytes_durable(out / "attempts" / "docs" / "thesis.docx", b"w", root=out)
    assert tree_of(home) == before
    storage.write_bytes_durable(out / "inside.bin", b"ok", root=out)  # the normal case still works
    assert (out / "inside.bin").read_bytes() == b"ok"


# ------------------------------------------------------------------------------------------- output protocol
def test_a_commit_unlinks_an_old_attempt_that_is_a_link(tmp_path: Path) -> None:
    home, before = _victim(tmp_path)
    _save(tmp_path / "m", "ann")
    (tmp_path / "m" / "attempts" / "20200101-000000-old").symlink_to(home)
    (tmp_path / "m" / "attempts" / "zz").symlink_to(home / ".bashrc")
    _save(tmp_path / "m", "cnn")  # the library default replaces the model: its commit deletes old attempts
    assert tree_of(home) == before
    assert len(os.listdir(tmp_path / "m" / "attempts")) == 1 and load_model(str(tmp_path / "m")).name == "cnn"


@pytest.mark.parametrize("finished", [False, True])
def test_an_attempts_folder_that_is_a_link_is_refused_before_any_work(tmp_path: Path, finished: bool) -> None:
    home, before = _victim(tmp_path)
    out = tmp_path / "m"
    if finished:
        _save(out, "ann")
        real = out / "attempts"
        os.rename(real, tmp_path / "moved")  # "moved to a bigger disk", a link left in its place
        (home / "docs" / "attempt-1").mkdir()  # what the link's target holds besides
        (tmp_path / "moved").rename(home / "attempts")
        real.symlink_to(home / "attempts")
        before = tree_of(home)
    else:
        out.mkdir()
        (out / "attempts").symlink_to(home)
    listing = tree_of(out)
    with pytest.raises(UnsafePathError, match=r"m: attempts is a symlink \(to .*home.*\); raygenre deletes and "
                                              r"replaces what it holds and never does so through a link"):
        _save(out, "cnn")
    assert tree_of(home) == before and tree_of(out) == listing  # nothing deleted, no lease, no attempt


@pytest.mark.parametrize("name", [META, storage.LEASE])
def test_a_manifest_or_lease_that_is_a_link_is_refused(tmp_path: Path, name: str) -> None:
    home, before = _victim(tmp_path)
    out = tmp_path / "m"
    _save(out, "ann")
    if name == META:
        os.replace(out / META, home / "model.json")
        before = tree_of(home)
    (out / name).symlink_to(home / ("model.json" if name == META else ".bashrc"))
    with pytest.raises(UnsafePathError, match=f"{name} is a symlink"):
        storage.check_output(out, "model", overwrite=True)
    assert tree_of(home) == before


def test_legacy_names_that_are_links_are_unlinked_and_their_targets_kept(tmp_path: Path) -> None:
    home, _ = _victim(tmp_path)
    _save(tmp_path / "new", "ann")
    meta = json.loads((tmp_path / "new" / META).read_text())
    (home / "weights.bin").write_bytes((tmp_path / "new" / meta["attempt"] / WEIGHTS).read_bytes())
    before = tree_of(home)
    old = tmp_path / "old"  # the old layout, its files links into the user's folder
    old.mkdir()
    (old / META).write_text(json.dumps({k: v for k, v in meta.items() if k != "attempt"}))
    (old / WEIGHTS).symlink_to(home / "weights.bin")
    (old / "metrics.json").symlink_to(home / ".bashrc")
    (old / "confusion.png").symlink_to(home / "docs")
    assert set(LEGACY) == {WEIGHTS, "metrics.json", "confusion.png"}
    _save(old, "cnn")
    assert tree_of(home) == before
    assert sorted(os.listdir(old)) == ["attempts", META]


def test_a_tarball_with_a_link_out_of_the_model_survives_the_data_filter_but_not_an_overwrite(tmp_path: Path) -> None:
    """The case in the issue: ``attempts/zz -> ../../docs`` passes tarfile's "data" filter (it stays inside the
    extraction folder); the next overwrite used to delete docs/."""
    _save(tmp_path / "src", "ann")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(tmp_path / "src", arcname="model")
        link = tarfile.TarInfo("model/attempts/zz")
        link.type, link.linkname = tarfile.SYMTYPE, "../../docs"
        tar.addfile(link)
    project = tmp_path / "project"
    (project / "docs").mkdir(parents=True)
    (project / "docs" / "thesis.docx").write_bytes(b"years of work")
    before = tree_of(project / "docs")
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        tar.extractall(project, filter="data")
    assert (project / "model" / "attempts" / "zz").is_symlink()  # the filter let it through
    _save(project / "model", "cnn")  # == train/copy with --overwrite
    assert tree_of(project / "docs") == before
    assert not (project / "model" / "attempts" / "zz").exists()


@pytest.mark.parametrize("attempt", ["attempts/a\x00b", "attempts/x\ny", "attempts/a/b", ["attempts/1"], 7,
                                     "attempts/" + "a" * 300])
def test_a_nonsense_attempt_name_is_one_clear_error(tmp_path: Path, attempt: object) -> None:
    _save(tmp_path / "m", "ann")
    meta = json.loads((tmp_path / "m" / META).read_text())
    (tmp_path / "m" / META).write_text(json.dumps({**meta, "attempt": attempt}))
    with pytest.raises(ValueError, match="not a raygenre attempt name|must be a string"):
        storage.committed_path(str(tmp_path / "m"), {"attempt": attempt}, WEIGHTS)
    with pytest.raises(ArtifactError, match=r"m: its manifest('s attempt must be a string| names attempt .* not a "
                                            r"raygenre attempt name)"):
        load_model(str(tmp_path / "m"))


# ----------------------------------------------------------------------------------------------- evaluate
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tripwire, not a stand-in: evaluate must refuse before it connects to Ray."""
    from raygenre import workflow

    def tripped(*_: object, **__: object) -> None:
        raise AssertionError("evaluate reached ensure_ray: the planted link was not refused first")
    monkeypatch.setattr(workflow, "ensure_ray", tripped)


def test_evaluate_refuses_planted_links_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from raygenre.training.evaluate import plot_confusion
    from raygenre.workflow import evaluate_model

    _no_ray(monkeypatch)
    home, before = _victim(tmp_path)
    _save(tmp_path / "m", "ann")
    attempt = tmp_path / "m" / json.loads((tmp_path / "m" / META).read_text())["attempt"]
    (attempt / "metrics.json").symlink_to(home / ".bashrc")
    (attempt / "confusion.png").symlink_to(home / "docs" / "thesis.docx")
    with pytest.raises(UnsafePathError, match=r"metrics.json is a symlink \(to .*\.bashrc\)"):
        evaluate_model(str(tmp_path / "m"), features=str(tmp_path / "no-table-needed"))
    with pytest.raises(UnsafePathError, match=r"confusion.png is a symlink"):
        plot_confusion([[1, 0], [0, 1]], ["a", "b"], str(attempt / "confusion.png"), "t", root=str(tmp_path / "m"))
    with pytest.raises(UnsafePathError, match=r"metrics.json is a symlink"):
        storage.write_json_atomic(attempt / "metrics.json", {"x": 1}, root=tmp_path / "m")
    assert tree_of(home) == before


def test_evaluate_refuses_an_attempt_folder_that_leads_out_of_the_model(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from raygenre.workflow import evaluate_model

    _no_ray(monkeypatch)
    home, _ = _victim(tmp_path)
    _save(tmp_path / "m", "ann")
    meta = json.loads((tmp_path / "m" / META).read_text())
    os.rename(tmp_path / "m" / meta["attempt"], home / "stolen")  # the model's files now live in the user's folder
    (tmp_path / "m" / meta["attempt"]).symlink_to(home / "stolen")
    before = tree_of(home)
    with pytest.raises(UnsafePathError, match="metrics.json: its real location .*home/stolen/metrics.json is outside"):
        evaluate_model(str(tmp_path / "m"), features=str(tmp_path / "x"))
    assert tree_of(home) == before


# ------------------------------------------------------------------------------------------- credentials
@pytest.mark.parametrize(("uri", "shown"), [
    ("s3://AKID:SECRET@bucket/a/b", "s3://bucket/a/b"),
    ("s3://AKID:SE/CRET@bucket/a", "s3://bucket/a"),  # an unescaped "/" in the secret
    ("s3://AKID@bucket:9000/a", "s3://bucket:9000/a"),
    ("gs://b/x?access_key=AK&region=eu&secret_key=S&session_token=T&X-Amz-Signature=SIG",
     "gs://b/x?access_key=REDACTED&region=eu&secret_key=REDACTED&session_token=REDACTED&X-Amz-Signature=REDACTED"),
    ("--features=s3://AKID:SECRET@bucket/f", "--features=s3://bucket/f"),
    ("see s3://A:B@b/x and s3://C:D@c/y", "see s3://b/x and s3://c/y"),
    ("/home/me/a@b:c/file", "/home/me/a@b:c/file"),  # local paths unchanged
    ("file:///tmp/x", "file:///tmp/x"),
])
def test_redact(uri: str, shown: str) -> None:
    assert storage.redact(uri) == shown


def test_no_credentials_in_the_lease_its_messages_or_model_json(s3: str, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "SUPERSECRET42"
    root = s3.replace("s3://", f"s3://AKIDTEST:{secret}@")  # moto takes any key
    monkeypatch.setattr(sys, "argv", ["/usr/bin/raygenre", "train", "--features", f"{root}/feat", "--out",
                                      f"--out={root}/m?session_token={secret}"])
    lease = storage.Lease.acquire(storage.join(root, "m"), "model")
    try:
        record = storage.read_text(storage.join(s3, "m", storage.LEASE))
        assert secret not in record and "AKIDTEST" not in record
        assert json.loads(record)["command"] == (f"raygenre train --features {s3}/feat --out "
                                                 f"--out={s3}/m?session_token=REDACTED")
        with pytest.raises(OutputExistsError) as exc:
            storage.Lease.acquire(storage.join(root, "m"), "model")
        assert str(exc.value).startswith(f"{s3}/m is being written by run ") and secret not in str(exc.value)
    finally:
        lease.release()
    _save(storage.join(root, "model"), "ann")
    with pytest.raises(OutputExistsError) as exc:
        storage.check_output(storage.join(root, "model"), "model", overwrite=False)
    assert str(exc.value).startswith(f"{s3}/model already holds a raygenre model") and secret not in str(exc.value)
    import test_artifact
    model = test_artifact._trained_like("ann")
    save_model(storage.join(root, "m2"), model, name="ann", hparams={"hidden": 512, "dropout": 0.2},
               features=test_artifact.PARAMS, genres=test_artifact.GENRES, mean=[0.0] * 13, std=[1.0] * 13,
               metrics={}, synthetic=True, extra={"features_dir": f"{root}/feat", "run_dir": f"{root}/runs/r"})
    meta_text = storage.read_text(storage.join(s3, "m2", META))
    assert secret not in meta_text and "AKIDTEST" not in meta_text
    assert json.loads(meta_text)["features_dir"] == f"{s3}/feat" and json.loads(meta_text)["run_dir"] == f"{s3}/runs/r"


# --------------------------------------------------------------------------------- one line, not a traceback
def test_a_uri_without_a_bucket_or_an_unreachable_store_is_one_line_without_the_secret() -> None:
    with pytest.raises(storage.StorageError, match=r"^s3:///feat names no bucket; give a URI like s3://bucket/folder$"):
        storage.exists("s3://AKID:SECRET@/feat")
    with pytest.raises(storage.StorageError, match="names no bucket"):
        storage.check_output("s3://", "model", overwrite=False)
    t0 = time.time()
    with pytest.raises(storage.StorageError) as exc:  # nothing listens on port 1 of loopback
        storage.exists("s3://AKID:SECRET@bucket/feat?endpoint_override=127.0.0.1:1&scheme=http")
    message = str(exc.value)
    assert message.startswith("s3://bucket/feat?endpoint_override=127.0.0.1:1&scheme=http: the object store "
                              "cannot be used: ")
    assert "SECRET" not in message and "AKID" not in message and "\n" not in message
    assert isinstance(exc.value, ValueError) and time.time() - t0 < 60  # the CLI's friendly_errors catches it


@pytest.mark.parametrize("content", ["[]", "[1, 2]", "42", '"x"', "null", "{not json"])
def test_a_manifest_or_lease_that_is_not_an_object_is_a_clear_refusal(tmp_path: Path, content: str) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / META).write_text(content)
    with pytest.raises(OutputExistsError, match=r"m already holds a raygenre model\. Pass --overwrite"):
        storage.check_output(out, "model", overwrite=False)
    with pytest.raises(ArtifactError, match="model.json is not (a JSON object|valid JSON)"):
        load_model(str(out))
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / storage.LEASE).write_text(content)  # nothing raygenre wrote: no live lease
    storage.Lease.acquire(str(tmp_path / "o"), "tune").release()


def test_a_lease_with_odd_fields_is_described_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / storage.LEASE).write_text(json.dumps({"holder": "h", "heartbeat": "soon", "pid": True}))
    storage.Lease.acquire(str(tmp_path / "o"), "tune").release()  # no heartbeat: abandoned, taken over


def test_a_weights_file_that_is_a_folder_is_an_artifact_error(tmp_path: Path) -> None:
    _save(tmp_path / "m", "ann")
    attempt = tmp_path / "m" / json.loads((tmp_path / "m" / META).read_text())["attempt"]
    (attempt / WEIGHTS).unlink()
    (attempt / WEIGHTS).mkdir()
    with pytest.raises(ArtifactError, match=r"model.safetensors is not a file \(a folder\?\)"):
        load_model(str(tmp_path / "m"))


@pytest.mark.parametrize(("name", "hidden", "match"), [
    ("ann", 3_000_000, r"hparams.hidden must be an integer between 1 and 1048576, got 3000000"),
    # within the range but not what the weights hold: refused from the weights' shapes before any allocation
    # (16 TB for this LSTM, which the allocator would refuse at once: a regression fails here, it cannot swap)
    ("lstm", 1 << 20, r"does not match a lstm model .*: lstm.weight_ih_l0 is \(256, 13\) in the file but "
                      r"\(4194304, 13\) for these hyperparameters"),
])
def test_absurd_hparams_are_checked_against_the_weights_before_the_network_is_built(
        tmp_path: Path, name: str, hidden: int, match: str) -> None:
    _save(tmp_path / "m", name)
    meta = json.loads((tmp_path / "m" / META).read_text())
    (tmp_path / "m" / META).write_text(json.dumps({**meta, "hparams": {**meta["hparams"], "hidden": hidden}}))
    with pytest.raises(ArtifactError, match=match):
        load_model(str(tmp_path / "m"))


def test_every_printed_line_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI's consoles redact whatever code built the message: a URI with a secret never reaches the screen."""
    from raygenre import report

    report.error("cannot reach s3://AKIDEXAMPLE:wJalr/SECRETKEY@bucket/feat")
    report.say("features in gs://user:pw@bucket/x?X-Amz-Signature=abc123 ready")
    out, err = capsys.readouterr()
    assert "SECRETKEY" not in err and "AKIDEXAMPLE" not in err and "s3://bucket/feat" in err
    assert "pw@" not in out and "abc123" not in out and "gs://bucket/x?X-Amz-Signature=REDACTED" in out
