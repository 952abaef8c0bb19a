"""`raygenre label` never touches what it did not write (issue #19): the output, the parts folder, resume.

Pure: parts.py and scan.py driven directly (no Ray). The CLI cases fail before Ray starts, which they check.
Every crafted input asserts its victim byte-for-byte unchanged, or the exact rows.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch
from conftest import tree_of
from typer.testing import CliRunner

from raygenre import storage
from raygenre.cli import app
from raygenre.config import load_config
from raygenre.label.parts import (
    BROKEN_DIR,
    OTHER_DIR,
    PART_NAME,
    RUN_FILE,
    PartWriter,
    ResumeMismatchError,
    check_label_output,
    consolidate,
    is_label_output,
    list_parts,
    next_part_index,
    on_disk,
    original_path,
    output_schema,
    parts_dir_of,
    prepare_parts,
    read_labels,
    run_lock,
    safe_str,
    set_aside_broken_parts,
)
from raygenre.label.scan import SCAN_SHARDS, load_done, scan_shard
from raygenre.model.artifact import save_model
from raygenre.model.networks import build_model

GENRES = ["blues", "jazz", "rock"]
MID = "cnn-20250101T000000-0123abcd"
EXTS = frozenset(load_config("label").extensions)


def rows(paths: list[str], model: str = MID, genres: list[str] = GENRES, size: int = 10, mtime: float = 1.0,
         error: str | None = None) -> pa.Table:
    """Label rows for ``paths`` (all the first genre, or error rows)."""
    n = len(paths)
    ok = error is None
    table = pa.table({
        "path": paths, "genre": [genres[0] if ok else None] * n,
        "top_genre": [genres[0] if ok else None] * n, "confidence": [1.0 if ok else None] * n,
        **{f"p_{g}": [(1.0 if i == 0 else 0.0) if ok else None] * n for i, g in enumerate(genres)},
        "duration_s": [5.0] * n, "segments_used": [1 if ok else 0] * n, "error": [error] * n,
        "model": [model] * n, "size": [size] * n, "mtime": [mtime] * n})
    return table.cast(output_schema(genres))


def write_part(parts: Path, table: pa.Table, genres: list[str] = GENRES) -> Path:
    """One part as a label run writes it (PartWriter), numbered after the parts already there."""
    before = set(list_parts(str(parts)))
    writer = PartWriter(str(parts), output_schema(genres), 10_000, next_part_index(str(parts)))
    writer.add(table)
    writer.flush()
    (new,) = set(list_parts(str(parts))) - before
    return Path(new)


def run_of(lib: Path, model: str = MID, genres: list[str] = GENRES) -> dict:
    return {"model": model, "genres": genres, "segments_per_track": 10, "features": {"n_mfcc": 13},
            "library": str(lib)}




def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


# ------------------------------------------------------------------------------ 1. links in the parts folder
def test_a_linked_part_is_never_read_moved_or_deleted(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    out = tmp_path / "labels.parquet"
    parts = Path(parts_dir_of(str(out)))
    parts.mkdir()
    mine = tmp_path / "mine"
    mine.mkdir()
    thesis = mine / "thesis.docx"  # not Parquet: an "unreadable part" would go to broken/
    thesis.write_bytes(b"PK\x03\x04 my thesis, three years of work")
    other = mine / "other.parquet"  # a label table of another model: would go to other-runs/
    other.write_bytes(parquet_bytes(rows([str(lib / "x.wav")], model="someone-else")))
    victims = tree_of(mine)
    (parts / "part-000000-deadbeef.parquet").symlink_to(thesis)
    (parts / "part-000001-deadbeef.parquet").symlink_to(other)
    real = write_part(parts, rows([str(lib / "a.wav")]))
    assert list_parts(str(parts)) == [str(real)]  # links are not parts

    state = prepare_parts(str(parts), run_of(lib), resume=True)
    assert (state.set_aside.broken, state.set_aside.other) == ([], [])
    assert sum("symbolic link" in w and "ignored" in w for w in state.warnings) == 2
    tally = consolidate(str(parts), str(out), "parquet", output_schema(GENRES), keep_deleted=True, model=MID)
    assert pq.read_table(out).column("path").to_pylist() == [str(lib / "a.wav")] and tally.files == 1

    prepare_parts(str(parts), run_of(lib), resume=False)  # --no-resume: deletes raygenre's parts only
    assert not real.exists()
    assert (parts / "part-000000-deadbeef.parquet").is_symlink()  # the links stay, as they were
    assert os.readlink(parts / "part-000001-deadbeef.parquet") == str(other)
    assert tree_of(mine) == victims
    assert not (parts / BROKEN_DIR).exists() and not (parts / OTHER_DIR).exists()


@pytest.mark.parametrize("where", ["parts", BROKEN_DIR, OTHER_DIR, RUN_FILE, ".lock"])
def test_a_linked_parts_folder_or_subfolder_is_refused_and_nothing_goes_through_it(tmp_path: Path,
                                                                                 where: str) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    out = tmp_path / "labels.parquet"
    parts = Path(parts_dir_of(str(out)))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    (mine / "part-000000-abcdef01.parquet").write_bytes(parquet_bytes(rows([str(lib / "a.wav")])))
    (mine / "part-000001-abcdef01.parquet").write_bytes(b"")  # an "unreadable part"
    if where == "parts":
        parts.symlink_to(mine)
    else:
        parts.mkdir()
        write_part(parts, rows([str(lib / "b.wav")], model="other-model"))  # would be moved to other-runs/
        (parts / "part-000099-0000aaaa.parquet").write_bytes(b"")  # would be moved to broken/
        (parts / where).symlink_to(mine / ("notes.txt" if where in (RUN_FILE, ".lock") else ""))
    victims, before = tree_of(mine), tree_of(parts) if where != "parts" else {}

    with pytest.raises(storage.UnsafePathError, match="symbolic link"):
        check_label_output(str(out), overwrite=True)
    with pytest.raises(storage.UnsafePathError, match="symbolic link"):
        prepare_parts(str(parts), run_of(lib), resume=True)
    with pytest.raises(storage.UnsafePathError, match="symbolic link"):
        prepare_parts(str(parts), run_of(lib), resume=False)
    with pytest.raises(storage.UnsafePathError, match="symbolic link"), run_lock(str(parts)):
        pass
    if where == "parts":
        assert list_parts(str(parts)) == []  # a linked folder is not read either
    assert tree_of(mine) == victims
    if where != "parts":
        assert tree_of(parts) == before


def test_set_aside_into_a_linked_folder_made_meanwhile_is_refused(tmp_path: Path) -> None:
    """set_aside_broken_parts checks the folder again when it moves (not only check_parts_dir before)."""
    parts = tmp_path / "l.parquet.parts"
    parts.mkdir()
    broken = parts / "part-000000-0000aaaa.parquet"
    broken.write_bytes(b"PAR1 cut")
    mine = tmp_path / "mine"
    mine.mkdir()
    (parts / BROKEN_DIR).symlink_to(mine)
    with pytest.raises(storage.UnsafePathError):
        set_aside_broken_parts(str(parts))
    assert broken.read_bytes() == b"PAR1 cut" and list(mine.iterdir()) == []


def test_lock_file_link_to_a_missing_file_creates_nothing(tmp_path: Path) -> None:
    parts = tmp_path / "l.parquet.parts"
    parts.mkdir()
    (parts / ".lock").symlink_to(tmp_path / "would-be-created")
    with pytest.raises(storage.UnsafePathError), run_lock(str(parts)):
        pass
    assert not (tmp_path / "would-be-created").exists()


# --------------------------------------------------------------------------------------- 2. label --out
def tiny_model(out: Path) -> str:
    torch.manual_seed(0)
    f = load_config("featurize").features
    save_model(str(out), build_model("ann", f.frames, f.n_mfcc, len(GENRES), hidden=8, dropout=0.0), name="ann",
               hparams={"hidden": 8, "dropout": 0.0}, features=f, genres=GENRES, mean=np.zeros(f.n_mfcc),
               std=np.ones(f.n_mfcc), metrics={}, synthetic=True)
    return str(out)


def label_cli(args: list[str]) -> tuple[int, str, float]:
    """`raygenre label ARGS` in-process; (exit code, output on one line, seconds). Asserts Ray never started."""
    import ray

    ray_before = ray.is_initialized()
    t0 = time.monotonic()
    res = CliRunner().invoke(app, ["label", *args])
    took = time.monotonic() - t0
    if not ray_before:
        assert not ray.is_initialized(), "the output check came after Ray started"
    return res.exit_code, " ".join(res.output.split()), took


@pytest.fixture
def lib_and_model(tmp_path: Path) -> tuple[Path, str]:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "a.wav").write_bytes(b"RIFF")
    return lib, tiny_model(tmp_path / "model")


def test_out_that_is_not_a_label_table_is_refused_before_any_work(tmp_path: Path,
                                                                   lib_and_model: tuple[Path, str]) -> None:
    lib, model = lib_and_model
    thesis = tmp_path / "thesis.docx"
    thesis.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 40)
    table = tmp_path / "mine.parquet"  # Parquet, but not a label table
    table.write_bytes(parquet_bytes(pa.table({"path": ["/x.wav"], "genre": ["jazz"], "score": [3]})))
    sheet = tmp_path / "mine.csv"
    sheet.write_text('"path","genre","notes"\n"/x.wav","jazz","my own labels"\n')
    almost = tmp_path / "almost.jsonl"  # the label columns but one
    almost.write_text(json.dumps({c: None for c in output_schema(GENRES).names if c != "mtime"}) + "\n")
    empty = tmp_path / "empty.csv"  # empty, and no run.json says raygenre wrote it
    empty.write_bytes(b"")
    for victim in (thesis, table, sheet, almost, empty):
        before = victim.read_bytes()
        code, text, took = label_cli([str(lib), "--model", model, "--out", str(victim)])
        assert code == 2, text
        assert "is not a label table raygenre wrote" in text and "--overwrite" in text, text
        assert "Traceback" not in text and took < 10
        assert victim.read_bytes() == before
        assert not Path(parts_dir_of(str(victim))).exists()  # not even the parts folder was made
    # --overwrite gets past the check (here to the next one: a library that is not there)
    code, text, _ = label_cli([str(tmp_path / "no-library"), "--model", model, "--out", str(thesis), "--overwrite"])
    assert code == 2 and "library not found" in text
    assert thesis.read_bytes()[:4] == b"PK\x03\x04"


def test_out_symlink_and_folder_are_refused_before_any_work(tmp_path: Path, lib_and_model: tuple[Path, str]) -> None:
    lib, model = lib_and_model
    target = tmp_path / "bashrc"
    target.write_bytes(b"export PATH=/usr/bin\n")
    link = tmp_path / "labels.parquet"
    link.symlink_to(target)
    code, text, _ = label_cli([str(lib), "--model", model, "--out", str(link)])
    assert code == 2 and "symbolic link" in text and "--overwrite" in text, text
    assert target.read_bytes() == b"export PATH=/usr/bin\n" and link.is_symlink()

    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    for flags in ([], ["--overwrite"]):  # a folder is never replaced
        code, text, _ = label_cli([str(lib), "--model", model, "--out", str(folder), *flags])
        assert code == 2 and "is a folder" in text, text
    assert tree_of(folder) == {"keep.txt": b"mine"}


def test_a_label_table_raygenre_wrote_is_recognised_in_every_format(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    parts = tmp_path / "labels.parquet.parts"
    write_part(parts, rows([str(lib / "a.wav"), str(lib / "b.wav")], error="empty file"))
    for fmt in ("parquet", "csv", "jsonl"):
        out = tmp_path / f"labels.{fmt}"
        consolidate(str(parts), str(out), fmt, output_schema(GENRES), keep_deleted=True)
        assert is_label_output(str(out)), fmt
        check_label_output(str(out), overwrite=False)  # a rerun replaces it without --overwrite
        consolidate(str(parts), str(out), fmt, output_schema(GENRES), keep_deleted=True)  # and the commit agrees
        assert read_labels(str(out)).num_rows == 2
    other_genres = tmp_path / "other.parquet"  # a label table of another model's genres is still one
    other_genres.write_bytes(parquet_bytes(rows(["/x.wav"], genres=["a", "b"])))
    assert is_label_output(str(other_genres))
    wrong_types = tmp_path / "types.parquet"  # the right names, other types: not raygenre's Parquet
    wrong_types.write_bytes(parquet_bytes(pa.table({n: ["x"] for n in output_schema(GENRES).names})))
    assert not is_label_output(str(wrong_types))
    # a JSON Lines output of no rows is an empty file: recognised only beside the run.json of its label run
    empty = tmp_path / "none.jsonl"
    empty.write_bytes(b"")
    assert not is_label_output(str(empty))
    prepare_parts(parts_dir_of(str(empty)), run_of(lib), resume=True)
    assert is_label_output(str(empty))


def test_the_final_write_replaces_a_link_never_its_target_and_rechecks(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    parts = tmp_path / "labels.parquet.parts"
    write_part(parts, rows([str(lib / "a.wav")]))
    schema = output_schema(GENRES)
    target = tmp_path / "target.txt"
    target.write_bytes(b"do not write here")
    out = tmp_path / "labels.parquet"
    out.symlink_to(target)
    with pytest.raises(storage.UnsafePathError):
        consolidate(str(parts), str(out), "parquet", schema, keep_deleted=True)
    assert out.is_symlink() and target.read_bytes() == b"do not write here"
    consolidate(str(parts), str(out), "parquet", schema, keep_deleted=True, overwrite=True)
    assert not out.is_symlink() and pq.read_table(out).num_rows == 1  # the link itself was replaced
    assert target.read_bytes() == b"do not write here"
    # a file that appears at OUT while a run goes on is not replaced at the end either
    late = tmp_path / "late.csv"
    late.write_bytes(b"saved by the user during the run\n")
    with pytest.raises(storage.OutputExistsError, match="not a label table"):
        consolidate(str(parts), str(late), "csv", schema, keep_deleted=True)
    assert late.read_bytes() == b"saved by the user during the run\n"
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name) == []  # the temporary is gone


def test_out_checks_on_s3_name_no_secret(s3: str) -> None:
    """Object stores: an existing foreign object and a "folder" are refused; credentials never printed."""
    fs, inner = storage.resolve(s3)
    with fs.open_output_stream(f"{inner}/thesis.docx") as f:
        f.write(b"my thesis")
    with fs.open_output_stream(f"{inner}/results/x.txt") as f:
        f.write(b"x")
    bucket, prefix = inner.split("/", 1)
    secret_uri = f"s3://raygenre-test:TOPSECRET@{bucket}/{prefix}"
    for name, message in (("thesis.docx", "not a label table"), ("results", "is a folder")):
        with pytest.raises(storage.OutputExistsError, match=message) as err:
            check_label_output(f"{secret_uri}/{name}", overwrite=False)
        assert "TOPSECRET" not in str(err.value)
    assert fs.open_input_stream(f"{inner}/thesis.docx").read() == b"my thesis"
    check_label_output(f"{s3}/labels.parquet", overwrite=False)  # absent: fine


# ---------------------------------------------------------------------------------- 3. resume never mixes
def test_run_file_records_model_and_schema(tmp_path: Path) -> None:
    parts = tmp_path / "l.parquet.parts"
    prepare_parts(str(parts), run_of(tmp_path), resume=True)
    run = json.loads((parts / RUN_FILE).read_text())
    assert run["model"] == MID and run["genres"] == GENRES
    assert run["schema"][:4] == [["path", "string"], ["genre", "string"], ["top_genre", "string"],
                                 ["confidence", "float"]]
    assert [n for n, _ in run["schema"]] == output_schema(GENRES).names


def test_parts_of_another_model_or_schema_are_set_aside_never_merged(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    for n in ("a", "b", "c", "d"):
        (lib / f"{n}.wav").write_bytes(b"x")
    parts = tmp_path / "labels.parquet.parts"
    prepare_parts(str(parts), run_of(lib), resume=True)
    mine = write_part(parts, rows([str(lib / "a.wav")]))
    same_genres = write_part(parts, rows([str(lib / "a.wav"), str(lib / "b.wav")], model="other-model"))
    other_genres = write_part(parts, rows([str(lib / "c.wav")], model="x", genres=["pop", "rap"]), ["pop", "rap"])
    stranger = parts / "part-000007-0123abcd.parquet"  # Parquet named like a part, not a label part
    stranger.write_bytes(parquet_bytes(pa.table({"path": [str(lib / "d.wav")], "n": [1]})))
    moved = {p.name: p.read_bytes() for p in (same_genres, other_genres, stranger)}

    # consolidating before the set-aside (a part planted mid-run) merges only this run's: no KeyError
    tally = consolidate(str(parts), str(tmp_path / "early.parquet"), "parquet", output_schema(GENRES), model=MID)
    assert pq.read_table(tmp_path / "early.parquet").to_pylist() == rows([str(lib / "a.wav")]).to_pylist()
    assert len(tally.skipped) == 3
    assert load_done(str(parts), str(lib), 0, 1, model=MID) == {str(lib / "a.wav"): (10, 1.0)}

    state = prepare_parts(str(parts), run_of(lib), resume=True)
    assert state.set_aside.broken == []
    assert sorted(s.split(":")[0] for s in state.set_aside.other) == sorted(moved)
    assert any("made with model other-model" in s for s in state.set_aside.other)
    assert any("other genres" in s for s in state.set_aside.other)
    assert sum(OTHER_DIR in w and "never merged" in w for w in state.warnings) == 3
    assert {p.name: p.read_bytes() for p in (parts / OTHER_DIR).iterdir()} == moved  # kept whole
    assert list_parts(str(parts)) == [str(mine)]
    out = tmp_path / "labels.parquet"
    consolidate(str(parts), str(out), "parquet", output_schema(GENRES), model=MID)
    assert pq.read_table(out).to_pylist() == rows([str(lib / "a.wav")]).to_pylist()


def test_stray_files_are_ignored_with_a_warning(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    parts = tmp_path / "labels.parquet.parts"
    parts.mkdir()
    strays = {"part-x.parquet": b"PAR1?", "notes.txt": b"my notes", "part-12.parquet": b"",
              "part-000003-abc.parquet.bak": b"old"}
    for name, data in strays.items():
        (parts / name).write_bytes(data)
    (parts / "part-000002-0badc0de.parquet").mkdir()  # a folder named like a part
    prepare_parts(str(parts), run_of(lib), resume=True)
    write_part(parts, rows([str(lib / "a.wav")]))
    assert next_part_index(str(parts)) == 1
    for resume in (True, False):
        state = prepare_parts(str(parts), run_of(lib), resume=resume)
        assert sorted(w.split("/")[-1].split(" is ")[0] for w in state.warnings) == sorted(
            [*strays, "part-000002-0badc0de.parquet"])
        assert {n: (parts / n).read_bytes() for n in strays} == strays
    assert next_part_index(str(parts)) == 0


@pytest.mark.parametrize("damage", ["missing", "cut", "list", "no-model"])
def test_a_lost_or_damaged_run_file_is_rebuilt_when_the_parts_agree(tmp_path: Path, damage: str) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "a.wav").write_bytes(b"x")
    parts = tmp_path / "labels.parquet.parts"
    prepare_parts(str(parts), run_of(lib), resume=True)
    part = write_part(parts, rows([str(lib / "a.wav")]))
    run_file = parts / RUN_FILE
    text = run_file.read_text()
    {"missing": lambda: run_file.unlink(), "cut": lambda: run_file.write_text(text[: len(text) // 2]),
     "list": lambda: run_file.write_text("[]\n"), "no-model": lambda: run_file.write_text('{"genres": []}')}[damage]()
    state = prepare_parts(str(parts), run_of(lib), resume=True)
    assert any("rebuilt from the 1 part(s)" in w for w in state.warnings), state.warnings
    assert json.loads(run_file.read_text())["model"] == MID
    assert list_parts(str(parts)) == [str(part)]


@pytest.mark.parametrize("damage", ["missing", "cut", "list"])
@pytest.mark.parametrize("other", ["model", "genres", "library"])
def test_a_lost_run_file_with_parts_of_another_run_refuses_the_resume(tmp_path: Path, damage: str,
                                                                      other: str) -> None:
    """The bug: run.json deleted, then a resume with another model kept the first model's rows as done."""
    lib = tmp_path / "lib"
    lib.mkdir()
    parts = tmp_path / "labels.parquet.parts"
    first = {"model": run_of(lib, model="first-model"), "genres": run_of(lib, genres=["pop", "rap"]),
             "library": run_of(tmp_path / "elsewhere")}[other]
    prepare_parts(str(parts), first, resume=True)
    write_part(parts, rows([f"{first['library']}/a.wav"], model=first["model"], genres=first["genres"]),
               first["genres"])
    run_file = parts / RUN_FILE
    if damage == "missing":
        run_file.unlink()
    else:
        run_file.write_text("[]" if damage == "list" else run_file.read_text()[:20])
    before = tree_of(parts)
    with pytest.raises(ResumeMismatchError, match="--no-resume") as err:
        prepare_parts(str(parts), run_of(lib), resume=True)
    assert "run.json" in str(err.value) and "not all this run's" in str(err.value)
    assert tree_of(parts) == before  # nothing moved, nothing rewritten
    prepare_parts(str(parts), run_of(lib), resume=False)  # what the message says to do
    assert list_parts(str(parts)) == []


