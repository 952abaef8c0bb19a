"""``label_files`` (the beets plugin's one call) and ``scan.stat_files``, the scan rows it starts from (pure: no
Ray); ``label_files`` runs on the session's local Ray."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import write_tone_track
from test_label import GENRES, F, cfg, loudness_model, random_model

from raygenre.data.mfcc import MfccExtractor
from raygenre.label.pipeline import label_files
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


def test_label_files_labels_the_list_in_order_with_error_rows(ray_local: None, tmp_path: Path) -> None:
    """Loud and quiet files through a model that thresholds loudness: exact genres, in the order given, a row for a
    missing and a too-short file, and min_confidence applied as `label` applies it."""
    loud = write_tone_track(tmp_path / "x" / "loud.wav", 4.0, seed=1)[:, 0]
    (tmp_path / "y").mkdir()
    sf.write(tmp_path / "y" / "quiet.wav", loud * 0.01, F.sample_rate)
    write_tone_track(tmp_path / "short.wav", 1.0, seed=2)
    ex = MfccExtractor(F)
    c0 = [ex(y[: F.segment_samples].astype(np.float32))[0, :, 0].mean() for y in (loud, loud * 0.01)]
    model = loudness_model(tmp_path / "model", threshold=float(np.mean(c0)))
    paths = [str(tmp_path / p) for p in ("y/quiet.wav", "missing.wav", "x/loud.wav", "short.wav")]

    rows = label_files(paths, cfg(segments_per_track=2), model_dir=model, progress=False).to_pylist()
    assert [r["path"] for r in rows] == paths
    assert [r["genre"] for r in rows] == ["quiet", None, "loud", None]
    assert rows[1]["error"] == "file not found" and rows[3]["error"].startswith("too short")
    assert rows[0]["confidence"] > 0.99 and rows[0]["model"]

    # The seeded untrained model is far from sure (top probability ~0.4 of 3 genres): below 0.9, so "unknown".
    untrained = random_model(tmp_path / "untrained")
    unsure = label_files(paths[:1], cfg(segments_per_track=2, min_confidence=0.9), model_dir=untrained,
                         progress=False).to_pylist()
    assert unsure[0]["genre"] == "unknown" and unsure[0]["top_genre"] in GENRES and unsure[0]["confidence"] < 0.9
