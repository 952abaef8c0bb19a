"""``raygenre.config``: the strict loader, and every config mistake as one line with exit 2 on the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from raygenre.cli import app
from raygenre.config import ConfigError, TrainConfig, load_config


def test_defaults_and_overrides() -> None:
    cfg = load_config(TrainConfig, overrides={"model": "ann", "lr": 1, "hidden": None})
    assert isinstance(cfg, TrainConfig) and cfg.model == "ann"
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)  # an int where a float is expected is fine
    assert cfg.hidden is None  # None means "not given": the YAML's value (null) stays


@pytest.mark.parametrize(("text", "words"), [
    ("epochs: [1, 2\n", "not valid YAML at line 2"),
    ("- epochs: 3\n", "expected settings as `key: value` lines, got a list"),
    ("epochz: 3\n", "unknown key(s) ['epochz']"),
    ("epochs: three\n", "train.epochs: expected int, got 'three'"),
    ("gpu: 1\n", "train.gpu: expected true/false"),
])
def test_user_file_mistakes_are_config_errors(tmp_path: Path, text: str, words: str) -> None:
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, tmp_path / "c.yaml")
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(TrainConfig, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(TrainConfig, tmp_path)
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(TrainConfig, tmp_path / "empty.yaml") == load_config(TrainConfig)


@pytest.mark.parametrize("args", [
    ["train", "--config", "{folder}"],
    ["train", "--config", "{bad}"],
    ["tune", "--config", "{bad}"],
    ["label", "{folder}", "--format", "xml"],
    ["synth", "{folder}/out", "--difficulty", "medium", "--tracks-per-genre", "1"],
])
def test_cli_says_one_line_and_exits_2(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "bad.yaml").write_text("epochs: [1, 2\n")
    argv = [a.format(folder=tmp_path, bad=tmp_path / "bad.yaml") for a in args]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output


def test_configs_are_package_data_and_typed_by_class() -> None:
    from raygenre.config import SECTIONS, default_file, section_of

    for name, cls in SECTIONS.items():
        assert default_file(name).is_file() and section_of(cls) == name
        assert isinstance(load_config(cls), cls) and load_config(name) == load_config(cls)
    with pytest.raises(ConfigError, match="unknown config section"):
        load_config("trian")


def test_tune_nests_the_trials_train_config(tmp_path: Path) -> None:
    """TuneConfig.train starts from train.yaml's defaults (no copy in tune.yaml); a tune file may override it."""
    from raygenre.config import TuneConfig

    tune = load_config(TuneConfig)
    assert tune.train == load_config(TrainConfig)
    (tmp_path / "t.yaml").write_text("num_samples: 1\ntrain:\n  patience: 3\n")
    custom = load_config(TuneConfig, tmp_path / "t.yaml", {"max_epochs": 4})
    assert (custom.num_samples, custom.max_epochs, custom.train.patience) == (1, 4, 3)
    assert custom.train.min_epochs == tune.train.min_epochs  # the rest stays train.yaml's
    (tmp_path / "bad.yaml").write_text("train:\n  patiense: 3\n")
    with pytest.raises(ConfigError, match=r"tune.train: unknown key\(s\) \['patiense'\]"):
        load_config(TuneConfig, tmp_path / "bad.yaml")
