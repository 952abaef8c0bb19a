"""One typed configuration, loaded from the package's ``raygenre/configs/<section>.yaml`` and overridden by flags.

Every default value lives in the YAML files shipped inside the package (``raygenre/configs/``, read with
``importlib.resources``, so an installed wheel or image finds them with no setting); the dataclasses here only
give those values names, types and documentation. ``load_config(TrainConfig, ...)`` merges, in order: the
class's YAML (``SECTIONS`` names it: ``train.yaml``), an optional user file (``--config FILE``), then explicit
overrides (CLI flags; ``None`` means "not given"), and checks every key and type so that a typo fails loudly
instead of being ignored.

Nesting: ``TuneConfig.train`` is a whole ``TrainConfig`` (the trials' base). Its defaults are ``train.yaml``'s,
merged with the ``train:`` mapping of ``tune.yaml`` and then of the user's tune file (``defaults``): one place
per default, and a tune run states which train settings it used.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, overload

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or override is malformed (unknown key, wrong type, missing value)."""


def default_file(section: str) -> importlib.resources.abc.Traversable:
    """The packaged YAML file of ``section`` (``raygenre/configs/<section>.yaml``, package data)."""
    return importlib.resources.files("raygenre") / "configs" / f"{section}.yaml"


@dataclasses.dataclass(frozen=True)
class FeatureParams:
    """The feature contract: how audio becomes MFCC segments. Stored in features.json and model.json.

    Training and labeling refuse features computed with different parameters.
    """

    sample_rate: int  # Hz; audio is resampled to this rate before anything else
    n_mfcc: int  # MFCC coefficients per frame
    n_fft: int  # STFT window, samples
    hop_length: int  # STFT hop, samples
    n_mels: int  # mel bands (slaney scale and norm, as librosa)
    segment_seconds: float  # length of one segment, seconds

    @property
    def segment_samples(self) -> int:
        """Samples in one segment (66150 at the defaults)."""
        return int(round(self.sample_rate * self.segment_seconds))

    @property
    def frames(self) -> int:
        """MFCC frames in one full segment with ``center=True`` (130 at the defaults)."""
        return 1 + self.segment_samples // self.hop_length

    @classmethod
    def from_dict(cls, data: Any, where: str = "features") -> FeatureParams:
        """The parameters stored in a manifest (features.json, model.json): exactly these keys, typed.

        Extra keys (e.g. ``frames`` beside them in model.json) are ignored; a missing key or a wrong type raises
        ``ConfigError`` naming ``where``.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping of feature parameters, got {data!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        return _build(cls, {k: v for k, v in data.items() if k in names}, where)


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """How tracks (never segments) are assigned to train/val/test."""

    method: str  # "stratified" (seeded, per genre) or "lists" (public GTZAN filtered lists)
    train: float  # fractions for "stratified"; must sum to 1
    val: float
    test: float
    lists_dir: str | None  # folder with train_filtered.txt, valid_filtered.txt, test_filtered.txt
    seed: int


@dataclasses.dataclass(frozen=True)
class FeaturizeConfig:
    """``raygenre featurize``: audio dataset -> Parquet MFCC table + features.json."""



    features: FeatureParams
    segments: int  # segments cut from the start of each track, back to back
    split: SplitConfig
    tracks_per_batch: int  # most tracks per Ray Data task (decode + MFCC); fewer to give every CPU 4 tasks
    decode_timeout_s: float  # per file: a decoder still busy after this long is killed (0 = no limit, no child)


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """``raygenre synth``: the built-in synthetic dataset in GTZAN layout (not real music)."""



    tracks_per_genre: int
    seconds: float  # nominal track length; with faults on, lengths vary around it
    sample_rate: int
    seed: int
    faults: bool  # add GTZAN's real-world faults: a corrupt file, a truncated one, varying lengths
    difficulty: str  # easy (each genre its own recipe) | hard (genres overlap: see data/synth/recipes.py)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """``raygenre train``: one model trained data-parallel on Ray Train."""



    model: str  # ann | cnn | lstm
    epochs: int
    workers: int
    gpu: bool
    lr: float
    batch_size: int  # GLOBAL batch: segments per optimizer step, split evenly across the workers
    dropout: float
    weight_decay: float | None  # L2 on the dense weights; None = the tutorial's (ann 1e-3, cnn/lstm 0)
    hidden: int | None  # first dense width (ann) / dense width (cnn) / LSTM size (lstm); None = tutorial's
    min_epochs: int  # early stopping never ends a run before this many epochs
    patience: int  # early stopping: epochs without a new best validation accuracy (after min_epochs)
    bn_momentum: float  # BatchNorm running-average momentum, PyTorch convention (Keras' 0.99 is 0.01 here)
    bn_recompute: bool  # recompute BatchNorm statistics over the train split after every epoch
    max_failures: int  # worker failures tolerated (resume from the last checkpoint)
    seed: int


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """``raygenre tune``: hyperparameter search over the models with Ray Tune."""



    models: list[str]
    num_samples: int  # trials per model
    max_epochs: int
    workers_per_trial: int
    gpus_per_trial: float
    max_concurrent: int  # 0 = derive from the cluster's resources
    grace_period: int | None  # ASHA: epochs every trial gets; None = half of max_epochs (rounded up)
    reduction_factor: int  # ASHA
    search_alg: str  # "random" (default); "optuna"/"hyperopt" if installed
    seed: int
    search_spaces: dict[str, dict[str, Any]]  # per model: {param: {type: loguniform|choice|uniform, ...}}
    train: TrainConfig  # the trials' base (patience, min_epochs, bn_*, max_failures); tune sets the rest per trial


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    """``raygenre label``: batch inference over an audio library."""



    format: str  # parquet | csv | jsonl
    segments_per_track: int  # segments spread evenly across each file
    batch_size: int  # files per model batch
    gpu: bool
    actors: int  # model actors (0 = derive from the cluster)
    files_per_part: int  # rows per output part file (each part is written atomically)
    extensions: list[str]
    decode_timeout_s: float  # per file: a decoder still busy after this long is killed (0 = no limit, no child)
    actor_restarts: int  # model actor restarts allowed in all (deaths) before the run stops, keeping its rows


# Each config class and the packaged YAML file (raygenre/configs/<section>.yaml) holding its defaults.
SECTIONS: dict[str, type] = {
    "featurize": FeaturizeConfig,
    "synth": SynthConfig,
    "train": TrainConfig,
    "tune": TuneConfig,
    "label": LabelConfig,
}
C = TypeVar("C")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if value is None:
            continue  # "not given on the command line"
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is Any:
        if origin is dict and not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str) and not isinstance(value, tp) or isinstance(value, bool) and tp is not bool:
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _build(cls: type[T], data: Any, where: str) -> T:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
    missing = sorted(names - set(data))
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing}")
    return cls(**{k: _coerce(data[k], hints[k], f"{where}.{k}") for k in names})  # type: ignore[call-arg]


def read_yaml(path: str | Path | importlib.resources.abc.Traversable) -> dict[str, Any]:
    """A YAML file of settings as a dict; ``ConfigError`` (one line) for a missing file, a folder, malformed YAML
    or a document that is not a mapping. ``path`` may be a packaged resource (``default_file``)."""
    p = path if isinstance(path, importlib.resources.abc.Traversable) else Path(path)
    if p.is_dir():
        raise ConfigError(f"{p} is a folder; --config takes a YAML file (see raygenre/configs/ for examples)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read it ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{p}: not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected settings as `key: value` lines, got a {type(data).__name__}")
    return data


def section_of(cls: type) -> str:
    """The section name of a config class (``TrainConfig`` -> ``"train"``): its YAML file's stem."""
    for name, known in SECTIONS.items():
        if known is cls:
            return name
    known = ", ".join(c.__name__ for c in SECTIONS.values())
    raise ConfigError(f"{cls.__name__} is not a config section; known: {known}")


