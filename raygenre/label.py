"""``raygenre label``: batch inference over an audio library of any size and layout, on Ray Data.

Pipeline (every stage streams; nothing holds the library's list of files)::

    LibraryScan (read tasks, 0 CPU, 2 at a time)   walk the library, yield small blocks of paths
      -> decode_batch (tasks)                        header, evenly spread windows (seeking decode), mono,
                                                     resample to the model's rate, MFCC
      -> Predictor (actor pool, model loaded once)   softmax per segment, mean over a file's segments
      -> driver                                      rows written in parts, atomically, as they complete

Scan: the library's top-level entries are split into ``SCAN_SHARDS`` shards by a hash of their name; read
task *k* lists the top level itself (streaming ``os.scandir``) and walks only the subtrees of its shard,
yielding blocks of ``SCAN_BLOCK_ROWS`` paths. Hidden files and folders (``.name``) are skipped; symlinked
folders are followed unless they point back into the library or into one of their own ancestors (a loop).

Output: one row per file (``output_schema``). Results land in ``OUT.parts/part-<n>-<uuid>.parquet`` (each
part is written under a temporary name and renamed, so it is whole or absent) and, at the end, are
consolidated into ``OUT`` (atomically) as Parquet, CSV or JSON Lines. ``OUT.parts/`` stays as the resume
state: a rerun with the same ``OUT`` skips files whose (path, size, mtime) already has a row and appends the
rest; a file that changed since is labelled again and its old row dropped.

Bad files never stop a run: each gets a row whose ``error`` says why (``raygenre.audio.AudioError.reason``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import io
import json
import os
import re
import stat
import sys
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raygenre import storage, workspace
from raygenre.config import FeatureParams, LabelConfig
from raygenre.data.audio import AudioError

if TYPE_CHECKING:  # pragma: no cover
    from raygenre.data.mfcc import MfccExtractor
    from raygenre.model.artifact import LoadedModel

FORMATS: dict[str, str] = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl"}
SCAN_SHARDS = 8  # read tasks; each walks the subtrees of ~1/8 of the top-level entries
SCAN_CONCURRENCY = 2  # scan tasks running at once (they take no CPU slot: see _build_dataset)
SCAN_BLOCK_ROWS = 8  # paths per scan block = files per decode task: small, so decoding spreads over workers
FLUSH_SECONDS = 30.0  # a part is also written when this long has passed since the last one
PARTS_SUFFIX = ".parts"
RUN_FILE = "run.json"  # in OUT.parts/: the model and settings the parts were made with
LOCK_FILE = ".lock"
BROKEN_DIR = "broken"  # in OUT.parts/: parts found unreadable on resume, kept for inspection
MAX_ERROR_EXAMPLES = 5


class NoModelError(FileNotFoundError):
    """There is no model to label with (none given and none in the workspace)."""


class ResumeMismatchError(ValueError):
    """``OUT.parts/`` holds results made with another model or other settings."""


@dataclass
class LabelResult:
    """What a label run produced. Counts cover the whole output (this run's rows and resumed ones)."""

    out: str  # the consolidated output file
    format: str  # parquet | csv | jsonl
    files: int  # rows in the output (one per file)
    new: int  # rows labelled by this run
    errors: int  # rows whose ``error`` is set
    genres: list[tuple[str, int]]  # (genre, files) for labelled rows, most common first
    audio_hours: float  # audio labelled by this run
    seconds: float  # wall time of this run
    model: str  # model id written in the ``model`` column
    synthetic: bool  # the model was trained on synthetic data
    error_examples: list[tuple[str, str]] = field(default_factory=list)  # (path, error), a few
    set_aside: list[str] = field(default_factory=list)  # unreadable parts moved to PARTS/broken/ (relabelled)

    @property
    def resumed(self) -> int:
        """Rows that came from earlier runs (skipped this time)."""
        return self.files - self.new


# ------------------------------------------------------------------------------------------------ paths
def default_out(fmt: str) -> str:
    """``labels.<ext>`` in the current folder."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return f"labels{FORMATS[fmt]}"


def format_of(out: str) -> str | None:
    """The format implied by ``out``'s extension (``.json`` counts as JSON Lines), else ``None``."""
    suffix = Path(str(out)).suffix.lower()
    return {".json": "jsonl", ".ndjson": "jsonl"}.get(suffix) or next(
        (f for f, ext in FORMATS.items() if ext == suffix), None)


def parts_dir_of(out: str) -> str:
    """``OUT.parts``: where results are written as they complete (and the resume state)."""
    return f"{str(out).rstrip('/')}{PARTS_SUFFIX}"


def resolve_model_dir(model_dir: str | None) -> str:
    """The model folder to use: ``model_dir``, else the workspace's best model. Raises ``NoModelError``."""
    hint = ("Train one with `raygenre train --model cnn` (or find the best with `raygenre tune`), "
            "or pass --model MODEL_DIR.")
    if model_dir is None:
        best = workspace.default_model_dir()
        if not (best / "model.json").exists():
            raise NoModelError(f"no model to label with: the workspace has no trained model at {best}. {hint}")
        return str(best)
    if not storage.exists(storage.join(model_dir, "model.json")):
        raise NoModelError(f"no model at {model_dir} (it has no model.json). {hint}")
    return str(model_dir)


def _library_root(library: str) -> str:
    """Absolute local path of the library; a clear error when it is not a readable local folder."""
    local = storage.local_path(library)
    if local is None:
        raise ValueError(f"{library}: label decodes with libsndfile/ffmpeg, which need a local path "
                         f"(or a shared mount on a cluster), not a remote URI")
    if not local.exists():
        raise FileNotFoundError(f"library not found: {library}")
    if not local.is_dir():
        raise NotADirectoryError(f"{library} is not a folder; give the folder that holds your music")
    if not os.access(local, os.R_OK | os.X_OK):
        raise ValueError(f"{library}: permission denied (cannot list the folder)")
    return str(local)


# ------------------------------------------------------------------------------------------------- scan
def shard_of(name: str, shards: int) -> int:
    """Stable shard (0..shards-1) of a top-level entry name."""
    return zlib.crc32(os.fsencode(name)) % shards


def _shard_of_path(path: str, prefix: str, shards: int) -> int | None:
    """Shard of a stored absolute path under ``prefix`` (root + "/"), ``None`` when it is elsewhere."""
    if not path.startswith(prefix):
        return None
    return shard_of(path[len(prefix):].split("/", 1)[0], shards)


def _safe_str(path: str) -> tuple[str, str | None]:
    """(path as valid UTF-8, error): a name that is not UTF-8 cannot be stored, so it becomes an error row.

    Its undecodable bytes are written as ``\\xNN`` (``backslashreplace``): the stored string stays unique per
    file and maps back to the file (``_on_disk``), so resume finds its row and consolidation can tell it exists.
    """
    try:
        path.encode("utf-8")
        return path, None
    except UnicodeEncodeError:
        shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return shown, "file name is not valid UTF-8: rename the file to label it"


_ESCAPED = re.compile(r"\\x([0-9a-f]{2})")


def _on_disk(stored: str) -> bool:
    """Whether the file a row's ``path`` names is still there (a link counts, even a broken one)."""
    if os.path.lexists(stored):
        return True
    original = _ESCAPED.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)), stored)  # undo backslashreplace
    return original != stored and os.path.lexists(original)


