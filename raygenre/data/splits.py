"""The train and val splits of a feature table as memory-mapped ``.npy`` files, written once per table per node.

Training needs random access to every row of its split (a fresh seeded permutation each epoch, see
``raygenre.training.train.epoch_rows``). Before, the driver read both splits into its heap and put them in
Ray's object store: the driver peaked at 2-3x the splits, and every node pulled a full copy into its object
store, so the size that trained was fixed by one node's memory. Here the splits live in files instead:

* ``build`` streams the Parquet table once, batch by batch (``BATCH_ROWS`` rows: ~27 MB of MFCC at the
  defaults), scattering each split's rows into a preallocated ``.npy`` at their sorted position. What it
  holds is one batch plus the sort keys (genre, track id, segment: ~1 % of the MFCC), never a split.
* Every process that trains (the driver for its statistics and checks, each Ray Train worker) calls
  ``open_splits``: the files are built on that node if they are missing (one builder per node, under a file
  lock; the others wait and then read them), then mapped read-only. Workers on one node share the page
  cache: one copy per node, which the OS pages in and out, not one per worker, and none in the object store.
* Rows are sorted by (genre, track_id, segment), exactly as ``raygenre.data.table.read_split_arrays`` sorts
  them, so the same seed trains the same model either way (the tests hold the two to equality).

Layout (``root`` is ``raygenre.workspace.split_cache_dir()`` unless given)::

    root/<key>/train.x.npy  float32 (N, frames, n_mfcc)      root/<key>/train.y.npy  int64 (N,)
    root/<key>/val.x.npy    ...                              root/<key>/meta.json    written last: counts,
    root/<key>.lock         flock of the builders                                    train mean/std

``key`` hashes the table's location and manifest: a re-featurized table (a new attempt) gets new files. The
least recently used entries beyond ``KEEP`` are removed when a new one is built (only folders with
raygenre's ``meta.json``, never through a link, never one that another process holds).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raygenre import storage
from raygenre.data.table import FeatureTable, _mfcc_array, open_table

SPLITS = ("train", "val")  # what training maps; evaluation streams the test split through Ray Data
BATCH_ROWS = 4096  # rows per Parquet batch while building: 4096 x 130 x 13 x 4 B = 27 MB of MFCC
KEEP = 4  # built tables kept per node (least recently used beyond are removed)
FORMAT = "raygenre-splits/1"
_KEYS = ["split", "genre", "track_id", "segment", "label"]
_ORDER = [("genre", "ascending"), ("track_id", "ascending"), ("segment", "ascending")]


@dataclass(frozen=True)
class SplitCache:
    """Where one table's split files live on every node, and what they hold (small: travels to workers)."""

    table_dir: str  # the feature table (path or URI): a node without the files builds them from it
    root: str  # local folder, the same path on every node
    key: str
    counts: dict[str, int]  # segments per split
    mean: list[float]  # per-coefficient mean over every frame of the train split (n_mfcc,)
    std: list[float]

    @property
    def dir(self) -> str:
        return os.path.join(self.root, self.key)

    def arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{"train"|"val": (x, y)} read-only memory maps on this node (built here first if missing)."""
        folder = _ensure(self.table_dir, self.root, self.key)
        return {s: (np.load(os.path.join(folder, f"{s}.x.npy"), mmap_mode="r"),
                    np.load(os.path.join(folder, f"{s}.y.npy"), mmap_mode="r")) for s in SPLITS}


def cache_key(table: FeatureTable) -> str:
    """16 hex digits of sha256 over the table's Parquet location and its manifest (attempt id included)."""
    blob = json.dumps({"format": FORMAT, "path": table.path, "manifest": table.manifest}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def open_splits(table: FeatureTable, root: str) -> SplitCache:
    """The split files of ``table`` under ``root`` on this node, built first when missing; see the module doc."""
    key = cache_key(table)
    meta = json.loads(Path(_ensure(table, root, key), "meta.json").read_text())
    return SplitCache(table_dir=table.dir, root=root, key=key, counts=meta["counts"], mean=meta["mean"],
                      std=meta["std"])


def _ensure(table: FeatureTable | str, root: str, key: str) -> str:
    """``root/key`` with its files, built under the folder's lock unless a finished one is there (``table``
    is opened, a manifest read, only to build)."""
    folder = os.path.join(root, key)
    os.makedirs(root, exist_ok=True)
    if os.path.islink(root) or os.path.islink(folder):
        raise storage.UnsafePathError(f"{root}: the split cache (or its entry {key}) is a symlink; raygenre writes "
                                      f"only real folders there: remove the link or set RAYGENRE_HOME")
    if os.path.isfile(os.path.join(folder, "meta.json")):
        os.utime(folder)  # least recently used: this one was used now
        return folder
    with _locked(os.path.join(root, f"{key}.lock")):
        if not os.path.isfile(os.path.join(folder, "meta.json")):  # another builder may have finished meanwhile
            build(open_table(table), folder)
            _evict(root, keep=key)
    return folder


@contextlib.contextmanager
def _locked(path: str, blocking: bool = True) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path`` (created, never followed if it is a link); yields whether it is held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


class _RowFile:
    """A ``.npy`` file of float32 rows written and read with plain ``pwrite``/``pread``, never mapped.

    The builder runs in the driver: pages it maps count in its RSS (measured: a build of a 2 GB table's splits
    through ``open_memmap`` took the driver from 0.8 to 2.6 GB), while written and read pages stay in the page
    cache, which the OS reclaims. ``load_stats`` reads it through ``len`` and slices.
    """

    def __init__(self, fd: int, offset: int, rows: int, shape: tuple[int, ...]) -> None:
        self.fd, self.offset, self.rows, self.shape = fd, offset, rows, shape
        self.row_bytes = int(np.prod(shape)) * 4

    @classmethod
    def create(cls, path: str, rows: int, shape: tuple[int, ...]) -> _RowFile:
        header = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, *shape))
        offset = header.offset
        del header  # only the header and the file's size: no page of it was touched
        return cls(os.open(path, os.O_RDWR | os.O_NOFOLLOW), offset, rows, shape)

    @classmethod
    def open(cls, path: str) -> _RowFile:
        header = np.load(path, mmap_mode="r")
        rows, shape, offset = header.shape[0], header.shape[1:], header.offset
        del header
        return cls(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), offset, rows, shape)

    def write_rows(self, at: np.ndarray, data: np.ndarray) -> None:
        """Row ``data[k]`` to row ``at[k]``; runs of consecutive rows go in one write (a track's segments)."""
        order = np.argsort(at, kind="stable")
        at, data = at[order], np.ascontiguousarray(data[order], dtype=np.float32)
        breaks = np.flatnonzero(np.diff(at) != 1) + 1
        for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(at)], strict=True):
            os.pwrite(self.fd, data[lo:hi].tobytes(), self.offset + int(at[lo]) * self.row_bytes)

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, rows: slice) -> np.ndarray:
        lo, hi, _ = rows.indices(self.rows)
        raw = os.pread(self.fd, (hi - lo) * self.row_bytes, self.offset + lo * self.row_bytes)
        return np.frombuffer(raw, dtype=np.float32).reshape(hi - lo, *self.shape)

    def close(self) -> None:
        if self.fd >= 0:  # once: a second close could hit a descriptor the process has reused since
            os.close(self.fd)
            self.fd = -1


