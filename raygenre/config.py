"""One typed configuration, loaded from the package's ``raygenre/configs/<section>.yaml`` and overridden by flags.

Every default value lives in the YAML files shipped inside the package (``raygenre/configs/``, read with
``importlib.resources``, so an installed wheel or image finds them with no setting); the dataclasses here only
give those values names, types, allowed ranges and documentation. ``load_config(TrainConfig, ...)`` merges, in
order: the class's YAML (``SECTIONS`` names it: ``train.yaml``), an optional user file (``--config FILE``), then
explicit overrides (CLI flags; ``None`` means "not given"), and checks every key, type and range so that a typo or
an impossible value fails loudly, as one line naming the key and what it allows, instead of failing later.

Ranges live in one place per setting: the field's ``rule`` (``epochs: int = rule(Range(1))``); settings that
constrain each other (split fractions summing to 1, ``hop_length <= n_fft``) are checked by the class that owns
them (``_check``). ``_build`` applies both, so ``load_config`` and ``FeatureParams.from_dict`` (the manifests)
refuse the same values.

Nesting: ``TuneConfig.train`` is a whole ``TrainConfig`` (the trials' base). Its defaults are ``train.yaml``'s,
merged with the ``train:`` mapping of ``tune.yaml`` and then of the user's tune file (``defaults``): one place
per default, and a tune run states which train settings it used.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.resources
import math
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

import yaml

T = TypeVar("T")

MODELS: tuple[str, ...] = ("ann", "cnn", "lstm")  # = raygenre.model.networks.MODELS (config imports no torch)
TUNABLE: tuple[str, ...] = ("lr", "batch_size", "dropout", "weight_decay", "hidden")  # = training.tune.HPARAMS
SEED_MAX = 2**32 - 1  # numpy's RandomState (Tune's random search) and default_rng take seeds in [0, 2**32)
MAX_FILE_BYTES = 1 << 20  # a config file is a few dozen lines; more is a mistake (or an attack), never read whole
# YAML anchors and aliases (&space / *space) are legitimate (one search space shared by two models), so they are
# bounded, not refused: aliases share nodes while composing, but every consumer (the merge, dataclasses.asdict,
# the tune.json summary) expands them, so a "billion laughs" document of a few hundred bytes would become
# gigabytes. The bound is on the EXPANDED size, counted while composing, before anything is expanded.
MAX_YAML_NODES = 10_000  # the packaged tune.yaml is 157 nodes
MAX_YAML_ALIASES = 100
MAX_YAML_DEPTH = 32  # nesting; PyYAML composes recursively (a deep document is a RecursionError otherwise)


class ConfigError(ValueError):
    """A configuration file or override is malformed (unknown key, wrong type, out of range, missing value).

    ``key`` is the setting's full name (``train.lr``, ``featurize.split``) when the error is about one, ``related``
    the settings it was checked against (``featurize.features.n_fft`` for ``hop_length``).
    """

    def __init__(self, message: str, key: str | None = None, related: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.key, self.related = key, tuple(related)


def _finite(x: float) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:  # an int beyond float's range (YAML reads 400 digits as an int)
        return False


def _show(x: float) -> str:
    """A bound as people write it: 1, 0.5, 1e-06, 4294967295."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