@dataclass(frozen=True)
class _Found:
    """One candidate row from the scan."""

    path: str
    size: int  # bytes
    mtime: float  # seconds since the epoch (st_mtime)
    error: str | None = None


def _dir_id(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _inside(path: str, root_real: str) -> bool:
    return path == root_real or path.startswith(root_real.rstrip("/") + "/")


def _consider(entry: os.DirEntry[str], ancestors: tuple[tuple[int, int], ...], root_real: str,
              exts: frozenset[str], stack: list[tuple[str, tuple[tuple[int, int], ...]]]) -> Iterator[_Found]:
    """Queue a sub-folder on ``stack`` or yield an audio file (by extension); ignore anything else."""
    try:
        is_dir = entry.is_dir(follow_symlinks=True)
    except OSError:
        is_dir = False
    if is_dir:
        try:
            if entry.is_symlink() and _inside(os.path.realpath(entry.path), root_real):
                return  # points back into the library: walked anyway (or a loop)
            did = _dir_id(entry.path)
        except OSError:
            return
        if did not in ancestors:  # a symlink to one of its own ancestors would loop
            stack.append((entry.path, (*ancestors, did)))
        return
    if os.path.splitext(entry.name)[1].lower().lstrip(".") not in exts:
        return
    try:
        st = entry.stat(follow_symlinks=True)
        if stat.S_ISREG(st.st_mode):
            yield _Found(entry.path, int(st.st_size), float(st.st_mtime))
        else:  # a FIFO or device named like audio would block the decoder forever
            yield _Found(entry.path, 0, float(st.st_mtime), "not a regular file (a pipe, socket or device)")
    except FileNotFoundError:
        yield _Found(entry.path, 0, 0.0, "broken symbolic link: its target does not exist")
    except OSError as exc:
        yield _Found(entry.path, 0, 0.0, f"cannot read the file's information: {exc.strerror or exc}")


def walk_shard(root: str, shard: int, shards: int, exts: frozenset[str]) -> Iterator[_Found]:
    """Audio files under the top-level entries of ``root`` in ``shard``, streamed (depth first).

    Holds one open directory and a stack of pending sub-folders, never a list of files. A folder that
    cannot be listed yields one error row (its path, size 0).
    """
    root_real = os.path.realpath(root)
    base = (_dir_id(root),)
    stack: list[tuple[str, tuple[tuple[int, int], ...]]] = []
    with os.scandir(root) as top:
        for entry in top:
            # by the stored (UTF-8-safe) name: what load_done shards the rows of earlier runs by
            if entry.name.startswith(".") or shard_of(_safe_str(entry.name)[0], shards) != shard:
                continue
            yield from _consider(entry, base, root_real, exts, stack)
            while stack:
                folder, ancestors = stack.pop()
                try:
                    with os.scandir(folder) as it:
                        for sub in it:
                            if not sub.name.startswith("."):
                                yield from _consider(sub, ancestors, root_real, exts, stack)
                except OSError as exc:
                    yield _Found(folder, 0, 0.0, f"cannot list this folder: {exc.strerror or exc}")


def list_parts(parts_dir: str) -> list[str]:
    """Finished part files in ``parts_dir`` (sorted; temporaries excluded), as paths/URIs."""
    fs, inner = storage.resolve(parts_dir)
    if fs.get_file_info(inner).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(inner))
    names = sorted(i.base_name for i in infos if i.base_name.startswith("part-") and i.base_name.endswith(".parquet"))
    return [storage.join(parts_dir, n) for n in names]


