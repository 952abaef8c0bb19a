"""Decoding a batch of files into MFCC windows, and the model that turns them into one row per file.

``decode_batch`` (a Ray Data task) decodes each file's header and ``count`` evenly spread 3 s windows in the
worker's decoder child (``raygenre.data.decoder``: a file that hangs or crashes its decoder fails alone) and computes
their MFCCs. ``Predictor`` (an actor: loads the model in ``__init__``, predicts in ``__call__``) averages the
softmax over a file's windows. Every file that cannot be labelled gets an error row; nothing here raises for a
bad file. Pure: no Ray.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np
import pyarrow as pa

from raygenre import storage
from raygenre.config import FeatureParams
from raygenre.data import decoder
from raygenre.data.audio import AudioError, info, load_windows
from raygenre.data.mfcc import extractor, frames_for, mfcc_of_segments, window_starts
from raygenre.label.parts import output_schema
from raygenre.model.artifact import LoadedModel, load_model, weights_path


def _errors(column: Any) -> list[str | None]:
    """An ``error`` column as str-or-None (an all-null column can reach a numpy batch as float NaN)."""
    return [e if isinstance(e, str) else None for e in column]


def decode_file(path: str, params: FeatureParams, count: int, timeout_s: float = 0.0) -> tuple[np.ndarray, float]:
    """MFCC of up to ``count`` segments spread evenly across ``path``: ((k, frames, n_mfcc) float32, duration s).

    Only the windows are decoded where the format can seek. With ``timeout_s > 0`` the decoding runs in the
    worker's decoder child (``raygenre.data.decoder``) and must finish within ``timeout_s`` seconds; 0 decodes
    in this process. Raises ``AudioError`` for unusable files, including a track shorter than one segment,
    a file that hangs or crashes its decoder, and finite samples whose MFCC is not (``NON_FINITE_MFCC``).
    """
    deadline = time.monotonic() + timeout_s  # one limit for the whole file: header and windows
    limit = {"timeout_s": timeout_s, "deadline": deadline, "setting": "label.decode_timeout_s"}
    header = decoder.run(info, path, **limit)
    duration = header.duration_s
    starts = window_starts(duration, params, count)
    if not starts:
        raise _with_duration(AudioError(f"too short: {duration:.2f} s of audio; a segment needs "
                                        f"{params.segment_seconds:g} s"), duration)
    try:
        pieces = decoder.run(load_windows, path, params.sample_rate, starts, params.segment_seconds, header, **limit)
    except AudioError as exc:
        raise _with_duration(exc, duration) from None
    full = [p for p in pieces if p.size and frames_for(p.size, params) == params.frames]
    if not full:
        raise _with_duration(AudioError(f"no full {params.segment_seconds:g} s segment could be decoded "
                                        f"(header says {duration:.2f} s; the data is shorter or damaged)"), duration)
    try:
        feats = mfcc_of_segments(full, extractor(params))  # AudioError when the MFCC is not finite
    except AudioError as exc:
        raise _with_duration(exc, duration) from None
    return feats, duration


def _with_duration(exc: AudioError, duration_s: float) -> AudioError:
    """Attach the header's duration to an error, so that error rows still report it."""
    exc.duration_s = duration_s  # type: ignore[attr-defined]
    return exc


def decode_batch(batch: dict[str, np.ndarray], params: FeatureParams, count: int,
                 timeout_s: float = 0.0) -> dict[str, np.ndarray]:
    """Ray Data task: scan rows -> the same rows plus ``duration_s``, ``segments_used`` and ``mfcc``.

    ``mfcc``: float32 (B, count, frames, n_mfcc), zero past ``segments_used`` (0 for error rows). A file that
    fails, however it fails (its decoder hangs past ``timeout_s`` or crashes included), becomes an error row;
    the rest of the batch is decoded as usual.
    """
    n = len(batch["path"])
    mfcc = np.zeros((n, count, params.frames, params.n_mfcc), dtype=np.float32)
    used = np.zeros(n, dtype=np.int32)
    duration = np.full(n, np.nan, dtype=np.float64)
    errors = _errors(batch["error"])
    for i, path in enumerate(batch["path"]):
        if errors[i] is not None:
            continue
        try:
            feats, duration[i] = decode_file(str(path), params, count, timeout_s)
            mfcc[i, : len(feats)] = feats
            used[i] = len(feats)
        except AudioError as exc:
            errors[i] = exc.reason
            duration[i] = getattr(exc, "duration_s", np.nan)
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop the run
            errors[i] = f"could not decode: {type(exc).__name__}: {exc}"
    out = dict(batch)
    out.update(error=np.asarray(errors, dtype=object), duration_s=duration, segments_used=used, mfcc=mfcc)
    return out


