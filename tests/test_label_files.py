"""``scan.stat_files``: the scan rows ``label_files`` (the beets plugin's call) starts from. Pure: no Ray."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import write_tone_track

from raygenre.label.scan import SCAN_SCHEMA, stat_files


def test_stat_files_rows_in_order_deduplicated_with_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = tmp_path / "b.wav"
    write_tone_track(good, 1.0)
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    dangling = tmp_path / "gone.wav"
    dangling.symlink_to(tmp_path / "nowhere.wav")
    monkeypatch.chdir(tmp_path)  # a relative path is made absolute, from the working folder
    table = stat_files(["b.wav", str(tmp_path / "missing.mp3"), str(tmp_path), str(fifo), str(dangling), str(good)])
    assert table.schema == SCAN_SCHEMA
    rows = table.to_pylist()
    assert [r["path"] for r in rows] == [str(good), str(tmp_path / "missing.mp3"), str(tmp_path), str(fifo),
                                        str(dangling)]  # good.wav given twice: one row, where it came first
    st = good.stat()
    assert rows[0] == {"path": str(good), "size": st.st_size, "mtime": st.st_mtime, "error": None, "replaces": False}
    assert [r["error"] for r in rows[1:]] == ["file not found", "a folder, not an audio file",
                                              "not a regular file (a pipe, socket or device)",
                                              "broken symbolic link: its target does not exist"]


def test_stat_files_non_utf8_name_is_an_error_row(tmp_path: Path) -> None:
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.wav")
    with open(raw, "wb") as f:
        f.write(b"RIFF")
    (row,) = stat_files([os.fsdecode(raw)]).to_pylist()
    assert row["path"].startswith("non-utf8:") and row["error"]