def next_part_index(parts_dir: str) -> int:
    """One past the highest part number: later runs sort after earlier ones (newest row wins)."""
    numbers = [int(p.rsplit("/", 1)[-1].split("-")[1]) for p in list_parts(parts_dir)]
    return max(numbers, default=-1) + 1


def set_aside_broken_parts(parts_dir: str) -> list[str]:
    """Move parts that are not readable Parquet (zero bytes, cut short) to ``PARTS/broken/``; return their names.

    Their files have no row then, so the run labels them again; nothing else is lost.
    """
    moved = []
    for part in list_parts(parts_dir):
        try:
            fs, inner = storage.resolve(part)
            pq.read_metadata(inner, filesystem=fs)
        except (pa.ArrowException, OSError):
            name = part.rsplit("/", 1)[-1]
            fs, inner = storage.resolve(storage.join(parts_dir, BROKEN_DIR))
            fs.create_dir(inner, recursive=True)
            fs.move(storage.resolve(part)[1], f"{inner}/{name}")
            moved.append(name)
    return moved


def _read_part(path: str, columns: list[str] | None = None) -> pa.Table:
    fs, inner = storage.resolve(path)
    return pq.read_table(inner, filesystem=fs, columns=columns)


def load_done(parts_dir: str, root: str, shard: int, shards: int) -> dict[str, tuple[int, float]]:
    """{path: (size, mtime)} of rows already in the parts, for this shard only (1/shards of the library)."""
    prefix = root.rstrip("/") + "/"
    done: dict[str, tuple[int, float]] = {}
    for part in list_parts(parts_dir):
        cols = _read_part(part, ["path", "size", "mtime"]).to_pydict()
        for p, s, m in zip(cols["path"], cols["size"], cols["mtime"], strict=True):
            if _shard_of_path(p, prefix, shards) == shard:
                done[p] = (s, m)
    return done


SCAN_SCHEMA = pa.schema([("path", pa.string()), ("size", pa.int64()), ("mtime", pa.float64()),
                         ("error", pa.string()), ("replaces", pa.bool_())])