@dataclasses.dataclass(frozen=True)
class Range:
    """A finite number from ``lo`` to ``hi`` (``None``: unbounded), each end included unless ``*_open``."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def allows(self, value: float) -> bool:
        if not _finite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def __str__(self) -> str:
        if self.hi is None and self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {_show(self.lo)}"
        if self.lo is None and self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {_show(self.hi)}"
        if self.lo is None:
            return "a finite number"
        return f"in {'(' if self.lo_open else '['}{_show(self.lo)}, {_show(self.hi)}{')' if self.hi_open else ']'}"

    def check(self, value: Any, where: str) -> Any:
        if not self.allows(value):
            finite = "" if _finite(value) else "a finite number "
            raise _fail(where, f"{_brief(value)}: must be {finite}{self}")
        return value


@dataclasses.dataclass(frozen=True)
class OneOf:
    """One of a fixed set of names."""

    choices: tuple[str, ...]
    what: str = ""  # the kind of name, for "unknown model 'gru'"

    def __str__(self) -> str:
        return "one of " + ", ".join(self.choices)

    def check(self, value: Any, where: str) -> Any:
        if value not in self.choices:
            raise _fail(where, f"{'unknown ' + self.what + ' ' if self.what else ''}{_brief(value)}: must be {self}")
        return value


@dataclasses.dataclass(frozen=True)
class Name:
    """A non-empty string with none of ``forbidden`` (e.g. a file extension holds no ``/``)."""

    what: str
    forbidden: str = "\0"
    strip: str = ""  # characters ignored at either end when deciding "empty" (an extension's leading dot)

    def __str__(self) -> str:
        return self.what

    def check(self, value: Any, where: str) -> Any:
        if not value.strip().strip(self.strip) or any(c in value for c in self.forbidden):
            raise _fail(where, f"{_brief(value)}: must be {self}")
        return value


@dataclasses.dataclass(frozen=True)
class Items:
    """A list of at least ``min_items`` items, each allowed by ``item`` (and all different when ``unique``)."""

    item: Any
    min_items: int = 1
    unique: bool = True

    def __str__(self) -> str:
        return f"a list of at least {self.min_items}, each {self.item}"

    def check(self, value: list[Any], where: str) -> list[Any]:
        if len(value) < self.min_items:
            raise _fail(where, f"{_brief(value)}: must be {self}")
        seen: set[Any] = set()
        for i, v in enumerate(value):
            self.item.check(v, f"{where}[{i}]")
            if self.unique and v in seen:
                raise _fail(f"{where}[{i}]", f"{v!r} is listed twice")
            seen.add(v)
        return value


def rule(check: Any) -> Any:
    """A dataclass field whose values must pass ``check`` (a ``Range``, ``OneOf``, ``Name``, ``Items``...).

    ``None`` (for an ``X | None`` field) is always allowed; the type is checked before the rule.
    """
    return dataclasses.field(metadata={"rule": check})


def rule_of(cls: type, name: str) -> Any:
    """The rule of field ``name`` of config class ``cls`` (``rule_of(TrainConfig, "hidden")``), or ``None``."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("rule")
    raise KeyError(f"{cls.__name__} has no field {name!r}")


SEED = Range(0, SEED_MAX)
SAMPLE_RATE = Range(1000, 768_000)  # Hz: telephone audio to 768 kHz studio files (what the decoders handle)
DECODE_TIMEOUT = Range(0, 86_400)  # seconds; 0 = no limit and no decoder child (the decoder read < 0 as 0, too)
# seconds a command on a cluster that starts workers on demand (autoscaler, KubeRay groups at 0 replicas) waits for
# them, having asked its autoscaler (runtime.wait_for_resources); 0 = no wait: a cluster too small is refused at once
WAIT_FOR_WORKERS = Range(0, 86_400)


def default_file(section: str) -> importlib.resources.abc.Traversable:
    """The packaged YAML file of ``section`` (``raygenre/configs/<section>.yaml``, package data)."""
    return importlib.resources.files("raygenre") / "configs" / f"{section}.yaml"