def _section_class(cls: type[C] | str) -> type[C]:
    if isinstance(cls, str):
        if cls not in SECTIONS:
            raise ConfigError(f"unknown config section {cls!r}; valid sections are {sorted(SECTIONS)}")
        return SECTIONS[cls]
    section_of(cls)  # a known section, or a clear error
    return cls


def defaults(cls: type[Any] | str) -> dict[str, Any]:
    """The packaged defaults of a config class as plain data: its YAML, with every nested config field (one whose
    type is itself a section, e.g. ``TuneConfig.train``) filled from that section's YAML and then overridden by
    the mapping the outer YAML gives under the field's name."""
    cls = _section_class(cls)
    data = read_yaml(default_file(section_of(cls)))
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        inner = hints[f.name]
        if inner in SECTIONS.values():
            data[f.name] = _merge(defaults(inner), data.get(f.name) or {})
    return data


@overload
def load_config(cls: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C: ...
@overload
def load_config(cls: str, path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Any: ...
def load_config(cls: type[C] | str, path: str | Path | None = None,
                overrides: dict[str, Any] | None = None) -> C | Any:
    """An instance of ``cls`` (e.g. ``TrainConfig``): its packaged defaults (``defaults``), merged with ``path`` (a
    user YAML, ``--config FILE``) and ``overrides``. A section name (``"train"``) is accepted for ``cls`` too.

    Overrides may be nested (``{"features": {"n_mfcc": 20}}``); ``None`` values are ignored.
    """
    cls = _section_class(cls)
    data = defaults(cls)
    if path is not None:
        data = _merge(data, read_yaml(path))
    data = _merge(data, overrides or {})
    return _build(cls, data, section_of(cls))


def to_dict(cfg: Any) -> dict[str, Any]:
    """The dataclass as plain YAML/JSON-ready data (what gets saved beside a run)."""
    return dataclasses.asdict(cfg)