def scan_shard(root: str, shard: int, shards: int, exts: frozenset[str], parts_dir: str | None,
               block_rows: int = SCAN_BLOCK_ROWS) -> Iterator[pa.Table]:
    """Read task body: blocks (``SCAN_SCHEMA``) of files in ``shard`` that have no row in the parts yet.

    ``replaces`` marks a file whose path has a row for another (size, mtime): it changed and is relabelled.
    """
    done = load_done(parts_dir, root, shard, shards) if parts_dir else {}
    rows: dict[str, list[Any]] = {k: [] for k in SCAN_SCHEMA.names}
    for found in walk_shard(root, shard, shards, exts):
        path, name_error = _safe_str(found.path)
        prev = done.get(path)
        if prev is not None and prev == (found.size, found.mtime):
            continue
        for key, value in (("path", path), ("size", found.size), ("mtime", found.mtime),
                           ("error", found.error or name_error), ("replaces", prev is not None)):
            rows[key].append(value)
        if len(rows["path"]) >= block_rows:
            yield pa.table(rows, schema=SCAN_SCHEMA)
            rows = {k: [] for k in SCAN_SCHEMA.names}
    if rows["path"]:
        yield pa.table(rows, schema=SCAN_SCHEMA)


def _library_scan_class() -> type:
    """``LibraryScan``, defined lazily so that importing this module does not import Ray Data."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class LibraryScan(Datasource):
        """A Ray Data source over a library folder: ``SCAN_SHARDS`` read tasks, each streaming its shard."""

        def __init__(self, root: str, exts: frozenset[str], parts_dir: str | None, shards: int = SCAN_SHARDS):
            super().__init__()
            self.root, self.exts, self.parts_dir, self.shards = root, exts, parts_dir, shards

        def get_name(self) -> str:
            return "ScanLibrary"

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[ReadTask]:
            meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None)
            return [ReadTask(functools.partial(scan_shard, self.root, k, self.shards, self.exts, self.parts_dir),
                             meta, schema=SCAN_SCHEMA, per_task_row_limit=per_task_row_limit)
                    for k in range(self.shards)]

    return LibraryScan


# ----------------------------------------------------------------------------------------------- decode
def _errors(column: Any) -> list[str | None]:
    """An ``error`` column as str-or-None (an all-null column can reach a numpy batch as float NaN)."""
    return [e if isinstance(e, str) else None for e in column]


@functools.lru_cache(maxsize=4)
def _extractor(params: FeatureParams) -> MfccExtractor:
    """One MFCC transform per worker process (tasks reuse their worker process)."""
    from raygenre.data.mfcc import MfccExtractor

    return MfccExtractor(params)


def decode_file(path: str, params: FeatureParams, count: int) -> tuple[np.ndarray, float]:
    """MFCC of up to ``count`` segments spread evenly across ``path``: ((k, frames, n_mfcc) float32, duration s).

    Only the windows are decoded where the format can seek. Raises ``AudioError`` for unusable files,
    including a track shorter than one segment.
    """
    from raygenre.data.audio import info, load_windows
    from raygenre.data.mfcc import frames_for, mfcc_of_segments, window_starts

    header = info(path)
    duration = header.duration_s
    starts = window_starts(duration, params, count)
    if not starts:
        raise _with_duration(AudioError(f"too short: {duration:.2f} s of audio; a segment needs "
                                        f"{params.segment_seconds:g} s"), duration)
    pieces = load_windows(path, params.sample_rate, starts, params.segment_seconds, header=header)
    full = [p for p in pieces if p.size and frames_for(p.size, params) == params.frames]
    if not full:
        raise _with_duration(AudioError(f"no full {params.segment_seconds:g} s segment could be decoded "
                                        f"(header says {duration:.2f} s; the data is shorter or damaged)"), duration)
    return mfcc_of_segments(full, _extractor(params)), duration


def _with_duration(exc: AudioError, duration_s: float) -> AudioError:
    """Attach the header's duration to an error, so that error rows still report it."""
    exc.duration_s = duration_s  # type: ignore[attr-defined]
    return exc