def _parquet_files(table: FeatureTable) -> tuple[pafs.FileSystem, list[str]]:
    """The table's Parquet files, sorted: both passes of ``build`` read rows in this one order."""
    fs, inner = storage.resolve(table.path)
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    return fs, sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))


def _batches(fs: pafs.FileSystem, files: list[str], columns: list[str]) -> Iterator[pa.RecordBatch]:
    for path in files:
        with fs.open_input_file(path) as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS, columns=columns)


def build(table: FeatureTable, folder: str) -> None:
    """Write ``folder`` (``{split}.x.npy``, ``{split}.y.npy``, ``meta.json`` last) from the Parquet table.

    Pass 1 reads the sort keys of every row and orders each split; pass 2 reads ``mfcc`` batch by batch and
    writes each row to its sorted place in the split's memory-mapped file. Built in a temporary sibling folder
    and renamed into place (local disk: the rename is atomic), so a killed build leaves no half entry.
    """
    fs, files = _parquet_files(table)
    if not files:
        raise FileNotFoundError(f"{storage.redact(table.path)} holds no Parquet files: re-run featurize")
    keys = pa.Table.from_batches(list(_batches(fs, files, _KEYS)))
    keys = keys.append_column("row", pa.array(np.arange(len(keys), dtype=np.int64)))
    where = np.full(len(keys), -1, dtype=np.int64)  # each table row's index in its split's sorted order
    split_of = np.full(len(keys), -1, dtype=np.int8)  # each table row's split (index into SPLITS; -1: test)
    counts, labels = {}, {}
    for i, split in enumerate(SPLITS):
        part = keys.filter(pc.equal(keys.column("split"), split)).sort_by(_ORDER)
        rows = part.column("row").to_numpy()
        where[rows], split_of[rows] = np.arange(len(part)), i
        counts[split], labels[split] = len(part), part.column("label").to_numpy().astype(np.int64)
    del keys
    tmp = f"{folder}.tmp-{uuid.uuid4().hex[:8]}"
    os.makedirs(tmp)
    files_x: dict[str, _RowFile] = {}
    try:
        shape = (table.frames, table.params.n_mfcc)
        for split in SPLITS:
            files_x[split] = _RowFile.create(os.path.join(tmp, f"{split}.x.npy"), counts[split], shape)
        start = 0
        for batch in _batches(fs, files, ["mfcc"]):
            n = batch.num_rows
            col = batch.column(0)
            table.check_mfcc_shape(col.type)
            mfcc = _mfcc_array(col, n, shape)
            for i, split in enumerate(SPLITS):
                mine = np.flatnonzero(split_of[start:start + n] == i)
                if len(mine):
                    files_x[split].write_rows(where[start + mine], mfcc[mine])
            start += n
        for split in SPLITS:
            files_x[split].close()
            np.save(os.path.join(tmp, f"{split}.y.npy"), labels[split])
        train_x = _RowFile.open(os.path.join(tmp, "train.x.npy"))
        mean, std = load_stats(train_x) if counts["train"] else (np.zeros(shape[1]), np.ones(shape[1]))
        train_x.close()
        meta = {"format": FORMAT, "table": storage.redact(table.path), "counts": counts,
                "mean": [float(v) for v in mean], "std": [float(v) for v in std], "built": time.time()}
        Path(tmp, "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, folder)
        except OSError:  # another builder finished first (the lock is per inode, eviction unlinks it): use its
            if not os.path.isfile(os.path.join(folder, "meta.json")):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        for f in files_x.values():
            f.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_stats(x: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-coefficient mean and std (population) over every frame of ``x`` (N, frames, n_mfcc): float32 (n_mfcc,).

    Chunked float64 passes, merged with Chan's parallel formula (no catastrophic cancellation, unlike a sum of
    squares), so memory stays at one chunk whatever N is.
    """
    n_mfcc = x.shape[-1]
    count, mean, m2 = 0, np.zeros(n_mfcc), np.zeros(n_mfcc)
    for i in range(0, len(x), chunk):
        part = np.asarray(x[i:i + chunk], dtype=np.float64).reshape(-1, n_mfcc)
        n_b, mean_b = part.shape[0], part.mean(0)
        m2_b = ((part - mean_b) ** 2).sum(0)
        delta, total = mean_b - mean, count + n_b
        mean = mean + delta * n_b / total
        m2 = m2 + m2_b + delta**2 * count * n_b / total
        count = total
    if count == 0:
        raise ValueError("the train split is empty: nothing to compute standardisation statistics from")
    std = np.sqrt(m2 / count)
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def _evict(root: str, keep: str, n: int = KEEP) -> None:
    """Remove the least recently used finished entries beyond the ``n`` newest (``keep`` stays), skipping
    anything raygenre did not write (no ``meta.json`` of this format), links, and entries someone holds."""
    entries = []
    for entry in os.scandir(root):
        if entry.is_symlink() or not entry.is_dir(follow_symlinks=False) or ".tmp-" in entry.name:
            continue
        meta = os.path.join(entry.path, "meta.json")
        try:
            if json.loads(Path(meta).read_text()).get("format") != FORMAT:
                continue
        except (OSError, ValueError):
            continue
        entries.append((entry.stat(follow_symlinks=False).st_mtime, entry.name))
    for _, name in sorted(entries, reverse=True)[n:]:
        if name == keep:
            continue
        lock = os.path.join(root, f"{name}.lock")
        with _locked(lock, blocking=False) as held:
            if held:
                storage.remove(os.path.join(root, name))
                os.unlink(lock)  # a builder that waited on this inode still renames safely: see build