@dataclasses.dataclass(frozen=True)
class FeatureParams:
    """The feature contract: how audio becomes MFCC segments. Stored in features.json and model.json.

    Training and labeling refuse features computed with different parameters.
    """

    sample_rate: int = rule(SAMPLE_RATE)  # Hz; audio is resampled to this rate before anything else
    n_mfcc: int = rule(Range(1))  # MFCC coefficients per frame; at most n_mels (the DCT keeps the first ones)
    n_fft: int = rule(Range(16, 65_536))  # STFT window, samples
    hop_length: int = rule(Range(1))  # STFT hop, samples; at most n_fft (a larger hop skips samples)
    n_mels: int = rule(Range(1))  # mel bands (slaney scale and norm, as librosa); at most n_fft // 2 + 1
    segment_seconds: float = rule(Range(0, 600, lo_open=True))  # length of one segment, seconds

    @property
    def segment_samples(self) -> int:
        """Samples in one segment (66150 at the defaults)."""
        return int(round(self.sample_rate * self.segment_seconds))

    @property
    def frames(self) -> int:
        """MFCC frames in one full segment with ``center=True`` (130 at the defaults)."""
        return 1 + self.segment_samples // self.hop_length

    def _check(self, where: str) -> None:
        bins = self.n_fft // 2 + 1
        if self.hop_length > self.n_fft:
            raise _fail(f"{where}.hop_length", f"{self.hop_length}: must be <= n_fft ({self.n_fft}), or frames "
                        f"skip samples", f"{where}.n_fft")
        if self.n_mels > bins:
            raise _fail(f"{where}.n_mels", f"{self.n_mels}: must be <= n_fft // 2 + 1 ({bins}, the STFT's "
                        f"frequency bins), or mel bands are empty", f"{where}.n_fft")
        if self.n_mfcc > self.n_mels:
            raise _fail(f"{where}.n_mfcc", f"{self.n_mfcc}: must be <= n_mels ({self.n_mels})", f"{where}.n_mels")
        if self.segment_samples < self.n_fft:
            raise _fail(f"{where}.segment_seconds", f"{self.segment_seconds!r}: must hold at least one STFT window "
                        f"(n_fft {self.n_fft} samples at {self.sample_rate} Hz: "
                        f">= {self.n_fft / self.sample_rate:.3g} s)", f"{where}.n_fft", f"{where}.sample_rate")

    @classmethod
    def from_dict(cls, data: Any, where: str = "features") -> FeatureParams:
        """The parameters stored in a manifest (features.json, model.json): exactly these keys, typed, in range.

        Extra keys (e.g. ``frames`` beside them in model.json) are ignored; a missing key, a wrong type or a value
        out of range raises ``ConfigError`` naming ``where``.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping of feature parameters, got {_brief(data)}")
        names = {f.name for f in dataclasses.fields(cls)}
        return _build(cls, {k: v for k, v in data.items() if k in names}, where)


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """How tracks (never segments) are assigned to train/val/test."""

    method: str = rule(OneOf(("stratified", "lists")))  # seeded, per genre | public GTZAN filtered lists
    train: float = rule(Range(0, 1))  # fractions for "stratified"; must sum to 1
    val: float = rule(Range(0, 1))
    test: float = rule(Range(0, 1))
    lists_dir: str | None = rule(Name("a folder path"))  # holds train_filtered.txt, valid_filtered.txt, test_...
    seed: int = rule(SEED)

    def _check(self, where: str) -> None:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise _fail(where, f"train/val/test {self.train:g}/{self.val:g}/{self.test:g} sum to {total:g}: "
                        f"each must be in [0, 1] and they must sum to 1 (within 1e-6)")
        if self.method == "lists" and self.lists_dir is None:
            raise _fail(f"{where}.lists_dir", "null: split method 'lists' needs the folder of train_filtered.txt, "
                        "valid_filtered.txt and test_filtered.txt (featurize --split-lists DIR)", f"{where}.method")


@dataclasses.dataclass(frozen=True)
class FeaturizeConfig:
    """``raygenre featurize``: audio dataset -> Parquet MFCC table + features.json."""

    features: FeatureParams
    segments: int = rule(Range(1, 10_000))  # segments cut from the start of each track, back to back
    split: SplitConfig
    tracks_per_batch: int = rule(Range(1, 100_000))  # most tracks per Ray Data task; fewer to give every CPU 4
    # per file: a decoder still busy after this long is killed (0 = no limit, no child). Negative is refused: it
    # would silently mean 0, the decoder in the task itself, which a hung file then holds forever.
    decode_timeout_s: float = rule(DECODE_TIMEOUT)


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """``raygenre synth``: the built-in synthetic dataset in GTZAN layout (not real music)."""

    tracks_per_genre: int = rule(Range(1, 100_000))
    seconds: float = rule(Range(0, 3600, lo_open=True))  # nominal track length; with faults, lengths vary around it
    sample_rate: int = rule(SAMPLE_RATE)
    seed: int = rule(SEED)
    faults: bool  # add GTZAN's real-world faults: a corrupt file, a truncated one, varying lengths
    # easy (each genre its own recipe) | hard (genres overlap); = data/synth/recipes.DIFFICULTIES (a test says so)
    difficulty: str = rule(OneOf(("easy", "hard")))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """``raygenre train``: one model trained data-parallel on Ray Train."""

    model: str = rule(OneOf(MODELS, "model"))
    epochs: int = rule(Range(1))
    # Ray Train workers; None (YAML null, CLI `--workers auto`) = training.train.resolve_workers' rule: one
    # per node holding all its CPUs (one per GPU with gpu)
    workers: int | None = rule(Range(1, 1024))
    gpu: bool
    lr: float = rule(Range(0, 1))  # Adam; 0 trains nothing (a diagnostic: the early-stopping tests use it)
    batch_size: int = rule(Range(1, 1_000_000))  # GLOBAL batch: segments per optimizer step, split across workers
    dropout: float = rule(Range(0, 1, hi_open=True))
    weight_decay: float | None = rule(Range(0, 1))  # L2 on the dense weights; None = the tutorial's (ann 1e-3, else 0)
    # first dense width (ann) / dense width (cnn) / LSTM size (lstm); None = tutorial's. The bound keeps a typo
    # from allocating gigabytes (an ann of 16384 is ~30 M weights).
    hidden: int | None = rule(Range(1, 16_384))
    # Early stopping: never before min_epochs (may exceed epochs: then it never stops early), then after patience
    # epochs without a new best validation accuracy.
    min_epochs: int = rule(Range(0))
    patience: int = rule(Range(0))
    bn_momentum: float = rule(Range(0, 1))  # BatchNorm momentum, PyTorch convention (Keras' 0.99 is 0.01 here)
    bn_recompute: bool  # recompute BatchNorm statistics over the train split after every epoch
    max_failures: int = rule(Range(0, 1000))  # worker failures tolerated (resume from the last checkpoint)
    seed: int = rule(SEED)
    # ray.train.torch.enable_reproducibility on every worker: deterministic kernels (cuDNN too), so a GPU run
    # repeats exactly; slower on GPUs, and an op with no deterministic kernel raises instead of running
    deterministic: bool
    # with gpu: the smallest batch a GPU gets per step. A smaller share of batch_size (32 over 4 GPUs is 8) is
    # raised to it (global batch = this x workers) and lr scaled by sqrt(new batch / batch_size): Adam's
    # square-root rule (training.train.gpu_batch; bench/gpu.py --batch-rule measures it). CPU runs ignore it.
    min_gpu_batch: int = rule(Range(1, 1_000_000))
    # batch_size >= workers is checked where workers is known to hold: raygenre train (prepare) and TuneConfig
    # (a tune file's nested train.workers is replaced by workers_per_trial, so it is no rule of this class).


SPACE_KEYS: dict[str, tuple[str, ...]] = {  # Ray Tune sampler -> its arguments (see training/tune.search_space)
    "loguniform": ("low", "high"), "uniform": ("low", "high"), "randint": ("low", "high"), "choice": ("values",)}


@dataclasses.dataclass(frozen=True)
class SearchSpaces:
    """``tune.search_spaces``: per model, ``{param: {type: loguniform|uniform|randint|choice, ...}}``.

    Each searched value must be one the trial's ``TrainConfig`` allows (its field's rule: one place per range).
    """

    def __str__(self) -> str:
        return "per model, {param: {type: loguniform|uniform|randint|choice, ...}}"

    def check(self, value: dict[Any, Any], where: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for model, space in value.items():
            w = _child(where, model)
            OneOf(MODELS, "model").check(model, w)
            if not isinstance(space, dict):
                raise _fail(w, f"expected a mapping of param: {{type: ..., ...}}, got {_brief(space)}")
            out[model] = {name: self._param(name, spec, _child(w, name)) for name, spec in space.items()}
        return out

    @staticmethod
    def _param(name: Any, spec: Any, where: str) -> dict[str, Any]:
        if name not in TUNABLE:
            raise _fail(where, f"{name!r} is not searched by tune; searchable: {', '.join(TUNABLE)}")
        if not isinstance(spec, dict) or "type" not in spec:
            raise _fail(where, f"expected {{type: {'|'.join(SPACE_KEYS)}, ...}}, got {_brief(spec)}")
        kind = spec["type"]
        OneOf(tuple(SPACE_KEYS)).check(kind, f"{where}.type")
        keys = ("type", *SPACE_KEYS[kind])
        if set(spec) != set(keys):
            raise _fail(where, f"a {kind} space takes exactly the keys {', '.join(keys)}, got "
                        f"{', '.join(sorted(map(str, spec)))}")
        # null is never searched (trial tables and the winner's config would carry NaN): the first trial is
        # already the default point, where a null weight_decay/hidden means the tutorial's value.
        hint = typing.get_type_hints(TrainConfig)[name]
        tp = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
        check = rule_of(TrainConfig, name)
        is_int = tp is int
        if kind == "choice":
            values = spec["values"]
            if not isinstance(values, list) or not values:
                raise _fail(f"{where}.values", f"{_brief(values)}: must be a non-empty list")
            return {"type": kind, "values": [_coerce(v, tp, f"{where}.values[{i}]", check)
                                             for i, v in enumerate(values)]}
        if is_int != (kind == "randint"):
            use = "randint or choice" if is_int else "uniform, loguniform or choice"
            raise _fail(f"{where}.type", f"{kind!r}: {name} is {'an integer' if is_int else 'a real number'}: "
                        f"use {use}")
        elem = int if is_int else float
        low = _coerce(spec["low"], elem, f"{where}.low", check)
        high = _coerce(spec["high"], elem, f"{where}.high", None if kind == "randint" else check)
        if not low < high:
            raise _fail(where, f"low {low!r} must be below high {high!r}")
        if kind == "loguniform" and low <= 0:
            raise _fail(f"{where}.low", f"{low!r}: must be > 0 (a log-uniform range)")
        if kind == "randint" and not check.allows(high - 1):  # Tune's randint never draws high itself
            raise _fail(f"{where}.high", f"{high!r}: the largest value drawn, high - 1, must be {check}")
        return {"type": kind, "low": low, "high": high}


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """``raygenre tune``: hyperparameter search over the models with Ray Tune."""

    models: list[str] = rule(Items(OneOf(MODELS, "model")))
    num_samples: int = rule(Range(1, 100_000))  # trials per model
    max_epochs: int = rule(Range(1))
    workers_per_trial: int = rule(Range(1, 1024))
    gpus_per_trial: float = rule(Range(0, 1024))
    max_concurrent: int = rule(Range(0))  # 0 = derive from the cluster's resources
    # ASHA: epochs every trial gets; None = half of max_epochs (rounded up). "<= max_epochs" is checked by
    # training/tune.grace_period, before Ray starts.
    grace_period: int | None = rule(Range(1))
    reduction_factor: int = rule(Range(2))  # ASHA keeps the best 1/reduction_factor at each rung: 1 would keep all
    search_alg: str = rule(OneOf(("random", "optuna", "hyperopt")))  # the latter two if installed
    seed: int = rule(SEED)
    search_spaces: dict[str, dict[str, Any]] = rule(SearchSpaces())
    wait_for_workers_s: float = rule(WAIT_FOR_WORKERS)  # for one trial's CPUs/GPUs on a cluster still without them
    train: TrainConfig  # the trials' base (patience, min_epochs, bn_*, max_failures); tune sets the rest per trial

    @property
    def trial_workers(self) -> int:
        """Ray Train workers per trial: ``gpus_per_trial`` when it is above 1 (one GPU each), else
        ``workers_per_trial``."""
        return int(self.gpus_per_trial) if self.gpus_per_trial > 1 else self.workers_per_trial

    def _check(self, where: str) -> None:
        gpus, workers = self.gpus_per_trial, self.workers_per_trial
        if 0 < gpus < 1 and workers > 1:  # NCCL refuses two ranks on one device (ray-project/ray#48012)
            raise _fail(f"{where}.gpus_per_trial", f"{gpus:g}: a fraction of a GPU holds one worker, not "
                        f"{workers}: two DDP workers on one GPU fail in NCCL (\"Duplicate GPU detected\"); use "
                        f"workers_per_trial 1 with a fraction, or whole GPUs", f"{where}.workers_per_trial")
        if gpus > 1 and not float(gpus).is_integer():
            raise _fail(f"{where}.gpus_per_trial", f"{gpus:g}: above 1 it must be a whole number (one worker per "
                        f"GPU)")
        if gpus > 1 and workers not in (1, int(gpus)):
            raise _fail(f"{where}.workers_per_trial", f"{workers}: with gpus_per_trial {gpus:g} each trial runs "
                        f"{int(gpus)} workers, one per GPU; leave workers_per_trial at 1 or set it to "
                        f"{int(gpus)}", f"{where}.gpus_per_trial")
        missing = [m for m in self.models if m not in self.search_spaces]
        if missing:
            raise _fail(f"{where}.search_spaces", f"no search space for {', '.join(missing)}, which tune.models "
                        f"lists", f"{where}.models")
        for model in self.models:  # every batch a trial may use: the searched ones and the base (the first trial)
            searched = self.search_spaces[model].get("batch_size")  # checked: ints, a non-empty choice or a randint
            sizes = {f"{where}.train.batch_size": self.train.batch_size}
            if searched is not None:
                sizes[f"{where}.search_spaces.{model}.batch_size"] = min(searched.get("values") or [searched["low"]])
            for key, size in sizes.items():
                if size < self.trial_workers:
                    raise _fail(key, f"{size}: must be >= workers_per_trial ({self.trial_workers}): the batch "
                                f"is the global one, split across a trial's workers", f"{where}.workers_per_trial")


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    """``raygenre label``: batch inference over an audio library."""

    format: str = rule(OneOf(("parquet", "csv", "jsonl")))  # = label/parts.FORMATS (a test says so)
    segments_per_track: int = rule(Range(1, 1000))  # segments spread evenly across each file
    batch_size: int = rule(Range(1, 100_000))  # files per model batch
    gpu: bool
    actors: int = rule(Range(0, 10_000))  # model actors (0 = derive from the cluster)
    files_per_part: int = rule(Range(1, 10_000_000))  # rows per output part file (each part is written atomically)
    extensions: list[str] = rule(Items(Name("a file extension such as wav (no '/')", "/\\\0", strip=".")))
    decode_timeout_s: float = rule(DECODE_TIMEOUT)  # per file, as featurize's (0 = no limit, no child)
    actor_restarts: int = rule(Range(0, 10_000))  # model actor restarts allowed in all before the run stops
    wait_for_workers_s: float = rule(WAIT_FOR_WORKERS)  # for the actors' and decoding's CPUs (GPUs with gpu)
    # a file whose top probability (confidence) is below this gets genre "unknown" (top_genre keeps the guess)
    min_confidence: float = rule(Range(0, 1))


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
        # A search-space spec ({type: ..., ...}) replaces the default's whole: its other keys depend on its type.
        if isinstance(value, dict) and isinstance(out.get(key), dict) and "type" not in value:
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _brief(value: Any) -> str:
    """``repr(value)`` cut to one short line (a value may be a 4000-digit number or a whole mapping)."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print (Python's 4300-digit limit)
        return f"<{type(value).__name__} too large to show>"
    return text if len(text) <= 60 else text[:57] + "..."


