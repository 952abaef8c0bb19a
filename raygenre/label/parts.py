"""Label output: the parts a run writes as it goes, one consolidated file at the end, and the resume state.

``OUT.parts/`` holds ``part-<n>-<uuid>.parquet`` (each written whole and fsynced before it counts; numbered, so a
later run's parts sort after an earlier one's), ``run.json`` (the model and settings the parts were made with) and
a lock. ``consolidate`` streams the parts into ``OUT`` (Parquet, CSV or JSON Lines, written under a temporary name
and renamed) with exactly one row per file: the newest row per path wins, rows of files no longer on disk are
dropped. ``OUT.parts/`` stays as the resume state. Pure: no Ray.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq

from raygenre import storage

FORMATS: dict[str, str] = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl"}
FLUSH_SECONDS = 30.0  # a part is also written when this long has passed since the last one
PARTS_SUFFIX = ".parts"
RUN_FILE = "run.json"  # in OUT.parts/: the model and settings the parts were made with
LOCK_FILE = ".lock"
BROKEN_DIR = "broken"  # in OUT.parts/: parts found unreadable on resume, kept for inspection
MAX_ERROR_EXAMPLES = 5


class ResumeMismatchError(ValueError):
    """``OUT.parts/`` holds results made with another model or other settings."""


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


def safe_str(path: str) -> tuple[str, str | None]:
    """(path as valid UTF-8, error): a name that is not UTF-8 cannot be stored, so it becomes an error row.

    Its undecodable bytes are written as ``\\xNN`` (``backslashreplace``): the stored string stays unique per
    file and maps back to the file (``on_disk``), so resume finds its row and consolidation can tell it exists.
    """
    try:
        path.encode("utf-8")
        return path, None
    except UnicodeEncodeError:
        shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return shown, "file name is not valid UTF-8: rename the file to label it"


ESCAPED = re.compile(r"\\x([0-9a-f]{2})")


def on_disk(stored: str) -> bool:
    """Whether the file a row's ``path`` names is still there (a link counts, even a broken one)."""
    if os.path.lexists(stored):
        return True
    original = ESCAPED.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)), stored)  # undo backslashreplace
    return original != stored and os.path.lexists(original)


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


def read_part(path: str, columns: list[str] | None = None) -> pa.Table:
    fs, inner = storage.resolve(path)
    return pq.read_table(inner, filesystem=fs, columns=columns)


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


class PartWriter:
    """Buffers result rows and writes them as ``part-<n>-<uuid>.parquet`` files, each atomically."""

    def __init__(self, parts_dir: str, schema: pa.Schema, rows_per_part: int, first_index: int) -> None:
        self.parts_dir, self.schema, self.rows_per_part = parts_dir, schema, max(1, rows_per_part)
        self.index = first_index
        self.buffer: list[pa.Table] = []
        self.rows = 0  # buffered, not yet in a part
        self.written = 0  # in parts
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
        self.written += rows
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
        for j, path in enumerate(read_part(part, ["path"]).column("path").to_pylist()):
            latest[path] = (i, j)
    tally = _Tally()
    target = _OutputFile(out, fmt, schema)
    try:
        for i, part in enumerate(parts):
            table = read_part(part).select(schema.names).cast(schema)
            keep = [latest[p] == (i, j) and (keep_deleted or on_disk(p))
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
        with fs.open_input_stream(inner) as f:  # an empty field is a null (CSV has no other way to say it)
            return pacsv.read_csv(f, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    with fs.open_input_stream(inner) as f:
        return pajson.read_json(f)


@contextlib.contextmanager
def run_lock(parts_dir: str) -> Iterator[None]:
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


def prepare_parts(parts_dir: str, run: dict[str, Any], resume: bool) -> None:
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