def model_id(model: LoadedModel, model_dir: str) -> str:
    """The ``model`` column: ``<name>-<created>-<sha256 of the weights, 8 hex>`` (an ``id`` in the metadata wins)."""
    meta = model.meta or {}
    if meta.get("id"):
        return str(meta["id"])
    digest = hashlib.sha256(storage.read_bytes(weights_path(model_dir, meta or None))).hexdigest()[:8]
    created = str(meta.get("created", "")).replace(":", "")[:17]
    return "-".join(x for x in (str(model.name), created, digest) if x)


def mean_per_file(probs: np.ndarray, used: np.ndarray) -> np.ndarray:
    """Mean of segment probabilities per file: probs (sum(used), G), used (B,) -> (B, G), NaN where used == 0."""
    out = np.full((len(used), probs.shape[1]), np.nan, dtype=np.float32)
    ok = used > 0
    if ok.any():
        starts = np.concatenate([[0], np.cumsum(used[ok])[:-1]])
        out[ok] = np.add.reduceat(probs, starts, axis=0) / used[ok, None]
    return out


class Predictor:
    """Actor: loads the model once, then turns decoded batches into output rows (a ``pa.Table``)."""

    def __init__(self, model_dir: str, model_id: str, device: str = "cpu", starts: Any = None) -> None:
        if starts is not None:  # label.watchdog.ActorStarts: the driver stops the run when the actors keep dying
            starts.add.remote()
        self.model = load_model(model_dir).to(device)
        self.genres = list(self.model.genres)
        self.id = model_id
        self.schema = output_schema(self.genres).append(pa.field("replaces", pa.bool_()))

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        used = np.asarray(batch["segments_used"], dtype=np.int64)
        mfcc = batch["mfcc"]
        segs = [mfcc[i, :k] for i, k in enumerate(used) if k > 0]
        probs = (self.model.predict_proba(np.concatenate(segs)) if segs
                 else np.zeros((0, len(self.genres)), dtype=np.float32))
        mean = mean_per_file(np.asarray(probs, dtype=np.float32), used)
        errors = _errors(batch["error"])
        # A model that outputs NaN/inf for a file must not give it a silent genre (argmax of NaN is genre 0).
        broken = (used > 0) & ~np.isfinite(mean).all(axis=1)
        for i in np.flatnonzero(broken):
            errors[i] = "the model gave non-finite probabilities for this file (damaged model or input)"
        ok = (used > 0) & ~broken
        best = np.where(ok, np.nan_to_num(mean).argmax(axis=1), 0)
        cols: dict[str, Any] = {
            "path": batch["path"],
            "genre": (top := [self.genres[b] if k else None for b, k in zip(best, ok, strict=True)]),
            "top_genre": top,  # the same in the parts: consolidate turns genre into "unknown" below the threshold
            "confidence": pa.array(np.nan_to_num(mean).max(axis=1), mask=~ok),
            **{f"p_{g}": pa.array(mean[:, j], mask=~ok) for j, g in enumerate(self.genres)},
            "duration_s": pa.array(batch["duration_s"], from_pandas=True),
            "segments_used": used.astype(np.int32),
            "error": errors,
            "model": [self.id] * len(used),
            "size": batch["size"],
            "mtime": batch["mtime"],
            "replaces": batch["replaces"],
        }
        return pa.table({k: pa.array(v) if not isinstance(v, pa.Array) else v for k, v in cols.items()}
                        ).cast(self.schema)
