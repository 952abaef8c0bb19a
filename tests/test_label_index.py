"""A resume with nothing to do: the done index lets it end after a walk of the library, without Ray, and
anything that changed (a file, the parts, the output, the settings) sends it down the full run instead."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO, tree_of, write_tone_track
from test_label import cfg, random_model

from raygenre.label import index
from raygenre.label.parts import parts_dir_of
from raygenre.label.pipeline import label_library


@pytest.fixture
def labelled(tmp_path: Path, ray_local: None) -> tuple[Path, str, Path]:
    """(library, model, out) after one full label run: nested folders, a file that is not audio."""
    lib = tmp_path / "lib"
    for i, name in enumerate(["a/x.wav", "a/b/y.wav", "c/z.wav", "top.wav"]):
        write_tone_track(lib / name, 3.5, seed=i)
    (lib / "c" / "broken.wav").write_bytes(b"RIFF not really")  # an error row, which counts as done too
    model = random_model(tmp_path / "model")
    out = tmp_path / "labels.parquet"
    first = label_library(str(lib), str(out), cfg(files_per_part=2), model_dir=model, progress=False)
    assert (first.files, first.new, first.errors) == (5, 5, 1)
    return lib, model, out


def _settings(lib: Path, model: str, out: Path, **over: object) -> tuple[dict, frozenset[str]]:
    """What label_library passes to index.unchanged, read back from the index it wrote."""
    meta = index.json.loads(pq.read_schema(Path(parts_dir_of(str(out))) / index.INDEX_FILE).metadata[index._META])
    settings = {**meta["settings"], **over}
    return settings, frozenset(settings["extensions"])


def test_a_resume_with_nothing_to_do_starts_no_ray_and_touches_nothing(labelled: tuple[Path, str, Path]) -> None:
    lib, model, out = labelled
    before = tree_of(out.parent)
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9"}  # nothing listens there: a Ray start would fail
    cmd = [sys.executable, "-m", "raygenre.cli", "label", str(lib), "--model", model, "--out", str(out)]
    t0 = time.monotonic()
    run = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr  # 1: the output holds an error row (the broken file)
    said = " ".join(run.stdout.split())  # the console wraps long lines
    assert "Nothing to label" in said and "5 rows, 1 with errors" in said, run.stdout
    assert time.monotonic() - t0 < 60  # (not a speed check: a Ray connect attempt would hang far longer)
    assert tree_of(out.parent) == before  # the output, its parts and the index: byte for byte


def test_every_kind_of_change_is_seen(labelled: tuple[Path, str, Path]) -> None:
    lib, model, out = labelled
    parts = parts_dir_of(str(out))
    settings, exts = _settings(lib, model, out)
    root = settings["run"]["library"]
    assert index.unchanged(parts, str(out), settings, root, exts) is not None

    other = dataclasses.replace(cfg(), format="csv")
    assert index.unchanged(parts, str(out), {**settings, "format": other.format}, root, exts) is None
    assert index.unchanged(parts, str(out), {**settings, "keep_deleted": True}, root, exts) is None

    changed = lib / "a" / "x.wav"
    st = changed.stat()
    os.utime(changed, (st.st_atime, st.st_mtime + 5))
    assert index.unchanged(parts, str(out), settings, root, exts) is None  # a changed file
    os.utime(changed, (st.st_atime, st.st_mtime))
    assert index.unchanged(parts, str(out), settings, root, exts) is not None

    write_tone_track(lib / "a" / "b" / "new.wav", 3.5, seed=9)
    assert index.unchanged(parts, str(out), settings, root, exts) is None  # a new file
    (lib / "a" / "b" / "new.wav").unlink()
    (lib / "top.wav").rename(lib.parent / "moved-away.wav")
    assert index.unchanged(parts, str(out), settings, root, exts) is None  # a deleted file
    (lib.parent / "moved-away.wav").rename(lib / "top.wav")

    run_file = Path(parts) / "run.json"
    recorded = run_file.read_bytes()
    run_file.unlink()
    assert index.unchanged(parts, str(out), settings, root, exts) is None  # a lost run.json: the full run rebuilds
    run_file.write_bytes(recorded)
    assert index.unchanged(parts, str(out), settings, root, exts) is not None

    out.write_bytes(out.read_bytes())  # the same bytes, rewritten by someone else: not raygenre's output any more
    assert index.unchanged(parts, str(out), settings, root, exts) is None


def test_a_change_after_a_no_op_is_labelled_exactly_once(labelled: tuple[Path, str, Path]) -> None:
    lib, model, out = labelled
    again = label_library(str(lib), str(out), cfg(files_per_part=2), model_dir=model, progress=False)
    assert (again.files, again.new) == (5, 0)
    (lib / "a" / "b" / "y.wav").unlink()
    write_tone_track(lib / "c" / "w.wav", 3.5, seed=7)
    after = label_library(str(lib), str(out), cfg(files_per_part=2), model_dir=model, progress=False)
    paths = sorted(pq.read_table(out).column("path").to_pylist())
    assert paths == sorted(str(lib / n) for n in ["a/x.wav", "c/z.wav", "c/broken.wav", "top.wav", "c/w.wav"])
    assert (after.files, after.new) == (5, 1)
    last = label_library(str(lib), str(out), cfg(files_per_part=2), model_dir=model, progress=False)
    assert (last.files, last.new, last.errors) == (5, 0, 1)


def test_a_new_threshold_rewrites_the_output_without_ray_or_relabelling(labelled: tuple[Path, str, Path]) -> None:
    lib, model, out = labelled
    parts = Path(parts_dir_of(str(out)))
    before = {p.name: p.read_bytes() for p in parts.glob("part-*.parquet")}
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9"}  # nothing listens there: a Ray start would fail
    cmd = [sys.executable, "-m", "raygenre.cli", "label", str(lib), "--model", model, "--out", str(out),
           "--min-confidence", "1"]
    run = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr  # the broken file's error row
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 5
    assert all(r["genre"] == "unknown" for r in rows if r["error"] is None)  # a mean of softmaxes is never 1
    assert all(r["top_genre"] is not None for r in rows if r["error"] is None)  # the guess is kept
    assert {p.name: p.read_bytes() for p in parts.glob("part-*.parquet")} == before  # nothing relabelled
    back = label_library(str(lib), str(out), cfg(files_per_part=2, min_confidence=0.0), model_dir=model,
                         progress=False)
    assert (back.files, back.new) == (5, 0)
    assert [r["genre"] for r in pq.read_table(out).to_pylist()] == [r["top_genre"] for r in rows]


def test_a_resume_across_a_compaction_labels_only_what_changed(tmp_path: Path, ray_local: None,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from raygenre.label import parts as parts_mod
    from raygenre.label.parts import list_parts

    monkeypatch.setattr(parts_mod, "COMPACT_PARTS", 4)  # consolidation runs here, in the driver: 64 would be slow
    lib = tmp_path / "lib"
    names = [f"d{i % 3}/t{i:02d}.wav" for i in range(6)]
    for i, name in enumerate(names):
        write_tone_track(lib / name, 3.1, seed=i)
    model = random_model(tmp_path / "model")
    out = tmp_path / "labels.parquet"
    first = label_library(str(lib), str(out), cfg(files_per_part=1), model_dir=model, progress=False)
    assert (first.files, first.new) == (len(names), len(names))
    parts = parts_dir_of(str(out))
    assert len(list_parts(parts)) == 1  # one part per file, merged into one at the end
    rows = {r["path"]: r for r in pq.read_table(out).to_pylist()}
    write_tone_track(lib / "d1" / "new.wav", 3.1, seed=99)
    (lib / names[0]).unlink()
    again = label_library(str(lib), str(out), cfg(files_per_part=1), model_dir=model, progress=False)
    assert (again.files, again.new) == (len(names), 1)  # only the new file: the merged part counts as done
    after = {r["path"]: r for r in pq.read_table(out).to_pylist()}
    assert set(after) == (set(rows) - {str(lib / names[0])}) | {str(lib / "d1" / "new.wav")}
    assert all(after[p] == rows[p] for p in after if p in rows)  # the other rows, unchanged