def decode_batch(batch: dict[str, np.ndarray], params: FeatureParams, count: int) -> dict[str, np.ndarray]:
    """Ray Data task: scan rows -> the same rows plus ``duration_s``, ``segments_used`` and ``mfcc``.

    ``mfcc``: float32 (B, count, frames, n_mfcc), zero past ``segments_used`` (0 for error rows). A file that
    fails, however it fails, becomes an error row; the batch always completes.
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
            feats, duration[i] = decode_file(str(path), params, count)
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


# ---------------------------------------------------------------------------------------------- predict
def model_id(model: LoadedModel, model_dir: str) -> str:
    """The ``model`` column: ``<name>-<created>-<sha256 of the weights, 8 hex>`` (an ``id`` in the metadata wins)."""
    import hashlib

    from raygenre.model.artifact import weights_path

    meta = model.meta or {}
    if meta.get("id"):
        return str(meta["id"])
    digest = hashlib.sha256(storage.read_bytes(weights_path(model_dir, meta or None))).hexdigest()[:8]
    created = str(meta.get("created", "")).replace(":", "")[:17]
    return "-".join(x for x in (str(model.name), created, digest) if x)


def output_schema(genres: list[str]) -> pa.Schema:
    """One row per file. ``p_<genre>`` and ``genre``/``confidence`` are null for error rows."""
    return pa.schema([
        ("path", pa.string()),  # absolute path of the file
        ("genre", pa.string()),  # argmax of the mean probability over the file's segments
        ("confidence", pa.float32()),  # that mean probability
        *[(f"p_{g}", pa.float32()) for g in genres],  # mean softmax over segments; sums to 1
        ("duration_s", pa.float64()),  # from the header (also on error rows when the header was readable)
        ("segments_used", pa.int32()),  # segments the label is based on (<= segments_per_track)
        ("error", pa.string()),  # null when fine, else why the file could not be labelled
        ("model", pa.string()),  # model id
        ("size", pa.int64()),  # bytes, for resume
        ("mtime", pa.float64()),  # st_mtime, for resume
    ])


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

    def __init__(self, model_dir: str, model_id: str, device: str = "cpu") -> None:
        from raygenre.model.artifact import load_model

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
            "genre": [self.genres[b] if k else None for b, k in zip(best, ok, strict=True)],
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


# ---------------------------------------------------------------------------------------------- pipeline
def _pool_sizes(cfg: LabelConfig, resources: dict[str, float]) -> tuple[int, float, int, float]:
    """(actors, CPUs per actor, decode tasks at once, CPUs per decode task), leaving room for every stage.

    Actors take 0.5 CPU each. Decoding runs as many tasks as there are CPUs left (rounded), each declaring
    a share small enough that a 1-CPU repartition task (see ``_build_dataset``) can always start beside
    them: 2 CPUs, 1 actor -> 2 decode tasks of 0.25 CPU + the actor's 0.5 + 1.0 kept for repartitioning.
    Had the decode tasks declared the whole 1.5, a repartition task could only start between them, and
    decoding would wait on it (bench/label.py: one core idle a third of the run). A pool that took every
    CPU would starve decoding and hang, so the actors must leave at least 1 CPU.
    """
    cpus = float(resources.get("CPU", 1.0))
    derived = int(resources.get("GPU", 0)) if cfg.gpu else int(cpus // 16)
    actors = cfg.actors or max(1, derived)
    actor_cpus = 0.5
    left = cpus - actors * actor_cpus
    if left < 1.0:  # the decode tasks and the 1-CPU repartition tasks need at least 1 CPU
        raise ValueError(f"{actors} model actors x {actor_cpus} CPU leave no CPU for decoding on this "
                         f"cluster ({cpus:g} CPUs): use fewer actors (label.actors)")
    decoders = max(1, int(left + 0.5))  # one per CPU left: decoding is single-threaded
    decode_cpus = max(0.05, int(20 * (left - 1.0) / decoders) / 20)  # rounded down to 0.05
    return actors, actor_cpus, decoders, decode_cpus


def _build_dataset(root: str, cfg: LabelConfig, params: FeatureParams, model_dir: str, mid: str,
                   parts_dir: str | None, resources: dict[str, float]) -> Any:
    """The lazy Ray Data pipeline: scan -> decode (tasks) -> model (actor pool)."""
    import ray
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    actors, actor_cpus, decoders, decode_cpus = _pool_sizes(cfg, resources)
    scan = _library_scan_class()(root, frozenset(e.lower().lstrip(".") for e in cfg.extensions), parts_dir)
    # 0 CPU: scanning is I/O, and a scan task parked by back-pressure must not hold a CPU that decoding needs.
    ds = ray.data.read_datasource(scan, num_cpus=0, compute=TaskPoolStrategy(size=SCAN_CONCURRENCY),
                                  override_num_blocks=SCAN_SHARDS)  # no SplitBlocks: the blocks are small
    # A read task's yielded blocks are coalesced (up to 128 MiB), so a whole shard would reach one decode task
    # as a single block: a streaming repartition re-cuts the stream (without materialising it) into blocks of
    # SCAN_BLOCK_ROWS paths. Its tasks are short but take 1 CPU, hence the 1 CPU _pool_sizes keeps free.
    ds = ds.repartition(target_num_rows_per_block=SCAN_BLOCK_ROWS)
    ds = ds.map_batches(decode_batch, fn_kwargs={"params": params, "count": cfg.segments_per_track},
                        batch_size=SCAN_BLOCK_ROWS, batch_format="numpy", num_cpus=decode_cpus,
                        compute=TaskPoolStrategy(size=decoders))
    gpu_args = {"num_gpus": 1} if cfg.gpu else {}
    return ds.map_batches(Predictor, fn_constructor_kwargs={"model_dir": model_dir, "model_id": mid,
                                                            "device": "cuda" if cfg.gpu else "cpu"},
                          compute=ActorPoolStrategy(size=actors), batch_size=cfg.batch_size,
                          batch_format="numpy", num_cpus=actor_cpus, **gpu_args)


# ------------------------------------------------------------------------------------------------ output
class PartWriter:
    """Buffers result rows and writes them as ``part-<n>-<uuid>.parquet`` files, each atomically."""

    def __init__(self, parts_dir: str, schema: pa.Schema, rows_per_part: int, first_index: int) -> None:
        self.parts_dir, self.schema, self.rows_per_part = parts_dir, schema, max(1, rows_per_part)
        self.index = first_index
        self.buffer: list[pa.Table] = []
        self.rows = 0
        self.last_flush = time.monotonic()

    def add(self, table: pa.Table) -> None:
        """Buffer rows; write every full part (``rows_per_part`` rows), or what there is every FLUSH_SECONDS."""
        self.buffer.append(table.select(self.schema.names).cast(self.schema))
        self.rows += table.num_rows
        while self.rows >= self.rows_per_part:
            self.flush(self.rows_per_part)
        if time.monotonic() - self.last_flush > FLUSH_SECONDS:
            self.flush()

    def flush(self, rows: int | None = None) -> None:
        """Write the first ``rows`` buffered rows (default: all) as one part."""
        if not self.rows:
            return
        table = pa.concat_tables(self.buffer)
        rows = self.rows if rows is None else rows
        sink = pa.BufferOutputStream()
        pq.write_table(table.slice(0, rows), sink)
        name = f"part-{self.index:06d}-{uuid.uuid4().hex[:8]}.parquet"
        # durable before it counts: a part that power loss leaves empty would be taken as "labelled"
        storage.write_bytes_durable(storage.join(self.parts_dir, name), sink.getvalue().to_pybytes())
        self.index += 1
        rest = table.slice(rows)
        self.buffer, self.rows, self.last_flush = ([rest] if rest.num_rows else []), rest.num_rows, time.monotonic()


@dataclass
class _Tally:
    """Counts gathered while consolidating."""

    files: int = 0
    errors: int = 0
    genres: Counter[str] = field(default_factory=Counter)
    error_examples: list[tuple[str, str]] = field(default_factory=list)

    def add(self, table: pa.Table) -> None:
        self.files += table.num_rows
        errs = table.column("error").to_pylist()
        self.errors += sum(e is not None for e in errs)
        self.genres.update(g for g in table.column("genre").to_pylist() if g is not None)
        for p, e in zip(table.column("path").to_pylist(), errs, strict=True):
            if e is not None and len(self.error_examples) < MAX_ERROR_EXAMPLES:
                self.error_examples.append((p, e))


class _OutputFile:
    """Streams tables into one Parquet/CSV/JSONL file under a temporary name; ``commit`` renames it."""

    def __init__(self, out: str, fmt: str, schema: pa.Schema) -> None:
        self.fs, self.inner = storage.resolve(out)
        parent, name = self.inner.rsplit("/", 1)
        self.fs.create_dir(parent, recursive=True)
        self.tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:8]}"
        self.sink = self.fs.open_output_stream(self.tmp)
        self.fmt, self.schema = fmt, schema
        self.writer: Any = None
        if fmt == "parquet":
            self.writer = pq.ParquetWriter(self.sink, schema)
        elif fmt == "csv":
            import pyarrow.csv as pacsv

            self.writer = pacsv.CSVWriter(self.sink, schema)

    def write(self, table: pa.Table) -> None:
        if self.writer is not None:
            self.writer.write_table(table)
            return
        lines = io.StringIO()
        for row in table.to_pylist():
            lines.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.sink.write(lines.getvalue().encode("utf-8"))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.sink.close()

    def commit(self) -> None:
        self.close()
        self.fs.move(self.tmp, self.inner)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
        with contextlib.suppress(Exception):
            self.fs.delete_file(self.tmp)


def consolidate(parts_dir: str, out: str, fmt: str, schema: pa.Schema, *, keep_deleted: bool = False) -> _Tally:
    """Stream the parts into ``out`` in ``fmt`` (atomically: a temporary file, then a rename); count rows.

    Exactly one row per file: where runs labelled a path more than once (it changed between runs), the row of
    the latest part wins; rows of files no longer in the library are dropped unless ``keep_deleted``.
    """
    parts = list_parts(parts_dir)
    latest: dict[str, tuple[int, int]] = {}  # path -> (part, row) of its newest row
    for i, part in enumerate(parts):
        for j, path in enumerate(_read_part(part, ["path"]).column("path").to_pylist()):
            latest[path] = (i, j)
    tally = _Tally()
    target = _OutputFile(out, fmt, schema)
    try:
        for i, part in enumerate(parts):
            table = _read_part(part).select(schema.names).cast(schema)
            keep = [latest[p] == (i, j) and (keep_deleted or _on_disk(p))
                    for j, p in enumerate(table.column("path").to_pylist())]
            table = table.filter(pa.array(keep, type=pa.bool_()))
            target.write(table)
            tally.add(table)
        target.commit()
    except BaseException:
        target.abort()
        raise
    return tally


def read_labels(path: str, fmt: str | None = None) -> pa.Table:
    """Read a label output file (any of the three formats) back as a table."""
    fmt = fmt or format_of(path) or "parquet"
    fs, inner = storage.resolve(path)
    if fmt == "parquet":
        return pq.read_table(inner, filesystem=fs)
    if fmt == "csv":
        import pyarrow.csv as pacsv

        with fs.open_input_stream(inner) as f:  # an empty field is a null (CSV has no other way to say it)
            return pacsv.read_csv(f, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    import pyarrow.json as pajson

    with fs.open_input_stream(inner) as f:
        return pajson.read_json(f)


# ----------------------------------------------------------------------------------------- resume state
@contextlib.contextmanager
def _run_lock(parts_dir: str) -> Iterator[None]:
    """One label run per output at a time. Local outputs: an flock (it dies with the process). Object stores
    have no locks: a lease object in OUT.parts/ with the holder and a heartbeat (``storage.Lease``)."""
    local = storage.local_path(parts_dir)
    if local is None:
        try:
            lease = storage.Lease.acquire(parts_dir, "labels")
        except storage.OutputExistsError as exc:
            raise ValueError(f"another `raygenre label` is writing to {parts_dir}: {exc}") from None
        try:
            yield
        finally:
            lease.release()
        return
    local.mkdir(parents=True, exist_ok=True)
    with open(local / LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another `raygenre label` is writing to {parts_dir}; wait for it or use "
                             f"another --out") from None
        yield


def _prepare_parts(parts_dir: str, run: dict[str, Any], resume: bool) -> None:
    """Start fresh (``resume=False``) or check that existing parts were made with this model and settings."""
    run_file = storage.join(parts_dir, RUN_FILE)
    if not resume:
        for part in list_parts(parts_dir):
            storage.remove(part)
        storage.remove(run_file)
    elif list_parts(parts_dir) and storage.exists(run_file):
        old = json.loads(storage.read_text(run_file))
        diff = [k for k in run if old.get(k) != run[k]]
        if diff:
            raise ResumeMismatchError(
                f"{parts_dir} holds results made with other {', '.join(diff)} "
                f"({', '.join(f'{k}: {old.get(k)!r} -> {run[k]!r}' for k in diff)}); "
                f"use --no-resume to label everything again, or another --out")
    fs, inner = storage.resolve(parts_dir)
    fs.create_dir(inner, recursive=True)
    for info in fs.get_file_info(pafs.FileSelector(inner)):  # temporaries of parts killed mid-write
        if info.base_name.startswith(".part-") and ".tmp-" in info.base_name:
            fs.delete_file(info.path)
    storage.write_json_atomic(run_file, run)


# ------------------------------------------------------------------------------------------------- run
PROGRESS_LINE_SECONDS = 30.0  # without a terminal (ray job logs, CI), one progress line this often


def _progress_bar(enabled: bool) -> Any:
    """A live files/s bar on a terminal (``progress_bars_wanted``); off in logs, where redraws are noise."""
    from tqdm.auto import tqdm

    from raygenre.workspace import progress_bars_wanted

    return tqdm(desc="labelling", unit="file", disable=not (enabled and progress_bars_wanted()), file=sys.stderr,
                dynamic_ncols=True, smoothing=0.1)


def _run_pipeline(ds: Any, writer: PartWriter, progress: bool) -> tuple[int, float]:
    """Drive the pipeline: write parts as results arrive. Returns (rows, audio seconds)."""
    rows, audio_s = 0, 0.0
    t0 = last_line = time.monotonic()
    with _progress_bar(progress) as bar:
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            writer.add(table)
            rows += table.num_rows
            audio_s += float(np.nansum(table.column("duration_s").to_numpy(zero_copy_only=False)))
            now = time.monotonic()
            elapsed = max(now - t0, 1e-9)
            rate = f"{rows / elapsed:.1f} files/s, {audio_s / 3600 / elapsed:.2f} audio-h/s"
            bar.set_postfix_str(rate.split(", ")[1], refresh=False)
            bar.update(table.num_rows)
            if progress and bar.disable and now - last_line >= PROGRESS_LINE_SECONDS:  # logs: a line, not a bar
                print(f"labelling: {rows} files so far ({rate})", file=sys.stderr, flush=True)
                last_line = now
    writer.flush()
    return rows, audio_s


@contextlib.contextmanager
def _quiet_ray_data() -> Iterator[None]:
    """Hide Ray Data's own progress bars and INFO logs while ours runs (datasets copy the context when built)."""
    import logging
    import warnings

    from ray.data import DataContext

    ctx = DataContext.get_current()
    logger = logging.getLogger("ray.data")
    before = ctx.enable_progress_bars, logger.level
    ctx.enable_progress_bars = False
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*minimum number of concurrent actors.*")
            yield
    finally:
        ctx.enable_progress_bars = before[0]
        logger.setLevel(before[1])


