"""Model artifacts: one folder holding ``model.safetensors`` + ``model.json``; the only way models are loaded.

``model.safetensors``: the model's state dict (BatchNorm running statistics included) plus ``norm.mean`` and
``norm.std``, float32 (n_mfcc,): the per-coefficient standardisation computed on the training split.

``model.json``: ``model`` (ann/cnn/lstm), ``hparams`` (``hidden`` and ``dropout`` rebuild the network; the
rest records how it was trained), ``features`` (the FeatureParams fields) and ``frames`` (the feature contract,
as in the feature table's ``features.json``), ``genres`` (label order), ``synthetic`` (trained on the
built-in synthetic data), ``metrics`` (test results), library versions and the creation time.

Loading executes nothing from the files: weights are read with ``safetensors`` only, never ``torch.load``
or pickle, so a checkpoint from an untrusted source cannot run code. The folder may be a local path or a
``pyarrow.fs`` URI. It is committed with ``storage.open_output``: the weights go under ``attempts/<id>/`` and
``model.json`` (at the top, written last) names that attempt, so a model appears complete or not at all, on
object stores too. Folders of the old layout (both files at the top) still load.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from raygenre import __version__, storage, workspace
from raygenre.config import ConfigError, FeatureParams
from raygenre.model.networks import MODELS, build_model, unwrap

WEIGHTS = "model.safetensors"
META = "model.json"
FORMAT = "raygenre-model"
FORMAT_VERSION = 1
# Segments per forward pass on the CPU: small batches stay in cache. 3,000 cnn segments on one thread take
# 2.2 s in chunks of 32-64 and 4.4 s in one call (bench/label.py's model actor spent most of its time here).
CPU_CHUNK = 64
NORM_MEAN, NORM_STD = "norm.mean", "norm.std"
MAX_HIDDEN = 1 << 20  # far above any width raygenre trains; a model.json asking more is damaged or hostile


class ArtifactError(ValueError):
    """A model folder is missing, incomplete, unsafe or inconsistent. The message is redacted
    (``storage.redact``): it names the folder, which may be a URI with credentials."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(storage.redact(a) if isinstance(a, str) else a for a in args))


@dataclass
class LoadedModel:
    """A trained model ready for inference: ``predict_proba`` standardises MFCC and returns probabilities."""

    module: nn.Module  # in eval mode
    name: str
    hparams: dict[str, Any]
    features: FeatureParams
    genres: list[str]
    mean: torch.Tensor  # float32 (n_mfcc,)
    std: torch.Tensor  # float32 (n_mfcc,)
    meta: dict[str, Any] = field(default_factory=dict)  # the whole model.json

    @property
    def frames(self) -> int:
        return int(self.meta.get("frames") or self.features.frames)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def to(self, device: str | torch.device) -> LoadedModel:
        """Move the network and the normalisation statistics to ``device``; returns self."""
        self.module.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    @torch.inference_mode()
    def predict_proba(self, mfcc: np.ndarray | torch.Tensor) -> np.ndarray:
        """MFCC segments (B, frames, n_mfcc), unstandardised as the feature table stores them, -> float32
        probabilities (B, n_genres) in ``genres`` order."""
        if isinstance(mfcc, np.ndarray) and not mfcc.flags.writeable:
            mfcc = mfcc.copy()  # e.g. zero-copy Arrow buffers; torch warns on read-only arrays
        x = torch.as_tensor(mfcc, dtype=torch.float32, device=self.device)
        if x.ndim == 2:
            x = x[None]
        want = (self.frames, self.features.n_mfcc)
        if x.ndim != 3 or tuple(x.shape[1:]) != want:
            raise ValueError(f"expected MFCC of shape (batch, {want[0]}, {want[1]}), got {tuple(x.shape)}")
        if len(x) == 0:
            return np.zeros((0, len(self.genres)), dtype=np.float32)
        step = CPU_CHUNK if x.device.type == "cpu" else len(x)  # a GPU wants the whole batch at once
        with torch.inference_mode():
            probs = [torch.softmax(self.module((c - self.mean) / self.std).float(), dim=-1) for c in x.split(step)]
        return torch.cat(probs).cpu().numpy()


# Top-level files of the old layout that a new commit makes stale (evaluate wrote the last two beside the model).
LEGACY = (WEIGHTS, "metrics.json", "confusion.png")