def _child(where: str, key: Any) -> str:
    """The name of ``key`` inside ``where``: ``train.lr``; ``tune.search_spaces['a b']`` for an odd key."""
    if isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", key):
        return f"{where}.{key}"
    return f"{where}[{_brief(key)}]"


def _fail(where: str, problem: str, *related: str) -> ConfigError:
    """The one-line error about setting ``where``; ``related``: other settings it depends on (for ``load_config``
    to tell which file gave them)."""
    return ConfigError(f"{where}: {problem}", key=where, related=related)


# A float as YAML 1.2 (and everyone but PyYAML's YAML 1.1 resolver, which needs a dot: 1.0e-3) writes one.
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


def _coerce(value: Any, tp: Any, where: str, check: Any = None) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where, check)
    if origin is list:
        if not isinstance(value, list):
            raise _fail(where, f"expected a list, got {_brief(value)}")
        (item,) = typing.get_args(tp)
        value = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin is dict or tp is Any:
        if origin is dict and not isinstance(value, dict):
            raise _fail(where, f"expected a mapping, got {_brief(value)}")
    elif tp is bool:
        if not isinstance(value, bool):
            raise _fail(where, f"expected true/false, got {_brief(value)}")
    else:
        if tp is float and not isinstance(value, bool) and (
                isinstance(value, int) or isinstance(value, str) and _FLOAT.fullmatch(value.strip())):
            try:
                value = float(value)  # 1 -> 1.0; "1e-3" -> 0.001 (YAML 1.1 reads 1e-3 as a string)
            except OverflowError:  # an int beyond float's range
                raise _fail(where, f"{_brief(value)}: must be a finite number") from None
        if tp in (int, float, str) and not isinstance(value, tp) or isinstance(value, bool):
            raise _fail(where, f"expected {tp.__name__}, got {_brief(value)}")
    return check.check(value, where) if check is not None else value


