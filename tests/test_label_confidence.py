"""`raygenre label --min-confidence` (issue #22): "unknown" when unsure, the best guess kept in ``top_genre``.

Pure: parts.py driven directly (no Ray), plus the CLI's refusal of a bad value before any work. The threshold is
applied when the parts are consolidated, so changing it relabels nothing: the parts always hold the best guess.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_label_safety import GENRES, MID, rows, run_of, write_part
from typer.testing import CliRunner

from raygenre.cli import app
from raygenre.label.parts import (
    OTHER_DIR,
    UNKNOWN,
    check_label_output,
    consolidate,
    is_label_output,
    list_parts,
    output_schema,
    prepare_parts,
    with_threshold,
)


def scored(paths: list[str], confidences: list[float | None]) -> pa.Table:
    """Rows for ``paths`` whose best guess is ``jazz`` with the given confidence (None: an error row)."""
    table = rows(paths).to_pylist()
    for row, c in zip(table, confidences, strict=True):
        if c is None:
            row.update(genre=None, top_genre=None, confidence=None, error="not audio", segments_used=0,
                       **{f"p_{g}": None for g in GENRES})
        else:
            rest = (1 - c) / (len(GENRES) - 1)
            row.update(genre="jazz", top_genre="jazz", confidence=c,
                       **{f"p_{g}": (c if g == "jazz" else rest) for g in GENRES})
    return pa.Table.from_pylist(table, schema=output_schema(GENRES))


def test_below_the_threshold_is_unknown_and_the_guess_and_probabilities_stay() -> None:
    table = scored(["/a", "/b", "/c", "/d"], [0.9, 0.5, 0.49, None])
    out = with_threshold(table, 0.5).to_pylist()
    assert [r["genre"] for r in out] == ["jazz", "jazz", UNKNOWN, None]  # 0.5 is kept: "below" is strict
    assert [r["top_genre"] for r in out] == ["jazz", "jazz", "jazz", None]
    for before, after in zip(table.to_pylist(), out, strict=True):  # nothing else changes
        assert {k: v for k, v in before.items() if k != "genre"} == {k: v for k, v in after.items() if k != "genre"}
    assert with_threshold(table, 0.0).equals(table)  # 0 keeps today's behaviour
    assert with_threshold(table, 1.0).column("genre").to_pylist() == [UNKNOWN, UNKNOWN, UNKNOWN, None]


def test_consolidate_applies_it_and_a_new_threshold_relabels_nothing(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    paths = [str(lib / f"{n}.wav") for n in "abc"]
    for p in paths:
        Path(p).write_bytes(b"x")
    parts = tmp_path / "labels.parquet.parts"
    prepare_parts(str(parts), run_of(lib), resume=True)
    write_part(parts, scored(paths, [0.95, 0.6, None]))
    before = {p: Path(p).read_bytes() for p in list_parts(str(parts))}
    out = tmp_path / "labels.parquet"
    for threshold, genres, unknown in ((0.0, ["jazz", "jazz", None], 0), (0.7, ["jazz", UNKNOWN, None], 1)):
        tally = consolidate(str(parts), str(out), "parquet", output_schema(GENRES), model=MID,
                            min_confidence=threshold)
        table = pq.read_table(out).sort_by("path")
        assert table.column("genre").to_pylist() == genres
        assert table.column("top_genre").to_pylist() == ["jazz", "jazz", None]
        assert tally.genres[UNKNOWN] == unknown and tally.errors == 1
    assert {p: Path(p).read_bytes() for p in list_parts(str(parts))} == before  # the parts keep the best guess


def _legacy(table: pa.Table) -> pa.Table:
    """``table`` as a raygenre before ``top_genre`` wrote it."""
    return table.drop_columns(["top_genre"])


def test_an_earlier_raygenres_output_is_still_recognised_and_replaced(tmp_path: Path) -> None:
    out = tmp_path / "labels.parquet"
    pq.write_table(_legacy(scored(["/a"], [0.9])), out)
    assert is_label_output(str(out))
    check_label_output(str(out), overwrite=False)  # a rerun may replace it without --overwrite
    other = tmp_path / "other.parquet"  # a table that only looks similar is still not raygenre's
    pq.write_table(_legacy(scored(["/a"], [0.9])).drop_columns(["mtime"]), other)
    assert not is_label_output(str(other))


def test_an_earlier_raygenres_parts_are_set_aside_never_merged(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "a.wav").write_bytes(b"x")
    parts = tmp_path / "labels.parquet.parts"
    prepare_parts(str(parts), run_of(lib), resume=True)
    old = parts / "part-000000-0123abcd.parquet"
    pq.write_table(_legacy(scored([str(lib / "a.wav")], [0.9])), old)
    data = old.read_bytes()
    state = prepare_parts(str(parts), run_of(lib), resume=True)
    assert any("earlier raygenre" in s for s in state.set_aside.other)
    assert (parts / OTHER_DIR / old.name).read_bytes() == data  # kept whole, never merged
    assert list_parts(str(parts)) == []


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan"])
def test_cli_refuses_a_threshold_outside_0_1_in_one_line(tmp_path: Path, value: str) -> None:
    result = CliRunner().invoke(app, ["label", str(tmp_path), "--min-confidence", value,
                                      "--address", "127.0.0.1:1"])  # a dead address: it must fail before Ray
    assert result.exit_code == 2, result.output
    assert "min_confidence" in result.output and "Traceback" not in result.output
