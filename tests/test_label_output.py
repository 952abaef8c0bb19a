"""The consolidated label output is compact (issue #21): many small parts become a few large row groups, with
exactly the rows the parts hold. Pure: parts.py driven directly (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_label_safety import GENRES, MID, rows, run_of, write_part

from raygenre.label import parts as parts_mod
from raygenre.label.parts import consolidate, list_parts, output_schema, prepare_parts, read_labels


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_many_small_parts_become_few_row_groups_with_every_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              fmt: str) -> None:
    monkeypatch.setattr(parts_mod, "OUTPUT_ROW_GROUP", 25)  # the real size (262,144) would take 10^6 rows here
    lib = tmp_path / "lib"
    lib.mkdir()
    paths = [str(lib / f"{i:03d}.wav") for i in range(60)]
    for p in paths:
        Path(p).write_bytes(b"x")
    folder = tmp_path / f"labels.{fmt}.parts"
    prepare_parts(str(folder), run_of(lib), resume=True)
    for i in range(0, 60, 4):  # 15 parts of 4 rows
        write_part(folder, rows(paths[i:i + 4]))
    out = tmp_path / f"labels.{fmt}"
    tally = consolidate(str(folder), str(out), fmt, output_schema(GENRES), model=MID)
    assert tally.files == 60
    assert read_labels(str(out)).sort_by("path").to_pylist() == rows(paths).to_pylist()
    if fmt == "parquet":
        sizes = [pq.ParquetFile(out).metadata.row_group(i).num_rows for i in range(pq.ParquetFile(out).num_row_groups)]
        assert sizes == [28, 28, 4]  # parts are whole: a group closes at the first part past 25 rows


def _library(tmp_path: Path, n: int) -> tuple[Path, list[str]]:
    lib = tmp_path / "lib"
    lib.mkdir()
    paths = [str(lib / f"{i:03d}.wav") for i in range(n)]
    for p in paths:
        Path(p).write_bytes(b"x")
    return lib, paths


def test_many_parts_are_merged_into_one_with_the_newest_row_of_each_path(tmp_path: Path) -> None:
    lib, paths = _library(tmp_path, 70)
    folder = tmp_path / "labels.parquet.parts"
    prepare_parts(str(folder), run_of(lib), resume=True)
    write_part(folder, rows(paths[:5], mtime=1.0))  # an old run's rows of five files, labelled again below
    for p in paths:  # one part per file: 71 parts in all
        write_part(folder, rows([p], mtime=2.0))
    gone = lib / "000.wav"
    gone.unlink()  # dropped from the output, but its row stays in the merged part (--keep-deleted wants it)
    out = tmp_path / "labels.parquet"
    tally = consolidate(str(folder), str(out), "parquet", output_schema(GENRES), model=MID)
    assert tally.files == 69
    (merged,) = list_parts(str(folder))
    assert pq.read_table(merged).to_pylist() == rows(paths, mtime=2.0).to_pylist()  # newest rows only, all paths
    assert read_labels(str(out)).to_pylist() == rows(paths[1:], mtime=2.0).to_pylist()
    again = tmp_path / "again.parquet"
    consolidate(str(folder), str(again), "parquet", output_schema(GENRES), model=MID, keep_deleted=True)
    assert read_labels(str(again)).to_pylist() == rows(paths, mtime=2.0).to_pylist()
    later = write_part(folder, rows([paths[3]], mtime=3.0))  # a later run's part still wins over the merged one
    consolidate(str(folder), str(again), "parquet", output_schema(GENRES), model=MID)
    assert {r["path"]: r["mtime"] for r in read_labels(str(again)).to_pylist()}[paths[3]] == 3.0
    assert list_parts(str(folder)) == [merged, str(later)]


def test_a_crash_between_the_merged_part_and_the_deletes_changes_no_row(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    lib, paths = _library(tmp_path, 66)
    folder = tmp_path / "labels.parquet.parts"
    prepare_parts(str(folder), run_of(lib), resume=True)
    write_part(folder, rows(paths[:3], mtime=1.0))
    for p in paths:
        write_part(folder, rows([p], mtime=2.0))
    before = sorted(list_parts(str(folder)))

    def crash(path: str, parts_dir: str) -> None:
        raise KeyboardInterrupt  # the merged part is published; no old part is deleted yet

    monkeypatch.setattr(parts_mod, "_remove_part", crash)
    with pytest.raises(KeyboardInterrupt):
        consolidate(str(folder), str(tmp_path / "first.parquet"), "parquet", output_schema(GENRES), model=MID)
    monkeypatch.undo()
    assert len(list_parts(str(folder))) == len(before) + 1  # the merged part beside every old one
    out = tmp_path / "labels.parquet"
    consolidate(str(folder), str(out), "parquet", output_schema(GENRES), model=MID)
    assert read_labels(str(out)).sort_by("path").to_pylist() == rows(paths, mtime=2.0).to_pylist()
    assert len(list_parts(str(folder))) == 1