def label_library(library: str, out: str, cfg: LabelConfig, *, model_dir: str | None = None,
                  address: str | None = None, resume: bool = True, progress: bool = True) -> LabelResult:
    """Label every audio file under ``library``; write one row per file to ``out`` in ``cfg.format``.

    ``model_dir`` defaults to the workspace's best model (``NoModelError`` when there is none). With
    ``resume``, files already in ``OUT.parts/`` (same path, size and mtime) are skipped and the rest appended.
    Raises ``ValueError`` subclasses for usage errors; bad audio files never raise (they become error rows).
    """
    from raygenre.model.artifact import load_model
    from raygenre.runtime import ensure_ray

    t0 = time.monotonic()
    if cfg.format not in FORMATS:
        raise ValueError(f"unknown format {cfg.format!r}: choose one of {', '.join(FORMATS)}")
    if cfg.segments_per_track < 1 or cfg.batch_size < 1:
        raise ValueError("segments_per_track and batch_size must be at least 1")
    root = _library_root(library)
    model_dir = resolve_model_dir(model_dir)
    model = load_model(model_dir)  # on the driver: its metadata (the actors load their own copy)
    mid, genres = model_id(model, model_dir), list(model.genres)
    resources = ensure_ray(address)
    if cfg.gpu and resources.get("GPU", 0) < 1:
        raise ValueError("--gpu: the Ray cluster has no GPU; drop --gpu to label on CPUs")
    parts_dir = parts_dir_of(out)
    run = {"model": mid, "genres": genres, "segments_per_track": cfg.segments_per_track,
           "features": dataclasses.asdict(model.features), "library": root}
    with _run_lock(parts_dir):
        _prepare_parts(parts_dir, run, resume)
        set_aside = set_aside_broken_parts(parts_dir) if resume else []
        first = next_part_index(parts_dir)
        schema = output_schema(genres)
        writer = PartWriter(parts_dir, schema, cfg.files_per_part, first)
        with _quiet_ray_data():
            ds = _build_dataset(root, cfg, model.features, model_dir, mid, parts_dir if first else None, resources)
            new, audio_s = _run_pipeline(ds, writer, progress)
        tally = consolidate(parts_dir, out, cfg.format, schema)
    return LabelResult(out=str(out), format=cfg.format, files=tally.files, new=new, errors=tally.errors,
                       genres=tally.genres.most_common(), audio_hours=audio_s / 3600,
                       seconds=time.monotonic() - t0, model=mid, synthetic=bool(model.meta.get("synthetic")),
                       error_examples=tally.error_examples, set_aside=set_aside)
