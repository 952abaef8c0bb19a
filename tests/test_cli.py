"""The CLI's help: every default it shows is read from the packaged configs (a default lives in one place)."""

from __future__ import annotations

import re

import pytest
from conftest import REPO
from typer.testing import CliRunner

from raygenre.cli import app
from raygenre.config import LabelConfig, SynthConfig, TrainConfig, TuneConfig, load_config


def _help(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "400", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # one line: the table wraps long help texts


@pytest.mark.parametrize(("command", "shown"), [
    ("label", lambda: f"Files per model batch (default: {load_config(LabelConfig).batch_size})"),
    ("label", lambda: f"averages their probabilities (default: {load_config(LabelConfig).segments_per_track})"),
    ("train", lambda: f"(default: {load_config(TrainConfig).epochs}"),
    ("tune", lambda: f"Trials per model (default: {load_config(TuneConfig).num_samples})"),
    ("tune", lambda: f"(default: {load_config(TuneConfig).max_epochs};"),
    ("synth", lambda: f"Tracks per genre (default: {load_config(SynthConfig).tracks_per_genre})"),
])
def test_help_shows_the_packaged_defaults(command: str, shown) -> None:
    assert shown() in _help(command)


def test_no_default_value_is_written_into_a_help_string() -> None:
    """Help strings quote config values (f-strings over the loaded configs), never a literal number."""
    literal = re.findall(r"default: \d[^\"]*", (REPO / "raygenre" / "cli.py").read_text())
    assert literal == []


def test_label_help_teaches_its_exit_codes_and_output_columns() -> None:
    text = _help("label")
    for words in ("p_<genre>", "3 the run stopped early", "--keep-deleted", "--no-resume"):
        assert words in text
