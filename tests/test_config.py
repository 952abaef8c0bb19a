"""``raygenre.config``: the strict loader, and every config mistake as one line with exit 2 on the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def _cli_error(tmp_path: Path, args: list[str], bad_yaml: str) -> tuple[Any, list[str]]:
    """Run the CLI in-process with ``{folder}``/``{bad}`` filled in (``bad.yaml`` holds ``bad_yaml``); assert it
    exits 2; return the result and its non-empty output lines."""
    (tmp_path / "bad.yaml").write_text(bad_yaml)
    argv = [a.format(folder=tmp_path, bad=tmp_path / "bad.yaml") for a in args]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    return result, [line for line in result.output.splitlines() if line.strip()]


@pytest.mark.parametrize("args", [
    ["train", "--config", "{folder}"],
    ["train", "--config", "{bad}"],
    ["tune", "--config", "{bad}"],
    ["label", "{folder}", "--format", "xml"],
    ["train", "--workers", "two"],
    ["synth", "{folder}/out", "--difficulty", "medium", "--tracks-per-genre", "1"],
])
def test_cli_says_one_line_and_exits_2(tmp_path: Path, args: list[str]) -> None:
    result, lines = _cli_error(tmp_path, args, "epochs: [1, 2\n")
    assert result.exception is None or isinstance(result.exception, SystemExit)
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


# ------------------------------------------------------------------------------------------- ranges (issue 19)
# (section, user file, the key the one-line error must name, words it must hold). The first block is the issue's.
BAD_VALUES = [
    ("train", "epochs: -5", "train.epochs", "-5: must be >= 1"),
    ("train", "workers: 0", "train.workers", "must be in [1, 1024]"),
    ("train", "lr: .nan", "train.lr", "must be a finite number"),
    ("train", "lr: .inf", "train.lr", "must be a finite number"),
    ("train", "lr: -.inf", "train.lr", "must be a finite number"),
    ("train", "dropout: 5", "train.dropout", "must be in [0, 1)"),
    ("featurize", "features: {hop_length: 0}", "featurize.features.hop_length", "must be >= 1"),
    ("label", "segments_per_track: 0", "label.segments_per_track", "must be in [1, "),
    ("label", "decode_timeout_s: -1", "label.decode_timeout_s", "must be in [0, "),
    ("featurize", "decode_timeout_s: -1", "featurize.decode_timeout_s", "must be in [0, "),
    ("label", "actor_restarts: -9", "label.actor_restarts", "must be in [0, "),
    ("featurize", "split: {train: 5, val: -4, test: 0}", "featurize.split.train", "must be in [0, 1]"),
    ("featurize", "split: {train: 0.5, val: -0.5, test: 1}", "featurize.split.val", "must be in [0, 1]"),
    ("featurize", "split: {train: 0.5, val: 0.4, test: 0.0}", "featurize.split", "must sum to 1"),
    # every other kind of rule
    ("train", "lr: -0.001", "train.lr", "must be in [0, 1]"),
    ("train", "lr: 2", "train.lr", "must be in [0, 1]"),
    ("train", "batch_size: 0", "train.batch_size", "must be in [1, "),
    ("train", "model: bert", "train.model", "unknown model 'bert': must be one of ann, cnn, lstm"),
    ("train", "hidden: 3000000", "train.hidden", "must be in [1, 16384]"),
    ("train", "weight_decay: -0.1", "train.weight_decay", "must be in [0, 1]"),
    ("train", "bn_momentum: 1.5", "train.bn_momentum", "must be in [0, 1]"),
    ("train", "patience: -1", "train.patience", "must be >= 0"),
    ("train", "min_epochs: -1", "train.min_epochs", "must be >= 0"),
    ("train", "max_failures: -1", "train.max_failures", "must be in [0, "),
    ("train", "seed: -1", "train.seed", "must be in [0, 4294967295]"),
    ("train", "epochs: 1e2", "train.epochs", "expected int, got '1e2'"),  # float spellings only for floats
    ("featurize", "features: {n_fft: 256}", "featurize.features.hop_length", "must be <= n_fft (256)"),
    ("featurize", "features: {n_mfcc: 200}", "featurize.features.n_mfcc", "must be <= n_mels (128)"),
    ("featurize", "features: {n_mels: 2000}", "featurize.features.n_mels", "must be <= n_fft // 2 + 1 (1025"),
    ("featurize", "features: {sample_rate: 10}", "featurize.features.sample_rate", "must be in [1000, "),
    ("featurize", "features: {segment_seconds: 0}", "featurize.features.segment_seconds", "must be in (0, 600]"),
    ("featurize", "features: {segment_seconds: 0.01}", "featurize.features.segment_seconds", "one STFT window"),
    ("featurize", "segments: 0", "featurize.segments", "must be in [1, "),
    ("featurize", "tracks_per_batch: 0", "featurize.tracks_per_batch", "must be in [1, "),
    ("featurize", "split: {method: random}", "featurize.split.method", "must be one of stratified, lists"),
    ("featurize", "split: {method: lists}", "featurize.split.lists_dir", "needs the folder"),
    ("featurize", "split: {lists_dir: ''}", "featurize.split.lists_dir", "must be a folder path"),
    ("synth", "tracks_per_genre: 0", "synth.tracks_per_genre", "must be in [1, "),
    ("synth", "seconds: -1", "synth.seconds", "must be in (0, "),
    ("synth", "sample_rate: 0", "synth.sample_rate", "must be in [1000, "),
    ("synth", "difficulty: medium", "synth.difficulty", "must be one of easy, hard"),
    ("label", "format: xml", "label.format", "must be one of parquet, csv, jsonl"),
    ("label", "batch_size: 0", "label.batch_size", "must be in [1, "),
    ("label", "files_per_part: 0", "label.files_per_part", "must be in [1, "),
    ("label", "actors: -1", "label.actors", "must be in [0, "),
    ("label", "extensions: []", "label.extensions", "must be a list of at least 1"),
    ("label", "extensions: [wav, '.']", "label.extensions[1]", "must be a file extension"),
    ("label", "extensions: [wav, ../x]", "label.extensions[1]", "(no '/')"),
    ("label", "extensions: [wav, wav]", "label.extensions[1]", "listed twice"),
    ("tune", "num_samples: 0", "tune.num_samples", "must be in [1, "),
    ("tune", "max_epochs: 0", "tune.max_epochs", "must be >= 1"),
    ("tune", "workers_per_trial: 0", "tune.workers_per_trial", "must be in [1, "),
    ("tune", "gpus_per_trial: -1", "tune.gpus_per_trial", "must be in [0, "),
    ("tune", "max_concurrent: -1", "tune.max_concurrent", "must be >= 0"),
    ("tune", "grace_period: 0", "tune.grace_period", "must be >= 1"),
    ("tune", "reduction_factor: 1", "tune.reduction_factor", "must be >= 2"),
    ("tune", "search_alg: grid", "tune.search_alg", "must be one of random, optuna, hyperopt"),
    ("tune", "models: []", "tune.models", "must be a list of at least 1"),
    ("tune", "models: [ann, bert]", "tune.models[1]", "must be one of ann, cnn, lstm"),
    ("tune", "models: [ann, ann]", "tune.models[1]", "listed twice"),
    ("tune", "train: {epochs: -5}", "tune.train.epochs", "must be >= 1"),
    ("tune", "train: {dropout: 1}", "tune.train.dropout", "must be in [0, 1)"),
    ("tune", "workers_per_trial: 64", "tune.train.batch_size", "must be >= workers_per_trial (64)"),
    ("tune", "search_spaces: {bert: {}}", "tune.search_spaces.bert", "must be one of ann, cnn, lstm"),
    ("tune", "search_spaces: {ann: []}", "tune.search_spaces.ann", "expected a mapping"),
    ("tune", "search_spaces: {ann: {epochs: {type: choice, values: [1]}}}", "tune.search_spaces.ann.epochs",
     "searchable: lr, batch_size, dropout, weight_decay, hidden"),
    ("tune", "search_spaces: {ann: {lr: 0.1}}", "tune.search_spaces.ann.lr", "expected {type: "),
    ("tune", "search_spaces: {ann: {lr: {type: normal, low: 0, high: 1}}}", "tune.search_spaces.ann.lr.type",
     "must be one of loguniform, uniform, randint, choice"),
    ("tune", "search_spaces: {ann: {lr: {type: loguniform, low: 0, high: 0.1}}}", "tune.search_spaces.ann.lr.low",
     "must be > 0 (a log-uniform range)"),
    ("tune", "search_spaces: {ann: {lr: {type: loguniform, low: 0.01, high: 0.001}}}", "tune.search_spaces.ann.lr",
     "low 0.01 must be below high 0.001"),
    ("tune", "search_spaces: {ann: {lr: {type: loguniform, low: 1e-4, hihg: 1e-2}}}", "tune.search_spaces.ann.lr",
     "takes exactly the keys type, low, high"),
    ("tune", "search_spaces: {ann: {dropout: {type: uniform, low: 0.1, high: 1.5}}}",
     "tune.search_spaces.ann.dropout.high", "must be in [0, 1)"),
    ("tune", "search_spaces: {ann: {dropout: {type: uniform, low: 0.3, high: 0.3}}}", "tune.search_spaces.ann.dropout",
     "must be below high"),
    ("tune", "search_spaces: {ann: {hidden: {type: choice, values: []}}}", "tune.search_spaces.ann.hidden.values",
     "must be a non-empty list"),
    ("tune", "search_spaces: {ann: {hidden: {type: choice, values: [64, 0]}}}",
     "tune.search_spaces.ann.hidden.values[1]", "must be in [1, 16384]"),
    ("tune", "search_spaces: {ann: {hidden: {type: choice, values: [64, null]}}}",
     "tune.search_spaces.ann.hidden.values[1]", "expected int, got None"),
    ("tune", "search_spaces: {ann: {hidden: {type: uniform, low: 8, high: 64}}}", "tune.search_spaces.ann.hidden.type",
     "hidden is an integer: use randint or choice"),
    ("tune", "search_spaces: {ann: {lr: {type: randint, low: 1, high: 3}}}", "tune.search_spaces.ann.lr.type",
     "lr is a real number"),
    ("tune", "search_spaces: {ann: {hidden: {type: randint, low: 8, high: 99999}}}",
     "tune.search_spaces.ann.hidden.high", "high - 1, must be in [1, 16384]"),
    ("tune", "search_spaces: {ann: {batch_size: {type: choice, values: [1, 64]}}}\nworkers_per_trial: 2",
     "tune.search_spaces.ann.batch_size", "must be >= workers_per_trial (2)"),
]


@pytest.mark.parametrize(("section", "text", "key", "words"), BAD_VALUES, ids=[f"{c[0]}:{c[1]}" for c in BAD_VALUES])
def test_out_of_range_values_are_one_line_naming_the_key_and_the_file(tmp_path: Path, section: str, text: str,
                                                                     key: str, words: str) -> None:
    (tmp_path / "c.yaml").write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(section, tmp_path / "c.yaml")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'c.yaml'}: {key}: "), message  # the file, then the full key
    assert words in message, message
    assert "\n" not in message and len(message) < 400, message
    assert info.value.key == key


def test_flags_are_checked_like_files_and_named_without_a_file() -> None:
    for section, overrides, message in [
        ("train", {"epochs": -5}, "train.epochs: -5: must be >= 1"),
        ("train", {"lr": float("nan")}, "train.lr: nan: must be a finite number in [0, 1]"),
        ("featurize", {"split": {"method": "lists"}}, "featurize.split.lists_dir: null: split method 'lists'"),
        ("tune", {"models": ["ann", "bert"]}, "tune.models[1]: unknown model 'bert': must be one of ann, cnn, lstm"),
    ]:
        with pytest.raises(ConfigError) as info:
            load_config(section, overrides=overrides)
        assert str(info.value).startswith(message), info.value


def test_a_cross_field_error_names_the_file_that_set_the_other_key(tmp_path: Path) -> None:
    """hop_length (512, the default) is fine; the user's n_fft makes it wrong: the user's file is named."""
    (tmp_path / "f.yaml").write_text("features:\n  n_fft: 256\n")
    with pytest.raises(ConfigError, match=r"^.*f\.yaml: featurize\.features\.hop_length: 512: must be <= n_fft"):
        load_config("featurize", tmp_path / "f.yaml")


def test_manifests_are_checked_by_the_same_rules() -> None:
    """features.json / model.json go through FeatureParams.from_dict: the same ranges as the config files."""
    from raygenre.config import FeatureParams, FeaturizeConfig, to_dict

    stored = to_dict(load_config(FeaturizeConfig).features)
    with pytest.raises(ConfigError, match=r"^feats/features\.json: features\.hop_length: 0: must be >= 1$"):
        FeatureParams.from_dict({**stored, "hop_length": 0}, "feats/features.json: features")
    with pytest.raises(ConfigError, match=r"features\.n_mfcc: 129: must be <= n_mels \(128\)"):
        FeatureParams.from_dict({**stored, "n_mfcc": 129})


def test_every_packaged_default_and_every_value_the_tests_and_demo_use_loads() -> None:
    from raygenre.config import SECTIONS, FeaturizeConfig, TuneConfig

    for name in SECTIONS:
        load_config(name)  # each packaged YAML passes its own rules
    load_config(TrainConfig, overrides={"model": "ann", "epochs": 1, "workers": 1, "lr": 1, "batch_size": 1,
                                        "min_epochs": 0, "patience": 0, "weight_decay": 0.0, "hidden": 1})
    load_config(FeaturizeConfig, overrides={"segments": 1, "split": {"train": 0.5, "val": 0.2, "test": 0.3}})
    load_config(FeaturizeConfig, overrides={"split": {"train": 1.0, "val": 0.0, "test": 0.0}})
    load_config(TuneConfig, overrides={"models": ["cnn"], "num_samples": 1, "max_epochs": 2, "grace_period": 1,
                                       "reduction_factor": 2, "gpus_per_trial": 0.5, "max_concurrent": 1})
    load_config("label", overrides={"decode_timeout_s": 0, "actors": 0, "actor_restarts": 0, "extensions": [".WAV"]})


def test_every_setting_declares_its_range() -> None:
    """A new numeric or named setting without a rule fails here (booleans and nested sections have none)."""
    import dataclasses
    import typing

    from raygenre.config import SECTIONS, FeatureParams, SplitConfig, rule_of

    for cls in (*SECTIONS.values(), FeatureParams, SplitConfig):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] is bool or dataclasses.is_dataclass(hints[f.name]):
                continue
            assert rule_of(cls, f.name) is not None, f"{cls.__name__}.{f.name} has no rule"


def test_the_names_config_knows_are_the_ones_the_code_uses() -> None:
    """config.py imports no torch/ray/numpy, so it names the models, tunables, difficulties and formats itself."""
    from raygenre import config
    from raygenre.config import LabelConfig, SynthConfig, TuneConfig, rule_of
    from raygenre.data.synth.recipes import DIFFICULTIES
    from raygenre.label.parts import FORMATS
    from raygenre.model.networks import MODELS
    from raygenre.training.tune import HPARAMS

    assert config.MODELS == MODELS and config.TUNABLE == HPARAMS
    assert rule_of(SynthConfig, "difficulty").choices == DIFFICULTIES
    assert rule_of(LabelConfig, "format").choices == tuple(FORMATS)
    assert rule_of(TrainConfig, "model").choices == rule_of(TuneConfig, "models").item.choices == MODELS


def test_yaml_1_1_float_spellings_are_floats_where_a_float_is_expected(tmp_path: Path) -> None:
    """PyYAML (YAML 1.1) reads 1e-3 as the string "1e-3"; YAML 1.2 and people read a number."""
    from raygenre.config import TuneConfig

    (tmp_path / "t.yaml").write_text("lr: 1e-3\ndropout: 3E-1\nweight_decay: '+5e-4'\nbn_momentum: .1\n")
    cfg = load_config(TrainConfig, tmp_path / "t.yaml")
    assert (cfg.lr, cfg.dropout, cfg.weight_decay, cfg.bn_momentum) == (0.001, 0.3, 0.0005, 0.1)
    assert all(isinstance(v, float) for v in (cfg.lr, cfg.dropout, cfg.weight_decay))
    (tmp_path / "s.yaml").write_text("search_spaces:\n  ann:\n    lr: {type: loguniform, low: 1e-5, high: 1e-2}\n"
                                     "    weight_decay: {type: choice, values: [1e-4, 1e-3]}\n")
    space = load_config(TuneConfig, tmp_path / "s.yaml").search_spaces["ann"]
    assert space["lr"] == {"type": "loguniform", "low": 1e-5, "high": 1e-2}  # replaced whole, numbers
    assert space["weight_decay"] == {"type": "choice", "values": [1e-4, 1e-3]}
    assert space["hidden"] == load_config(TuneConfig).search_spaces["ann"]["hidden"]  # the rest stays
    for text in ("lr: abc\n", "lr: 1e-3x\n", "lr: 'nan'\n", "lr: '1_0'\n", "lr: '1,5'\n"):
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(ConfigError, match=r"train\.lr: expected float, got '"):
            load_config(TrainConfig, tmp_path / "bad.yaml")


@pytest.mark.parametrize(("text", "words"), [
    ("{1: a, b: c}\n", "key 1 is not a name"),
    ("epochs: 3\n2: x\n", "key 2 is not a name"),
    ("on: 3\n", "key True is not a name"),  # YAML 1.1: on/yes/no are booleans
    ("search_spaces:\n  ann:\n    1: x\n    lr: y\n", "search_spaces.ann: key 1 is not a name"),
])
def test_keys_that_are_not_strings_are_one_line(tmp_path: Path, text: str, words: str) -> None:
    (tmp_path / "k.yaml").write_text(text)
    for section in ("train", "tune"):
        with pytest.raises(ConfigError) as info:
            load_config(section, tmp_path / "k.yaml")
        assert words in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"train\[1\]: key 1 is not a name"):
        load_config("train", overrides={1: "a", "b": "c"})  # type: ignore[dict-item]


def _bomb(levels: int) -> str:
    """Billion laughs inside tune.search_spaces: each level 10 aliases of the one before (10**levels leaves)."""
    lines = ["search_spaces:", "  ann:", "    l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    import time
    import tracemalloc

    # 10**7 leaves once expanded (70 aliases): were the bound lost, the test would fail in seconds, not hang
    (tmp_path / "bomb.yaml").write_text(_bomb(7))
    assert (tmp_path / "bomb.yaml").stat().st_size < 1000
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(ConfigError) as info:
            load_config("tune", tmp_path / "bomb.yaml")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "bomb.yaml: refused at line" in message and "aliases" in message and "\n" not in message, message
    assert time.monotonic() - t0 < 5 and peak < 20 * 2**20, (time.monotonic() - t0, peak)


@pytest.mark.parametrize(("text", "words"), [
    ("search_spaces: &a {ann: *a}\n", "recursive alias"),
    ("x: &x [1]\ny: [" + ", ".join(["*x"] * 101) + "]\n", "more than 100 aliases"),
    ("x: " + "[" * 40 + "]" * 40 + "\n", "nested deeper than 32 levels"),
    ("x: [" + ", ".join(["1"] * 20_000) + "]\n", "expands to more than 10000 values"),  # no alias at all
])
def test_other_documents_too_large_to_expand_are_refused(tmp_path: Path, text: str, words: str) -> None:
    (tmp_path / "x.yaml").write_text(text)
    with pytest.raises(ConfigError, match="x.yaml: refused at line") as info:
        load_config("tune", tmp_path / "x.yaml")
    assert words in str(info.value)


def test_aliases_a_config_may_use_still_work(tmp_path: Path) -> None:
    from raygenre.config import TuneConfig

    (tmp_path / "t.yaml").write_text("search_spaces:\n  ann: &small\n    lr: {type: loguniform, low: 1e-4, high: 1e-3}"
                                     "\n  cnn: *small\n  lstm: *small\n")
    spaces = load_config(TuneConfig, tmp_path / "t.yaml").search_spaces
    assert spaces["ann"]["lr"] == spaces["cnn"]["lr"] == spaces["lstm"]["lr"] == {
        "type": "loguniform", "low": 1e-4, "high": 1e-3}


def test_a_config_file_is_read_only_up_to_1_mib(tmp_path: Path) -> None:
    (tmp_path / "big.yaml").write_text("# a comment line\n" * 70_000)  # 1.1 MiB of nothing
    with pytest.raises(ConfigError, match=r"big\.yaml: larger than 1024 KiB; a config file is a few lines"):
        load_config("train", tmp_path / "big.yaml")
    (tmp_path / "ok.yaml").write_text("# a comment line\n" * 60_000 + "epochs: 4\n")  # under the cap: read
    assert load_config(TrainConfig, tmp_path / "ok.yaml").epochs == 4


@pytest.mark.parametrize("args", [
    ["train", "--config", "{bad}"],
    ["train", "--epochs", "-5"],
    ["train", "--lr", "nan"],
    ["tune", "--max-epochs", "0"],
    ["label", "{folder}", "--segments-per-track", "0"],
    ["featurize", "{folder}", "--out", "{folder}/feats", "--segments", "0"],
])
def test_cli_refuses_a_bad_value_in_one_line_before_any_work(tmp_path: Path, args: list[str]) -> None:
    result, lines = _cli_error(tmp_path, args, "epochs: -5\n")
    assert len(lines) == 1 and lines[0].startswith("error:") and "must be" in lines[0], result.output
    assert not (tmp_path / "feats").exists()


def test_every_tuned_model_needs_a_search_space() -> None:
    """A merge never removes the packaged spaces, so only a broken package (or a caller of _build) gets here."""
    from raygenre.config import TuneConfig, _build, defaults

    data = defaults(TuneConfig)
    data["search_spaces"] = {"ann": data["search_spaces"]["ann"]}
    with pytest.raises(ConfigError, match=r"^tune\.search_spaces: no search space for cnn, lstm, which tune\.models"):
        _build(TuneConfig, data, "tune")
    assert _build(TuneConfig, {**data, "models": ["ann"]}, "tune").models == ["ann"]