def save_model(dir: str, model: nn.Module, *, name: str, hparams: dict[str, Any],
               features: FeatureParams | dict[str, Any], genres: list[str], mean: Any, std: Any,
               metrics: dict[str, Any], synthetic: bool, extra: dict[str, Any] | None = None, overwrite: bool = True,
               output: storage.Output | None = None) -> None:
    """Write the artifact folder ``dir`` (local path or URI) atomically.

    ``overwrite``: replace a model already at ``dir`` (another kind of data there is always refused:
    ``storage.OutputExistsError``). ``output``: an already opened ``storage.open_output(dir, "model")`` to
    write into and commit (a caller that held the output for a whole training run), else one is opened here.

    Every parameter after ``model`` is keyword-only. ``features``: the feature table's ``FeatureParams``, or its
    fields as a dict (a ``frames`` key may be included; it must agree). ``mean``/``std``: the train split's
    per-coefficient statistics, (n_mfcc,).
    ``hparams`` must hold ``hidden`` and ``dropout`` (used to rebuild the network). ``model`` may be wrapped in
    DistributedDataParallel. ``extra``: more model.json keys (e.g. ``features_dir``); they cannot replace
    the keys above.
    """
    if name not in MODELS:
        raise ArtifactError(f"unknown model name {name!r}; expected one of {', '.join(MODELS)}")
    if isinstance(features, FeatureParams):
        params, frames = features, features.frames
    else:
        try:
            params = FeatureParams.from_dict(features)
        except ConfigError as exc:
            raise ArtifactError(str(exc)) from None
        frames = int(features.get("frames", params.frames))
    if frames != params.frames:
        raise ArtifactError(f"features say frames={frames} but the parameters give {params.frames}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    if NORM_MEAN in tensors or NORM_STD in tensors:
        raise ArtifactError(f"the model's state dict already has {NORM_MEAN}/{NORM_STD} entries")
    tensors[NORM_MEAN] = torch.as_tensor(np.asarray(mean, dtype=np.float32)).reshape(-1).contiguous()
    tensors[NORM_STD] = torch.as_tensor(np.asarray(std, dtype=np.float32)).reshape(-1).contiguous()
    for key in (NORM_MEAN, NORM_STD):
        if tensors[key].numel() != params.n_mfcc:
            raise ArtifactError(f"{key} has {tensors[key].numel()} values; n_mfcc is {params.n_mfcc}")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": name,
        "hparams": dict(hparams),
        "features": dataclasses.asdict(params),
        "frames": frames,
        "genres": list(genres),
        "n_genres": len(genres),
        "synthetic": bool(synthetic),
        "metrics": metrics,
        "versions": {"raygenre": __version__, "torch": torch.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    meta = {**_redacted(extra or {}), **meta}
    blob = st_save(tensors, metadata={"format": "pt", "raygenre_format": FORMAT})
    if output is not None:
        storage.write_bytes_atomic(storage.join(output.dir, WEIGHTS), blob, root=output.root)
        output.commit(meta)  # last, like every manifest here
        return
    with storage.open_output(dir, "model", overwrite=overwrite, legacy=LEGACY) as out:
        storage.write_bytes_atomic(storage.join(out.dir, WEIGHTS), blob, root=out.root)
        out.commit(meta)


def _redacted(extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` with credentials removed from every string value (``features_dir``, ``run_dir`` may be URIs
    like ``s3://KEY:SECRET@bucket/x``; a model folder is shared, its model.json must not carry them)."""
    return {k: storage.redact(v) if isinstance(v, str) else v for k, v in extra.items()}


def read_meta(path: str) -> dict[str, Any]:
    """``model.json`` of a model folder; ``ArtifactError`` when the folder or the file is missing or bad."""
    path = str(path)
    if not storage.exists(path):
        raise ArtifactError(f"model folder {path} does not exist")
    meta_path = storage.join(path, META)
    if not storage.exists(meta_path):
        raise ArtifactError(f"{path} is not a model folder: {META} is missing "
                            f"(a model folder holds {WEIGHTS} and {META}; train one with `raygenre train`)")
    try:
        meta = json.loads(storage.read_text(meta_path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{storage.redact(meta_path)} is not valid JSON: {exc}") from None
    except IsADirectoryError:
        raise ArtifactError(f"{storage.redact(meta_path)} is a folder, not a file: {path} is not a model folder") \
            from None
    if not isinstance(meta, dict):
        raise ArtifactError(f"{storage.redact(meta_path)} is not a JSON object (got {type(meta).__name__})")
    return meta


def files_dir(path: str, meta: dict[str, Any] | None = None) -> str:
    """The folder holding a model's committed files (weights, evaluate's metrics.json and confusion.png):
    the attempt ``model.json`` names, or the folder itself for the old layout."""
    try:
        return storage.committed_path(path, meta if meta is not None else read_meta(path))
    except ValueError as exc:
        raise ArtifactError(str(exc)) from None


def weights_path(path: str, meta: dict[str, Any] | None = None) -> str:
    """``model.safetensors`` of a committed model folder."""
    return storage.join(files_dir(path, meta), WEIGHTS)


def copy_model(src: str, dest: str, *, overwrite: bool = True) -> None:
    """Copy the committed model at ``src`` (local or URI) to ``dest`` with the same commit protocol."""
    meta = read_meta(src)
    src_fs, src_inner = storage.resolve(files_dir(src, meta))
    with storage.open_output(dest, "model", overwrite=overwrite, legacy=LEGACY) as out:
        dst_fs, dst_inner = storage.resolve(out.dir)
        pafs.copy_files(src_inner, dst_inner, source_filesystem=src_fs, destination_filesystem=dst_fs)
        out.commit(_redacted({k: v for k, v in meta.items() if k != "attempt"}))


def set_default_model(src: str) -> str:
    """Copy the model at ``src`` to the workspace's default model (what `raygenre label` uses without
    ``--model``), replacing the one there (raygenre's own folder); returns the default model's folder."""
    dest = str(workspace.default_model_dir())
    copy_model(src, dest, overwrite=True)
    return dest


def _read_tensors(path: str) -> dict[str, torch.Tensor]:
    data = storage.read_bytes(path)
    try:
        return st_load(data)
    except Exception as exc:  # safetensors raises its own error types; none of them runs code
        header = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
        if data[8:9] == b"{" and header > 0:  # a safetensors header: the file was cut short or damaged
            raise ArtifactError(f"{path} is a truncated or damaged safetensors file ({len(data)} bytes; {exc}); "
                                f"copy or export the model again") from None
        kind = ("a zip archive (torch.save format)" if data[:4] == b"PK\x03\x04"
                else "a pickle" if data[:1] == b"\x80" else "not parseable")
        raise ArtifactError(
            f"{path} is not a safetensors file ({kind}: {exc}); refusing to load pickled checkpoints because "
            f"they can run code. Re-export the model with raygenre (weights are saved with safetensors)."
        ) from None


def _int(value: Any, where: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"between {low} and {high}"
        raise ArtifactError(f"{where} must be an integer {rng}, got {value!r}")
    return value


def check_meta(meta: Any, where: str) -> tuple[str, FeatureParams, list[str], dict[str, Any], int]:
    """Validate ``model.json`` (types, ranges, consistency) -> (model, features, genres, hparams, frames).

    Each failure is one ``ArtifactError`` line naming the field, raised before any weights or Ray are touched.
    """
    if not isinstance(meta, dict):
        raise ArtifactError(f"{where}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format", FORMAT) != FORMAT:
        raise ArtifactError(f"{where}: format {meta.get('format')!r} is not {FORMAT!r}")
    version = meta.get("format_version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ArtifactError(f"{where}: format_version {version!r} is unknown to raygenre {__version__} "
                            f"(it reads 1..{FORMAT_VERSION}); a newer raygenre wrote it: upgrade")
    name = meta.get("model")
    if name not in MODELS:
        raise ArtifactError(f"{where}: unknown model {name!r}; this raygenre knows {', '.join(MODELS)}")
    feats = meta.get("features")
    fields = [f.name for f in dataclasses.fields(FeatureParams)]
    if not isinstance(feats, dict) or set(feats) != set(fields):
        raise ArtifactError(f"{where}: features must be an object with exactly {fields}, got {feats!r}")
    sr = _int(feats["sample_rate"], f"{where}: features.sample_rate", 1000, 768_000)
    n_fft = _int(feats["n_fft"], f"{where}: features.n_fft", 16)
    hop = _int(feats["hop_length"], f"{where}: features.hop_length", 1, n_fft)
    n_mels = _int(feats["n_mels"], f"{where}: features.n_mels", 1, n_fft // 2 + 1)
    n_mfcc = _int(feats["n_mfcc"], f"{where}: features.n_mfcc", 1, n_mels)
    seconds = feats["segment_seconds"]
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= 600:
        raise ArtifactError(f"{where}: features.segment_seconds must be a number of seconds in (0, 600], "
                            f"got {seconds!r}")
    features = FeatureParams.from_dict({"sample_rate": sr, "n_mfcc": n_mfcc, "n_fft": n_fft, "hop_length": hop,
                                        "n_mels": n_mels, "segment_seconds": float(seconds)}, f"{where}: features")
    frames = _int(meta.get("frames", features.frames), f"{where}: frames", 1)
    if frames != features.frames:
        raise ArtifactError(f"{where}: frames is {frames} but the feature parameters give {features.frames}")
    genres = meta.get("genres")
    if (not isinstance(genres, list) or len(genres) < 2
            or not all(isinstance(g, str) and g.strip() for g in genres)):
        raise ArtifactError(f"{where}: genres must be a list of at least 2 non-empty strings, got {genres!r}")
    if len(set(genres)) != len(genres):
        raise ArtifactError(f"{where}: genres lists {sorted({g for g in genres if genres.count(g) > 1})} twice")
    hparams = meta.get("hparams")
    if not isinstance(hparams, dict):
        raise ArtifactError(f"{where}: hparams must be an object, got {hparams!r}")
    if hparams.get("hidden") is not None:  # the weights' shapes are checked too, before the network is built
        _int(hparams["hidden"], f"{where}: hparams.hidden", 1, MAX_HIDDEN)
    dropout = hparams.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ArtifactError(f"{where}: hparams.dropout must be a number in [0, 1), got {dropout!r}")
    return name, features, list(genres), dict(hparams), frames


def check_tensors(tensors: dict[str, torch.Tensor], n_mfcc: int, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pop and check the standardisation statistics; every weight must be finite. Returns (mean, std)."""
    try:
        mean, std = tensors.pop(NORM_MEAN).float(), tensors.pop(NORM_STD).float()
    except KeyError:
        raise ArtifactError(f"{where} lacks {NORM_MEAN}/{NORM_STD} (not a raygenre model)") from None
    for key, t in ((NORM_MEAN, mean), (NORM_STD, std)):
        if t.shape != (n_mfcc,):
            raise ArtifactError(f"{where}: {key} has shape {tuple(t.shape)}; n_mfcc is {n_mfcc}")
        if not torch.isfinite(t).all():
            raise ArtifactError(f"{where}: {key} holds non-finite values")
    if not (std > 0).all():
        raise ArtifactError(f"{where}: {NORM_STD} must be positive (it divides the input), got {std.tolist()}")
    for key, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ArtifactError(f"{where}: weight {key} holds non-finite values")
    return mean, std


def _check_shapes(skeleton: nn.Module, tensors: dict[str, torch.Tensor], mismatch: str) -> None:
    """The weights' names and shapes against a network built on the meta device; ``ArtifactError`` naming the
    first difference."""
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in tensors.items()}
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or unexpected:
        raise ArtifactError(f"{mismatch}: missing weights {missing[:3]}, unexpected weights {unexpected[:3]}")
    for key, shape in want.items():
        if have[key] != shape:
            raise ArtifactError(f"{mismatch}: {key} is {have[key]} in the file but {shape} for these "
                                f"hyperparameters")


def load_model(path: str) -> LoadedModel:
    """Load an artifact folder (local path or URI) written by ``save_model``; the module is in eval mode, on CPU.

    ``model.json`` and the weights are checked strictly first (``check_meta``, ``check_tensors``): a damaged or
    tampered artifact is one ``ArtifactError`` line naming what is wrong.
    """
    path = str(path)
    meta = read_meta(path)
    meta_path = storage.join(path, META)
    name, features, genres, hparams, frames = check_meta(meta, meta_path)
    weights = weights_path(path, meta)
    fs, inner = storage.resolve(weights)
    kind = fs.get_file_info(inner).type
    if kind == pafs.FileType.NotFound:
        raise ArtifactError(f"{path} is not a model folder: {WEIGHTS} is missing "
                            f"(a model folder holds {WEIGHTS} and {META}; train one with `raygenre train`)")
    if kind != pafs.FileType.File:
        raise ArtifactError(f"{storage.redact(weights)} is not a file (a folder?): {path} is not a model folder "
                            f"raygenre wrote")
    tensors = _read_tensors(weights)
    mean, std = check_tensors(tensors, features.n_mfcc, weights)
    mismatch = f"{storage.redact(weights)} does not match a {name} model of {frames} frames x " \
               f"{features.n_mfcc} coefficients with the hyperparameters in {META}"
    try:
        # First on the meta device (shapes only, no memory): a model.json whose hparams ask for a network far
        # larger than its weights (hidden: 3000000, ~20 GB) is refused before anything is allocated.
        with torch.device("meta"):
            skeleton = build_model(name, frames, features.n_mfcc, len(genres), hidden=hparams.get("hidden"),
                                   dropout=float(hparams.get("dropout", 0.0)))
        _check_shapes(skeleton, tensors, mismatch)
        module = build_model(name, frames, features.n_mfcc, len(genres), hidden=hparams.get("hidden"),
                             dropout=float(hparams.get("dropout", 0.0)))
        module.load_state_dict(tensors, strict=True)
    except (RuntimeError, ValueError) as exc:
        if isinstance(exc, ArtifactError):
            raise
        first = str(exc).strip().splitlines()[0]
        raise ArtifactError(f"{mismatch}: {first}") from None
    module.eval()
    return LoadedModel(module=module, name=name, hparams=hparams, features=features, genres=genres,
                       mean=mean, std=std, meta=meta)