def test_resume_state_on_s3(s3: str) -> None:
    """The same on an object store (no rename): a stray object ignored, another model's part set aside."""
    parts = f"{s3}/labels.parquet.parts"
    fs, inner = storage.resolve(parts)
    prepare_parts(parts, run_of(Path("/lib")), resume=True)
    for data, name in ((parquet_bytes(rows(["/lib/a.wav"])), "part-000000-0000aaaa.parquet"),
                       (parquet_bytes(rows(["/lib/b.wav"], model="other")), "part-000001-0000bbbb.parquet"),
                       (b"notes", "notes.txt")):
        with fs.open_output_stream(f"{inner}/{name}") as f:
            f.write(data)
    state = prepare_parts(parts, run_of(Path("/lib")), resume=True)
    assert state.set_aside.other == ["part-000001-0000bbbb.parquet: made with model other"]
    assert any("notes.txt" in w and "ignored" in w for w in state.warnings)
    assert fs.open_input_stream(f"{inner}/notes.txt").read() == b"notes"
    assert fs.get_file_info(f"{inner}/{OTHER_DIR}/part-000001-0000bbbb.parquet").type == pafs.FileType.File
    consolidate(parts, f"{s3}/labels.parquet", "parquet", output_schema(GENRES), keep_deleted=True, model=MID)
    assert read_labels(f"{s3}/labels.parquet").column("path").to_pylist() == ["/lib/a.wav"]