def _build(cls: type[T], data: Any, where: str) -> T:
    """``cls`` from a mapping: every key known and present, every value typed and allowed by its field's rule, then
    the class's own cross-field ``_check``. The one place configs and manifests are validated."""
    if not isinstance(data, dict):
        raise _fail(where, f"expected a mapping, got {_brief(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    odd = [k for k in data if not isinstance(k, str)]
    if odd:  # YAML reads `1:` and `on:` as a number and a bool; sorting them with names would be a TypeError
        raise _fail(_child(where, odd[0]), f"key {_brief(odd[0])} is not a name; valid keys are {sorted(fields)} "
                    f"(quote a key that YAML reads as a number or true/false)")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(fields)}",
                          key=_child(where, unknown[0]))
    missing = sorted(set(fields) - set(data))
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing}", key=_child(where, missing[0]))
    hints = typing.get_type_hints(cls)
    obj = cls(**{k: _coerce(data[k], hints[k], _child(where, k), f.metadata.get("rule"))  # type: ignore[call-arg]
                 for k, f in fields.items()})
    cross = getattr(obj, "_check", None)
    if cross is not None:
        cross(where)
    return obj


class _Refused(yaml.YAMLError):
    """A YAML document refused for its size or shape (not a syntax error)."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing documents that expand (through aliases) past ``MAX_YAML_NODES`` nodes, use
    more than ``MAX_YAML_ALIASES`` aliases, nest deeper than ``MAX_YAML_DEPTH`` or alias themselves.

    Composing shares an aliased node instead of copying it, so the expanded size of every node is counted as it is
    composed (its own 1 plus its children's expanded sizes) and the document is refused at the first node past the
    bound: a billion-laughs document stops after a few thousand cheap steps, long before anything is expanded.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._sizes: dict[int, int] = {}  # id(node) -> expanded size, for every node composed so far
        self._keep: list[Any] = []  # the nodes themselves, so their ids stay theirs
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        alias = isinstance(event, yaml.AliasEvent)
        if alias:
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise _Refused(f"more than {MAX_YAML_ALIASES} aliases (*name); a config needs a few", event.start_mark)
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise _Refused(f"nested deeper than {MAX_YAML_DEPTH} levels", event.start_mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        size = self._sizes.get(id(node))
        if size is None:
            if alias:  # the anchor is still being composed: a node that contains itself expands forever
                raise _Refused(f"alias *{event.anchor} refers to a node that contains it (a recursive alias)",
                               event.start_mark)
            if isinstance(node, yaml.MappingNode):
                size = 1 + sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
            elif isinstance(node, yaml.SequenceNode):
                size = 1 + sum(self._sizes[id(v)] for v in node.value)
            else:
                size = 1
            self._sizes[id(node)] = size
            self._keep.append(node)
        if size > MAX_YAML_NODES:
            raise _Refused(f"the document expands to more than {MAX_YAML_NODES} values through its aliases "
                           f"(*name); a config is a few hundred", event.start_mark)
        return node


def _key_problem(data: Any, where: str = "") -> str | None:
    """The first mapping key in ``data`` (nested) that is not a string, named with its place; ``None`` if none."""
    if isinstance(data, dict):
        for k, v in data.items():
            if not isinstance(k, str):
                return f"{where + ': ' if where else ''}key {_brief(k)} is not a name"
            found = _key_problem(v, _child(where, k) if where else k)
            if found:
                return found
    elif isinstance(data, list):
        for i, v in enumerate(data):
            found = _key_problem(v, f"{where}[{i}]")
            if found:
                return found
    return None


def read_yaml(path: str | Path | importlib.resources.abc.Traversable) -> dict[str, Any]:
    """A YAML file of settings as a dict; ``ConfigError`` (one line) for a missing file, a folder, a file over
    ``MAX_FILE_BYTES``, malformed YAML, a document that expands past the alias bounds (``_BoundedLoader``), a key
    that is not a string, or a document that is not a mapping. ``path`` may be a packaged resource."""
    p = path if isinstance(path, importlib.resources.abc.Traversable) else Path(path)
    if p.is_dir():
        raise ConfigError(f"{p} is a folder; --config takes a YAML file (see raygenre/configs/ for examples)")
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)  # never more: --config /dev/zero is refused, not read forever
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read it ({exc})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{p}: larger than {MAX_FILE_BYTES // 1024} KiB; a config file is a few lines of "
                          f"`key: value`")
    try:
        data = yaml.load(raw.decode("utf-8"), Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: cannot read it ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        what = "refused" if isinstance(exc, _Refused) else "not valid YAML"
        raise ConfigError(f"{p}: {what}{where}: {problem}") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more than 4300 digits
        raise ConfigError(f"{p}: cannot read it ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                          ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected settings as `key: value` lines, got a {type(data).__name__}")
    problem = _key_problem(data)
    if problem:
        raise ConfigError(f"{p}: {problem}; keys are names (quote a key that YAML reads as a number or true/false)")
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


def _gives(data: Any, key: str, section: str) -> bool:
    """Whether ``data`` (one source's settings of ``section``) sets ``key`` (``train.lr``, ``label.extensions[2]``,
    ``tune.search_spaces['a b']``: the section first) or something inside it."""
    for name, index in re.findall(r"\.([^.\[\]]+)|\[([^\]]*)\]", key.removeprefix(section)):
        try:
            part: Any = ast.literal_eval(index) if index else name
        except (ValueError, SyntaxError):
            return False
        inside = (isinstance(data, dict) and data.get(part) is not None
                  or isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data))
        if not inside:
            return False
        data = data[part]
    return True


def _origin(exc: ConfigError, section: str, path: str | Path | None, user: dict[str, Any],
            overrides: dict[str, Any]) -> ConfigError:
    """``exc`` saying where the bad value came from: the user's file (named first, as for its YAML errors),
    the packaged defaults (named after), or the overrides (the command line: the key says enough)."""
    keys = [k for k in (exc.key, *exc.related) if k]
    if any(_gives(overrides, k, section) for k in keys):
        return exc
    if path is not None and any(_gives(user, k, section) for k in keys):
        return ConfigError(f"{path}: {exc}", key=exc.key, related=exc.related)
    return ConfigError(f"{exc} (in raygenre's packaged defaults, {default_file(section)})", key=exc.key,
                       related=exc.related)


@overload
def load_config(cls: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C: ...
@overload
def load_config(cls: str, path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Any: ...
def load_config(cls: type[C] | str, path: str | Path | None = None,
                overrides: dict[str, Any] | None = None) -> C | Any:
    """An instance of ``cls`` (e.g. ``TrainConfig``): its packaged defaults (``defaults``), merged with ``path`` (a
    user YAML, ``--config FILE``) and ``overrides``, every value checked (``_build``). A section name (``"train"``)
    is accepted for ``cls`` too.

    Overrides may be nested (``{"features": {"n_mfcc": 20}}``); ``None`` values are ignored. A bad value is one
    ``ConfigError`` line naming the key, what it allows and, when it came from one, the file.
    """
    cls = _section_class(cls)
    section = section_of(cls)
    data = defaults(cls)
    user = read_yaml(path) if path is not None else {}
    data = _merge(_merge(data, user), overrides or {})
    try:
        return _build(cls, data, section)
    except ConfigError as exc:
        raise _origin(exc, section, path, user, overrides or {}) from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """The dataclass as plain YAML/JSON-ready data (what gets saved beside a run)."""
    return dataclasses.asdict(cfg)
