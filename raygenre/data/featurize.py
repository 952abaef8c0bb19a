"""``raygenre featurize``: a GTZAN-layout dataset -> a Parquet MFCC table + ``features.json``, on Ray Data.

Pipeline: discover tracks (driver, small) -> assign splits per track -> Ray Data ``from_items`` ->
``map_batches`` (decode, mono, resample, cut segments, torchaudio MFCC in batches) -> Parquet.

The table's layout, columns and readers are its contract, in ``raygenre.data.table``; this module writes it.

Bad files never stop the run: each reject is recorded in the manifest with its reason. A track whose MFCC holds
NaN or infinity (finite samples far outside [-1, 1] overflow the power spectrum) is a reject too. The table is written
under a fresh attempt prefix and ``features.json`` is written last, so an interrupted run (on a local disk or
an object store) leaves nothing that reads as finished, and a rerun succeeds and deletes its leftovers.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from raygenre import __version__, storage
from raygenre.config import FeatureParams, FeaturizeConfig, to_dict
from raygenre.data import decoder
from raygenre.data.audio import AudioError, load
from raygenre.data.gtzan import DatasetError, assign_splits, discover
from raygenre.data.mfcc import cut_segments, mfcc_of_segments
from raygenre.data.mfcc import extractor as _extractor  # one MFCC transform per worker process and parameter set
from raygenre.data.table import MANIFEST, TABLE, read_manifest
from raygenre.runtime import ensure_ray

MIN_SEGMENTS_PER_TRACK = 1  # a track with no full segment is a reject ("too short")


@dataclass
class FeaturizeResult:
    """What a featurize run produced (the manifest, plus where it is)."""

    out: str
    manifest: dict[str, Any]
    skipped: bool = False  # True when a finished table with the same parameters was already there
    rejects: list[dict[str, str]] = field(default_factory=list)


def featurize_batch(batch: dict[str, np.ndarray], params: FeatureParams, segments: int,
                    timeout_s: float = 0.0) -> dict[str, np.ndarray]:
    """Ray Data task: a batch of tracks -> one row per kept segment, or one placeholder row per rejected track.

    Placeholder rows carry the reject reason in ``error`` (and ``segment == -1``); they keep the block's
    columns uniform and are filtered out before writing. With ``timeout_s > 0`` each track decodes in the
    worker's decoder child (``raygenre.data.decoder``): a track that hangs or crashes it is rejected alone.
    """
    p = params
    extractor = _extractor(params)
    rows: dict[str, list[Any]] = {k: [] for k in
                                  ("track_id", "genre", "label", "split", "segment", "error", "dropped")}
    mfccs: list[np.ndarray] = []
    for path, track_id, genre, label, split in zip(batch["path"], batch["track_id"], batch["genre"],
                                                   batch["label"], batch["split"], strict=True):
        try:
            # Only what the segments need (+0.1 s so resampling sees past the last one): a whole 20-minute
            # 44.1 kHz stereo FLAC took 606 MiB in one decode; hour-long files would take a worker down.
            y = decoder.run(load, path, p.sample_rate, 0.0, segments * p.segment_seconds + 0.1,
                            timeout_s=timeout_s, setting="featurize.decode_timeout_s")
            pieces, index, dropped = cut_segments(y, p, segments)
            if len(pieces) < MIN_SEGMENTS_PER_TRACK:
                raise AudioError(f"too short: {y.size / p.sample_rate:.2f} s of audio, "
                                 f"a segment needs {p.segment_seconds:g} s")
            # AudioError when any value is NaN/inf (finite but huge samples): the track is a reject, never rows
            # that would make the split's mean/std NaN
            feats = mfcc_of_segments(pieces, extractor)
            error = None
        except AudioError as exc:
            index, dropped, error = [-1], 0, exc.reason
            feats = np.zeros((1, p.frames, p.n_mfcc), dtype=np.float32)
        for seg in index:
            rows["track_id"].append(track_id)
            rows["genre"].append(genre)
            rows["label"].append(label)
            rows["split"].append(split)
            rows["segment"].append(seg)
            rows["error"].append(error)
            rows["dropped"].append(dropped if seg == index[0] else 0)
        mfccs.append(feats)
    out = {k: np.asarray(v, dtype=object) for k, v in rows.items() if k in ("track_id", "genre", "split",
                                                                         "error")}
    out["label"] = np.asarray(rows["label"], dtype=np.int32)
    out["segment"] = np.asarray(rows["segment"], dtype=np.int32)
    out["dropped"] = np.asarray(rows["dropped"], dtype=np.int32)
    out["mfcc"] = np.concatenate(mfccs).astype(np.float32, copy=False)
    return out


def _counts(counter: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """{split: {genre: n}} from a Counter keyed by (split, genre), sorted."""
    out: dict[str, dict[str, int]] = {}
    for (split, genre), n in sorted(counter.items()):
        out.setdefault(split, {})[genre] = n
    return out


def summarize_batch(batch: pa.Table) -> pa.Table:
    """Ray Data task: ``featurize_batch``'s rows (one per segment) -> one row per track of its block.

    Columns: ``track_id``, ``genre``, ``split``, ``segments`` (rows kept), ``dropped`` (segments cut short and
    dropped), ``error`` (the reject reason, or None). The driver gathers only these (~100 bytes a track), never
    the segment rows: at ~0.5 KB of Python objects per segment, gathering those was ~5 GB at 1M tracks.
    Arrow in and out: as numpy, a block whose ``error`` is all null arrives as float NaN, not None.
    """
    keys: dict[str, int] = {}  # track_id -> index of its summary row, in order of appearance
    rows: dict[str, list[Any]] = {k: [] for k in ("track_id", "genre", "split", "segments", "dropped", "error")}
    cols = [batch.column(k).to_pylist() for k in ("track_id", "genre", "split", "error", "dropped")]
    for track_id, genre, split, error, dropped in zip(*cols, strict=True):
        i = keys.get(track_id)
        if i is None:
            i = keys[track_id] = len(rows["track_id"])
            for k, v in (("track_id", track_id), ("genre", genre), ("split", split), ("segments", 0),
                         ("dropped", 0), ("error", error)):
                rows[k].append(v)
        rows["segments"][i] += error is None
        rows["dropped"][i] += int(dropped)
    return pa.table(rows, schema=SUMMARY_SCHEMA)


SUMMARY_SCHEMA = pa.schema([("track_id", pa.string()), ("genre", pa.string()), ("split", pa.string()),
                            ("segments", pa.int64()), ("dropped", pa.int64()), ("error", pa.string())])


def tracks_per_task(tracks: int, most: int, cpus: float) -> int:
    """Tracks per decode + MFCC task: ``most``, or fewer when that would leave CPUs without work.

    Aims at 4 tasks per CPU or more (load balance at the end of the run), but never above ``most``: each
    task has a fixed cost, which at 8 tracks per task halved the throughput on 2 cores.
    """
    return max(1, min(most, math.ceil(tracks / (4 * max(cpus, 1.0)))))


def featurize(dataset: str, out: str, cfg: FeaturizeConfig, *, address: str | None = None,
              overwrite: bool = False, synthetic: bool | None = None) -> FeaturizeResult:
    """Featurize ``dataset`` into ``out`` (local path or URI). Raises ``DatasetError`` if nothing is usable.

    A finished table at ``out`` with identical parameters is kept (``skipped=True``) unless ``overwrite``;
    one with other parameters is replaced only with ``overwrite``. Anything else at ``out`` (another kind of
    data, a run that is writing it) is refused before any work: ``storage.OutputExistsError``.
    ``synthetic`` defaults to whether the dataset carries the synthetic generator's ``SYNTHETIC.md``.
    """
    t0 = time.time()
    tracks, genres = discover(dataset)  # raises DatasetError with what to do
    root = str(dataset)
    if synthetic is None:
        synthetic = storage.exists(storage.join(root, "SYNTHETIC.md"))
    params_block = {"features": dataclasses.asdict(cfg.features), "segments": cfg.segments,
                    "split": dataclasses.asdict(cfg.split)}
    if not overwrite and storage.exists(storage.join(out, MANIFEST)):
        old = read_manifest(out)
        if {k: old.get(k) for k in params_block} == params_block and old.get("dataset") == root:
            return FeaturizeResult(out=out, manifest=old, skipped=True, rejects=old.get("rejects", []))
    with storage.open_output(out, "feature table", overwrite=overwrite, legacy=(TABLE,)) as output:
        return _featurize(dataset, output, cfg, tracks, genres, params_block, synthetic=synthetic, address=address,
                          t0=t0)


def _featurize(dataset: str, output: storage.Output, cfg: FeaturizeConfig, tracks: list[Any], genres: list[str],
               params_block: dict[str, Any], *, synthetic: bool, address: str | None, t0: float) -> FeaturizeResult:
    """The Ray Data pipeline of ``featurize``, writing into ``output`` (an attempt of the output folder)."""
    root = str(dataset)

    split_of, excluded = assign_splits(tracks, cfg.split)
    label_of = {g: i for i, g in enumerate(genres)}
    items = [{"path": t.path, "track_id": t.track_id, "genre": t.genre, "label": label_of[t.genre],
              "split": split_of[t.track_id]} for t in tracks if t.track_id in split_of]

    # Seeded shuffle of the tracks, so that each task (and so each written block) mixes genres and splits:
    # in discovery order every block held one genre, and a reader of one split touched every file anyway.
    # Training does not depend on the order (data.table.read_split_arrays sorts the rows).
    items = [items[i] for i in np.random.default_rng([cfg.split.seed, 0xF1]).permutation(len(items))]
    resources = ensure_ray(address)
    per_task = tracks_per_task(len(items), cfg.tracks_per_batch, resources.get("CPU", 1.0))
    ds = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / per_task))
    ds = ds.map_batches(featurize_batch, fn_kwargs={"params": cfg.features, "segments": cfg.segments,
                                                    "timeout_s": cfg.decode_timeout_s},
                        batch_size=per_task, batch_format="numpy", num_cpus=1)
    ds = ds.materialize()  # decoded once; the table and the summary both read from it

    # One row per track reaches the driver (summarize_batch), never the segments. A track's rows come from one
    # featurize_batch call, but a block boundary could still cut them: rows are merged per track here.
    summary = ds.select_columns(["track_id", "genre", "split", "error", "dropped"]).map_batches(
        summarize_batch, batch_size=None, batch_format="pyarrow", num_cpus=0.5).take_all()
    per_track: dict[str, dict[str, Any]] = {}
    for r in summary:
        seen = per_track.setdefault(r["track_id"], {**r, "segments": 0, "dropped": 0})
        seen["segments"] += int(r["segments"])
        seen["dropped"] += int(r["dropped"])
    by_genre = sorted(per_track.values(), key=lambda r: (r["genre"], r["track_id"]))
    rejects = [{"track_id": r["track_id"], "genre": r["genre"], "reason": r["error"]}
               for r in by_genre if r["error"] is not None]
    good = [r for r in by_genre if r["error"] is None]
    if not good:
        raise DatasetError(f"no usable audio in {dataset}: all {len(items)} tracks were rejected "
                           f"(first reason: {rejects[0]['reason'] if rejects else 'n/a'})")
    segments: Counter[tuple[str, str]] = Counter()
    for r in good:
        segments[(r["split"], r["genre"])] += r["segments"]
    manifest: dict[str, Any] = {
        "raygenre_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dataset": root,
        "synthetic": bool(synthetic),
        **params_block,
        "frames": cfg.features.frames,
        "genres": genres,
        "columns": ["track_id", "genre", "label", "segment", "split", "mfcc"],
        "counts": {
            "tracks": _counts(Counter((r["split"], r["genre"]) for r in good)),
            "segments": _counts(segments),
            "tracks_total": len(good),
            "segments_total": sum(segments.values()),
            "dropped_segments": int(sum(r["dropped"] for r in good)),
            "excluded_tracks": excluded,
            "rejected_tracks": len(rejects),
        },
        "rejects": rejects,
        "config": to_dict(cfg),
        "seconds": None,
    }
    table = ds.filter(expr="segment >= 0").drop_columns(["error", "dropped"])
    tmp_fs, tmp_inner = storage.resolve(storage.join(output.dir, TABLE))
    table.write_parquet(tmp_inner, filesystem=tmp_fs)
    manifest["seconds"] = round(time.time() - t0, 2)
    manifest = output.commit(manifest)  # last: marks the table finished
    return FeaturizeResult(out=output.root, manifest=manifest, rejects=rejects)