# ------------------------------------------------------------------- 3b. S3 outputs: one upload, no copy
MIB = 1024 * 1024


@contextlib.contextmanager
def s3_requests(fail: Callable[[str, Any], None] | None = None) -> Iterator[list[str]]:
    """The S3 operations boto3 sends while inside (``UploadPart`` etc., in order), through a fresh default
    session: the handler reaches every client made from it. ``fail(operation, request)`` may raise to make
    that request fail as a dropped connection would, before it leaves (the server never sees it)."""
    import boto3

    boto3.setup_default_session()
    sent: list[str] = []

    def before_send(request: Any, event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        sent.append(operation)
        if fail is not None:
            fail(operation, request)

    boto3.DEFAULT_SESSION.events.register("before-send.s3", before_send)
    try:
        yield sent
    finally:
        boto3.DEFAULT_SESSION = None  # the next boto3.client() gets a session without the handler


def spool_fds(spool: Path) -> list[str]:
    """This process's open files in ``spool`` (a TemporaryFile has no name there, only an open descriptor)."""
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(f"{spool}/"):
                fds.append(target)
    return fds


def s3_keys(uri: str) -> list[str]:
    """Every object under an s3:// prefix, relative to it."""
    fs, inner = storage.resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True))
    return sorted(i.path[len(inner) + 1:] for i in infos if i.type == pafs.FileType.File)


