"""``raygenre.workflow`` pieces that need no Ray: the demo's agreement score and its rendering."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq

from raygenre import report
from raygenre.workflow import agreement


def test_agreement_scores_labelled_files_against_the_generator(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    rows = {"path": [str(lib / "a" / "1.wav"), str(lib / "b.flac"), str(lib / "bad.mp3"), "c.ogg"],
            "genre": ["jazz", "unknown", None, "unknown"], "top_genre": ["jazz", "rock", None, "pop"],
            "error": [None, None, "corrupt", None]}
    pq.write_table(pa.table(rows), tmp_path / "labels.parquet")
    truth = {"a/1.wav": "jazz", "b.flac": "blues", "bad.mp3": "pop", "c.ogg": "pop"}
    assert agreement(str(tmp_path / "labels.parquet"), lib, truth) == (2 / 3, 3)  # the best guesses; errors unscored
    assert agreement(str(tmp_path / "labels.parquet"), lib, {}) is None


def test_every_demo_step_renders(capsys) -> None:
    made = SimpleNamespace(files=[1, 2, 3], genres={"x": "jazz"}, bad={"y": "empty"})
    report.demo_step("rule", "1/3 featurize")
    report.demo_step("library", (Path("/lib"), made))
    report.demo_step("agreement", (0.5, 2))
    report.demo_step("done", Path("/models/best"))
    out = capsys.readouterr().out
    assert "1/3 featurize" in out and "3 files: 1 songs + 1 broken on purpose" in out
    assert "agreement with the generator's genres: 50.0% of 2 files" in out and "/models/best" in out