def test_an_s3_output_is_one_upload_of_the_bytes_a_local_run_writes(s3: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Every format: the key holds exactly the local output's bytes, sent as one PutObject (no temporary key,
    no copy); the local spool existed during the upload and is gone after it."""
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    schema = output_schema(GENRES)
    table = rows([f"/lib/{i}.wav" for i in range(300)])
    for fmt in ("parquet", "csv", "jsonl"):
        local, remote = tmp_path / f"labels.{fmt}", f"{s3}/labels.{fmt}"
        write_part(Path(parts_dir_of(str(local))), table)
        write_part(parts_dir_of(remote), table)  # type: ignore[arg-type] - write_part takes a URI as well
        consolidate(parts_dir_of(str(local)), str(local), fmt, schema, keep_deleted=True)
        during: list[list[str]] = []

        def look(op: str, _: Any, during: list[list[str]] = during) -> None:
            if op == "PutObject":
                during.append(spool_fds(spool))

        with s3_requests(look) as sent:
            consolidate(parts_dir_of(remote), remote, fmt, schema, keep_deleted=True)
        assert [op for op in sent if op not in ("HeadObject", "ListObjectsV2", "GetObject")] == ["PutObject"]
        assert len(during) == 1 and len(during[0]) == 1 and during[0][0].endswith("(deleted)")  # the spool, open
        assert storage.read_bytes(remote) == local.read_bytes()
    parts = [k for k in s3_keys(s3) if ".parts/" in k]
    assert sorted(set(s3_keys(s3)) - set(parts)) == ["labels.csv", "labels.jsonl", "labels.parquet"]  # no temp
    assert all(PART_NAME.fullmatch(k.rsplit("/", 1)[1]) or k.endswith(".parts/" + RUN_FILE) for k in parts)
    assert spool_fds(spool) == [] and list(spool.iterdir()) == []


def test_an_s3_upload_that_fails_mid_way_leaves_the_old_object_and_no_spool(s3: str, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A multipart upload whose second part fails (the connection drops before it is sent): one clear line,
    the upload aborted, the previous output at the key byte-for-byte as it was, nothing left on disk."""
    from botocore.exceptions import EndpointConnectionError

    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    monkeypatch.setattr(storage, "UPLOAD_MULTIPART_THRESHOLD", 5 * MIB)
    monkeypatch.setattr(storage, "UPLOAD_CHUNK", 5 * MIB)  # S3's smallest part
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # no retries of the failed part: the test need not wait for them
    schema = output_schema(GENRES)
    out = f"{s3}/labels.jsonl"
    write_part(parts_dir_of(out), rows(["/lib/old.wav"]))  # type: ignore[arg-type]
    consolidate(parts_dir_of(out), out, "jsonl", schema, keep_deleted=True)
    before = storage.read_bytes(out)
    # ~12 MB of JSON lines: three parts of 5 MiB, 5 MiB and the rest
    write_part(parts_dir_of(out), rows([f"/lib/{'d' * 1000}/{i:05d}.wav" for i in range(10_000)]))  # type: ignore

    def drop_part_2(operation: str, request: Any) -> None:
        if operation == "UploadPart" and "partNumber=2" in request.url:
            raise EndpointConnectionError(endpoint_url=request.url.split("?")[0])

    secret_out = out.replace("s3://", "s3://raygenre-test:TOPSECRET@")  # moto takes any key
    with s3_requests(drop_part_2) as sent, pytest.raises(storage.StorageError) as err:
        consolidate(parts_dir_of(out), secret_out, "jsonl", schema, keep_deleted=True)
    message = str(err.value)
    assert message.startswith(f"{out}: the upload failed, the object there is unchanged: Could not connect")
    assert "\n" not in message and "TOPSECRET" not in message
    assert "CreateMultipartUpload" in sent and "AbortMultipartUpload" in sent
    assert "CompleteMultipartUpload" not in sent and "PutObject" not in sent and "CopyObject" not in sent
    assert storage.read_bytes(out) == before
    import boto3
    bucket, prefix = storage.resolve(out)[1].split("/", 1)
    assert boto3.client("s3").list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", []) == []
    assert [k for k in s3_keys(s3) if ".parts/" not in k] == ["labels.jsonl"]
    assert spool_fds(spool) == [] and list(spool.iterdir()) == []
    # the same output without the failure: the multipart upload completes, the new rows are there
    with s3_requests() as sent:
        consolidate(parts_dir_of(out), out, "jsonl", schema, keep_deleted=True)
    assert sent.count("UploadPart") == 3 and "CompleteMultipartUpload" in sent
    assert read_labels(out).num_rows == 10_001


def test_the_upload_reaches_the_endpoint_region_and_credentials_the_uri_names(s3: str, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``?endpoint_override=...&scheme=http`` and ``KEY:SECRET@`` reach boto3 as Arrow read them (no
    AWS_ENDPOINT_URL: only the URI names the moto server); an option boto3 would not honour is refused."""
    endpoint = os.environ["AWS_ENDPOINT_URL"].split("://", 1)[1]
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    query = f"?endpoint_override={endpoint}&scheme=http&region=us-east-1"
    uri = f"{s3.replace('s3://', 's3://AKIDTEST:TOPSECRET@')}/direct.bin{query}"
    data = os.urandom(3000)
    (tmp_path / "direct.bin").write_bytes(data)
    storage.upload_file_atomic(tmp_path / "direct.bin", uri)
    assert storage.read_bytes(uri) == data
    kwargs = storage.s3_client_kwargs(storage.resolve(uri)[0], uri)
    assert kwargs["endpoint_url"] == f"http://{endpoint}" and kwargs["region_name"] == "us-east-1"
    assert kwargs["aws_access_key_id"] == "AKIDTEST" and kwargs["aws_secret_access_key"] == "TOPSECRET"
    assert kwargs["config"].s3 == {"addressing_style": "path"}
    unverified = "s3://bucket/x?region=eu-west-1&endpoint_override=s3.example:9000&tls_verify_certificates=false"
    kwargs = storage.s3_client_kwargs(storage.resolve(unverified)[0], unverified)
    assert kwargs["verify"] is False and kwargs["region_name"] == "eu-west-1"
    assert kwargs["endpoint_url"] == "https://s3.example:9000"
    with pytest.raises(storage.StorageError, match="role_arn cannot be passed on to the upload"):
        storage.s3_client_kwargs(pafs.S3FileSystem(region="us-east-1", role_arn="arn:aws:iam::1:role/r"), s3)
    # nothing listens there: one line, no secret
    dead = f"{s3.replace('s3://', 's3://AKIDTEST:TOPSECRET@')}/x.bin?endpoint_override=127.0.0.1:1&scheme=http" \
           f"&region=us-east-1"
    with pytest.raises(storage.StorageError) as err:
        storage.upload_file_atomic(tmp_path / "direct.bin", dead)
    assert str(err.value).startswith(f"{storage.redact(dead)}: the upload failed, the object there is unchanged:")
    assert "TOPSECRET" not in str(err.value) and "\n" not in str(err.value)


# -------------------------------------------------------------------------------------- 4. path identity
def scan_all(lib: Path, parts: Path | None = None) -> list[dict]:
    return [r for k in range(SCAN_SHARDS)
            for b in scan_shard(str(lib), k, SCAN_SHARDS, EXTS, str(parts) if parts else None, model=MID)
            for r in b.to_pylist()]


def test_a_non_utf8_name_and_its_escaped_spelling_are_two_rows(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    (lib / "d").mkdir(parents=True)
    raw = os.fsencode(lib) + b"/bad\xffname.wav"
    literal = lib / "bad\\xffname.wav"  # backslash, x, f, f: a valid UTF-8 name
    with open(raw, "wb") as f:
        f.write(b"raw")
    literal.write_bytes(b"literal!")
    (lib / "d" / "good.wav").write_bytes(b"good")
    with open(os.fsencode(lib) + b"/d/back\\sla\xe9sh.wav", "wb") as f:  # both a backslash and a bad byte
        f.write(b"both")

    found = scan_all(lib)
    paths = sorted(r["path"] for r in found)
    assert len(paths) == 4 and len(set(paths)) == 4, paths
    assert str(literal) in paths and str(lib / "d" / "good.wav") in paths
    assert f"non-utf8:{lib}/bad\\xffname.wav" in paths and f"non-utf8:{lib}/d/back\\\\sla\\xe9sh.wav" in paths
    by_path = {r["path"]: r for r in found}
    assert by_path[str(literal)]["error"] is None and by_path[str(literal)]["size"] == 8
    assert "not valid UTF-8" in by_path[f"non-utf8:{lib}/bad\\xffname.wav"]["error"]
    for p in paths:
        assert os.fsencode(original_path(p)) in (raw, os.fsencode(literal), os.fsencode(lib / "d" / "good.wav"),
                                                 os.fsencode(lib) + b"/d/back\\sla\xe9sh.wav")
        assert on_disk(p)
    assert safe_str(str(literal)) == (str(literal), None)

    # resume: every row is found again (none labelled twice); consolidation keeps all four
    parts = tmp_path / "labels.parquet.parts"
    for r in found:
        write_part(parts, rows([r["path"]], size=r["size"], mtime=r["mtime"], error=r["error"]))
    assert scan_all(lib, parts) == []
    out = tmp_path / "labels.parquet"
    consolidate(str(parts), str(out), "parquet", output_schema(GENRES))
    assert sorted(pq.read_table(out).column("path").to_pylist()) == paths
    literal.unlink()  # gone: its row goes, the non-UTF-8 file's row stays
    assert not on_disk(str(literal)) and on_disk(f"non-utf8:{lib}/bad\\xffname.wav")
    consolidate(str(parts), str(out), "parquet", output_schema(GENRES))
    assert sorted(pq.read_table(out).column("path").to_pylist()) == [p for p in paths if p != str(literal)]


def _deep(lib: Path, limit: int) -> tuple[str, str, str]:
    """Folders nested until one more level passes PATH_MAX (made with dir_fd: no path is too long for that).
    Returns (the deepest listable folder, a file in it whose path is too long, a folder in it that is)."""
    fd = os.open(lib, os.O_RDONLY | os.O_DIRECTORY)
    path = str(lib)
    try:
        while len(os.fsencode(path)) + 1 + 200 < limit:
            name = "d" * 200
            os.mkdir(name, dir_fd=fd)
            new = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd, path = new, f"{path}/{name}"
        long_file = "f" * 220 + ".wav"
        os.close(os.open(long_file, os.O_WRONLY | os.O_CREAT, dir_fd=fd))
        os.mkdir("g" * 220, dir_fd=fd)
        inner = os.open("g" * 220, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(os.open("lost.wav", os.O_WRONLY | os.O_CREAT, dir_fd=inner))
        os.close(inner)
    finally:
        os.close(fd)
    return path, f"{path}/{long_file}", f"{path}/{'g' * 220}"


def test_paths_longer_than_path_max_get_error_rows(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "ok.wav").write_bytes(b"ok")
    limit = os.pathconf(lib, "PC_PATH_MAX")
    _, long_file, long_folder = _deep(lib, limit)
    assert len(os.fsencode(long_file)) >= limit and len(os.fsencode(long_folder)) >= limit
    found = {r["path"]: r for r in scan_all(lib)}
    assert set(found) == {str(lib / "ok.wav"), long_file, long_folder}
    assert "path too long" in found[long_file]["error"]
    assert found[long_folder]["error"].startswith("cannot list this folder: path too long")
    # resumed, they are not emitted again; consolidated, their error rows stay (they may well be there)
    parts = tmp_path / "labels.parquet.parts"
    write_part(parts, pa.concat_tables([rows([p], size=r["size"], mtime=r["mtime"], error=r["error"])
                                        for p, r in found.items()]))
    assert scan_all(lib, parts) == []
    out = tmp_path / "labels.parquet"
    consolidate(str(parts), str(out), "parquet", output_schema(GENRES))
    assert sorted(pq.read_table(out).column("path").to_pylist()) == sorted(found)


def test_a_folder_error_row_goes_once_the_folder_can_be_listed(tmp_path: Path) -> None:
    """A folder that could not be listed (an earlier run's row) and can be now: its row leaves the output and
    its files have rows; an error row of a file that is still there (empty.wav) stays."""
    lib = tmp_path / "lib"
    (lib / "locked").mkdir(parents=True)
    (lib / "locked" / "inside.wav").write_bytes(b"x")
    (lib / "empty.wav").write_bytes(b"")
    parts = tmp_path / "labels.parquet.parts"
    write_part(parts, pa.concat_tables([
        rows([str(lib / "locked")], size=0, mtime=0.0, error="cannot list this folder: Permission denied"),
        rows([str(lib / "empty.wav")], size=0, mtime=os.stat(lib / "empty.wav").st_mtime, error="empty file")]))
    found = scan_all(lib, parts)  # the folder is listable now: its file is new
    assert [r["path"] for r in found] == [str(lib / "locked" / "inside.wav")]
    write_part(parts, rows([str(lib / "locked" / "inside.wav")]))
    for keep_deleted in (False, True):
        out = tmp_path / "labels.csv"
        tally = consolidate(str(parts), str(out), "csv", output_schema(GENRES), keep_deleted=keep_deleted)
        got = pacsv.read_csv(out).column("path").to_pylist()
        assert sorted(got) == [str(lib / "empty.wav"), str(lib / "locked" / "inside.wav")]
        assert (tally.files, tally.errors) == (2, 1)
