"""Label output: the parts a run writes as it goes, one consolidated file at the end, and the resume state.

``OUT.parts/`` holds ``part-<n>-<uuid>.parquet`` (each written whole and fsynced before it counts; numbered, so a
later run's parts sort after an earlier one's), ``run.json`` (the model, settings and output schema the parts were
made with; fsynced) and a lock. ``consolidate`` streams the parts into ``OUT`` (Parquet, CSV or JSON Lines, written
under a temporary name and renamed; on S3 spooled locally, then one upload) with exactly one row per file: the
newest row per path wins, rows of files no longer on disk are dropped. ``OUT.parts/`` stays as the resume state.
Pure: no Ray.

What raygenre did not write is never deleted, moved or written through (local paths; object stores have no
links): ``check_label_output`` refuses, before any work, an ``OUT`` that is a folder, a symlink or a file that is
not a label table (without ``--overwrite``), and a parts folder that is a link; in the parts folder only regular
files named like parts are read, moved or deleted (a link or a stray file is ignored, with a warning); a part made
with another model or schema is moved to ``other-runs/``, never merged.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import os
import re
import stat
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq

from raygenre import storage

FORMATS: dict[str, str] = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl"}
FLUSH_SECONDS = 30.0  # a part is also written when this long has passed since the last one
PARTS_SUFFIX = ".parts"
RUN_FILE = "run.json"  # in OUT.parts/: the model, settings and schema the parts were made with
LOCK_FILE = ".lock"
TAGGED_FILE = "tagged.jsonl"  # in OUT.parts/: files `raygenre tag` rewrote (raygenre/label/tagged.py reads it)
INDEX_FILE = "done-index.parquet"  # in OUT.parts/: what the last output holds (raygenre/label/index.py)
BROKEN_DIR = "broken"  # in OUT.parts/: parts found unreadable on resume, kept for inspection
OTHER_DIR = "other-runs"  # in OUT.parts/: parts made with another model or output schema, kept, never merged
MAX_ERROR_EXAMPLES = 5
PART_NAME = re.compile(r"part-(\d+)-[0-9a-f]+\.parquet")  # what PartWriter names its parts (fullmatch)
# Temporaries of raygenre's own writes killed mid-way (storage's atomic writers: ".<name>.tmp-<hex>").
TEMPORARY = re.compile(r"\.(?:part-\d+-[0-9a-f]+\.parquet|run\.json)\.tmp-[0-9a-f]+")
HEAD_COLUMNS = ["path", "genre", "top_genre", "confidence"]  # a label table: these, p_<genre>..., TAIL_COLUMNS
# The head of label tables written before ``top_genre`` (raygenre <= 0.x): still recognised as raygenre's own
# output (a rerun may replace it); their parts are set aside and relabelled, never merged with new ones.
LEGACY_HEAD_COLUMNS = ["path", "genre", "confidence"]
UNKNOWN = "unknown"  # the genre of a file whose confidence is below label.min_confidence
TAIL_COLUMNS = ["duration_s", "segments_used", "error", "model", "size", "mtime"]
COMPACT_PARTS = 64  # consolidate merges the parts into one when there are at least this many
OUTPUT_ROW_GROUP = 262_144  # rows per row group of the consolidated Parquet output (~40 MB of label rows)
SNIFF_BYTES = 1 << 20  # how much of an existing CSV/JSONL --out is read to recognise its header


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


# ------------------------------------------------------------------------------------------- path identity
NON_UTF8 = "non-utf8:"  # prefix of a stored path whose file name is not UTF-8 (no real, absolute path has it)
_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4})")


def _escape(path: str) -> str:
    """Undecodable bytes as ``\\xNN``, other lone surrogates as ``\\uNNNN``, and ``\\`` itself as ``\\\\``."""
    out = []
    for ch in path:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's surrogateescape: one undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def safe_str(path: str) -> tuple[str, str | None]:
    """(path as valid UTF-8, error): a name that is not UTF-8 cannot be stored, so it becomes an error row.

    Such a path is stored as ``non-utf8:`` + the path with its undecodable bytes written ``\\xNN`` and every
    backslash doubled. The mapping is injective: every real path is absolute (starts with ``/``), so it never
    meets the prefix, and within the prefix every backslash starts an escape, so ``bad\\xffname.wav`` (a real
    name, backslash and all) and ``bad<0xff>name.wav`` get two rows. ``original_path`` maps it back to the file,
    so resume finds its row and consolidation can tell it exists.
    """
    try:
        path.encode("utf-8")
        return path, None
    except UnicodeEncodeError:
        return NON_UTF8 + _escape(path), "file name is not valid UTF-8: rename the file to label it"


def original_path(stored: str) -> str:
    """The file a row's ``path`` names, as ``os`` functions take it (undecodable bytes as surrogates)."""
    if not stored.startswith(NON_UTF8):
        return stored

    def undo(m: re.Match[str]) -> str:
        code = m.group(1)
        if code == "\\":
            return "\\"
        return chr(0xDC00 + int(code[1:], 16)) if code[0] == "x" else chr(int(code[1:], 16))

    return _ESCAPE.sub(undo, stored[len(NON_UTF8):])


def on_disk(stored: str) -> bool:
    """Whether the file a row's ``path`` names is still there (a link counts, even a broken one).

    Only "no such file" means gone: a path that cannot be looked at (too long, a parent not searchable) may
    still be there, and its error row stays.
    """
    try:
        os.lstat(original_path(stored))
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


def listable_folder(stored: str) -> bool:
    """Whether a row's ``path`` is a folder that can be listed now (its "cannot list" error row is stale)."""
    path = original_path(stored)
    try:
        if not os.path.isdir(path):
            return False
        with os.scandir(path):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------- the parts folder
def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def check_parts_dir(parts_dir: str) -> None:
    """Refuse a parts folder raygenre could only use through a link or over something that is not its own.

    ``OUT.parts`` must be absent or a real folder, and its ``broken/``, ``other-runs/``, ``run.json`` and
    ``.lock`` absent or of the kind raygenre writes (never a symlink). Raises ``OutputExistsError``
    (``UnsafePathError`` for links).
    """
    shown = storage.redact(parts_dir)
    local = storage.local_path(parts_dir)
    if local is None:  # an object store: no links; only a plain object where the folder goes is in the way
        fs, inner = storage.resolve(parts_dir)
        if fs.get_file_info(inner).type == pafs.FileType.File:
            raise storage.OutputExistsError(f"{shown} is a file, not raygenre's parts folder for this output; "
                                            f"move it away or choose another --out")
        return
    st = _lstat(str(local))
    if st is None:
        return
    if stat.S_ISLNK(st.st_mode):
        raise storage.UnsafePathError(f"{shown} is a symbolic link; raygenre keeps the parts of --out only in a real "
                                      f"folder and never writes, moves or deletes through a link: remove the link "
                                      f"(its target is yours), or choose another --out")
    if not stat.S_ISDIR(st.st_mode):
        raise storage.OutputExistsError(f"{shown} exists and is not a folder; raygenre keeps the parts of --out "
                                        f"there: move it away, or choose another --out")
    for name, folder in ((BROKEN_DIR, True), (OTHER_DIR, True), (RUN_FILE, False), (LOCK_FILE, False)):
        sub = _lstat(str(local / name))
        if sub is None:
            continue
        if stat.S_ISLNK(sub.st_mode):
            raise storage.UnsafePathError(f"{shown}/{name} is a symbolic link; raygenre never writes or moves "
                                          f"anything through a link: remove the link (its target is yours)")
        if folder != stat.S_ISDIR(sub.st_mode) or not (folder or stat.S_ISREG(sub.st_mode)):
            raise storage.OutputExistsError(f"{shown}/{name} is not the {'folder' if folder else 'file'} raygenre "
                                            f"keeps there; move it away")


@dataclass
class PartsSurvey:
    """What a parts folder holds, sorted out: raygenre's parts, temporaries of killed writes, and the rest."""

    parts: list[str] = field(default_factory=list)  # finished parts (regular files named part-<n>-<hex>.parquet)
    temporaries: list[str] = field(default_factory=list)  # .<part or run.json>.tmp-<hex>, regular files
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (name, why): links, stray files; never touched


def part_name(index: int) -> str:
    """A new part's file name: ``part-<index>-<8 random hex>.parquet`` (``PART_NAME``; later runs, higher index)."""
    return f"part-{index:06d}-{uuid.uuid4().hex[:8]}.parquet"


def _part_key(name: str) -> tuple[int, str]:
    m = PART_NAME.fullmatch(name)
    return (int(m.group(1)) if m else -1), name


def survey_parts(parts_dir: str) -> PartsSurvey:
    """Sort out the entries of ``parts_dir``: only regular files named like parts count as parts (a symlink
    named like one was not written by raygenre: reading it would merge someone else's rows, moving or deleting
    it would touch their file, so it is ignored); anything else unknown is ignored too."""
    survey = PartsSurvey()
    known = {RUN_FILE, LOCK_FILE, BROKEN_DIR, OTHER_DIR, storage.LEASE, TAGGED_FILE, INDEX_FILE}
    local = storage.local_path(parts_dir)
    if local is not None:
        st = _lstat(str(local))
        if st is None or not stat.S_ISDIR(st.st_mode):  # absent, or a link (check_parts_dir refuses it)
            return survey
        with os.scandir(local) as it:
            entries = [(e.name, e.is_symlink(), e.is_file(follow_symlinks=False)) for e in it]
    else:
        fs, inner = storage.resolve(parts_dir)
        infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
        entries = [(i.base_name, False, i.type == pafs.FileType.File) for i in infos]
    for name, link, regular in sorted(entries, key=lambda e: _part_key(e[0])):
        shown = safe_str(name)[0]
        if link and (PART_NAME.fullmatch(name) or name not in known):
            survey.ignored.append((shown, "a symbolic link, which raygenre never writes there"))
        elif PART_NAME.fullmatch(name):
            if regular:
                survey.parts.append(storage.join(parts_dir, name))
            else:
                survey.ignored.append((shown, "named like a part but not a regular file"))
        elif TEMPORARY.fullmatch(name) and regular:
            survey.temporaries.append(storage.join(parts_dir, name))
        elif name not in known:
            survey.ignored.append((shown, "not a file raygenre writes there"))
    return survey


def list_parts(parts_dir: str) -> list[str]:
    """Finished part files in ``parts_dir`` (by number; temporaries, links and stray files excluded)."""
    return survey_parts(parts_dir).parts


def next_part_index(parts_dir: str) -> int:
    """One past the highest part number: later runs sort after earlier ones (newest row wins)."""
    return max((_part_key(p.rsplit("/", 1)[-1])[0] for p in list_parts(parts_dir)), default=-1) + 1


def read_part(path: str, columns: list[str] | None = None) -> pa.Table:
    fs, inner = storage.resolve(path)
    return pq.read_table(inner, filesystem=fs, columns=columns)


def output_schema(genres: list[str]) -> pa.Schema:
    """One row per file. ``p_<genre>``, ``genre``, ``top_genre`` and ``confidence`` are null for error rows."""
    return pa.schema([
        ("path", pa.string()),  # absolute path of the file (non-UTF-8 names: see safe_str)
        ("genre", pa.string()),  # top_genre, or "unknown" where confidence < label.min_confidence (output only)
        ("top_genre", pa.string()),  # argmax of the mean probability over the file's segments (the best guess)
        ("confidence", pa.float32()),  # that mean probability
        *[(f"p_{g}", pa.float32()) for g in genres],  # mean softmax over segments; sums to 1
        ("duration_s", pa.float64()),  # from the header (also on error rows when the header was readable)
        ("segments_used", pa.int32()),  # segments the label is based on (<= segments_per_track)
        ("error", pa.string()),  # null when fine, else why the file could not be labelled
        ("model", pa.string()),  # model id
        ("size", pa.int64()),  # bytes, for resume
        ("mtime", pa.float64()),  # st_mtime, for resume
    ])


def describe_schema(schema: pa.Schema) -> list[list[str]]:
    """A schema as JSON: [[name, type], ...] (what ``run.json`` records)."""
    return [[f.name, str(f.type)] for f in schema]


def genres_of_columns(names: list[str], *, legacy: bool = False) -> list[str] | None:
    """The genres of a label table's columns (its ``p_<genre>`` columns), ``None`` when they are not a label
    table's: path, genre, top_genre, confidence, p_<genre>..., duration_s, segments_used, error, model, size,
    mtime. ``legacy`` also accepts the older tables without ``top_genre``."""
    tail = len(TAIL_COLUMNS)
    heads = [HEAD_COLUMNS, LEGACY_HEAD_COLUMNS] if legacy else [HEAD_COLUMNS]
    head = next((len(h) for h in heads if names[:len(h)] == h), None)
    if head is None or len(names) <= head + tail or names[-tail:] != TAIL_COLUMNS:
        return None
    middle = names[head:-tail]
    return [n[2:] for n in middle] if all(n.startswith("p_") and len(n) > 2 for n in middle) else None


def is_label_schema(schema: pa.Schema) -> bool:
    """Exactly the columns and types ``output_schema`` gives for some genres."""
    genres = genres_of_columns(schema.names)
    return genres is not None and schema.equals(output_schema(genres), check_metadata=False)


def _is_legacy_schema(schema: pa.Schema) -> bool:
    """The columns and types of a label table written before ``top_genre``."""
    genres = genres_of_columns(schema.names, legacy=True)
    return genres is not None and schema.equals(
        pa.schema([f for f in output_schema(genres) if f.name != "top_genre"]), check_metadata=False)


def _part_problem(part: str, schema: pa.Schema | None, model: str | None) -> tuple[str, str] | None:
    """Why a part cannot be used: ("broken", why) when it is not readable Parquet, ("other", why) when it is
    not a label part, or (given ``schema``/``model``) was made with another schema or model; else ``None``."""
    fs, inner = storage.resolve(part)
    try:
        found = pq.read_schema(inner, filesystem=fs)
    except (pa.ArrowException, OSError):
        return "broken", "not readable Parquet (empty or cut short)"
    if _is_legacy_schema(found):
        return "other", "made by an earlier raygenre (no top_genre column): its files are labelled again"
    if not is_label_schema(found):
        return "other", f"not a label part (columns {', '.join(found.names[:6])}...)"
    if schema is not None and not found.equals(schema, check_metadata=False):
        return "other", f"made for other genres ({', '.join(genres_of_columns(found.names) or [])})"
    if model is not None:
        try:
            models = set(read_part(part, ["model"]).column("model").to_pylist())
        except (pa.ArrowException, OSError):
            return "broken", "not readable Parquet (its data is damaged)"
        if models - {model}:
            return "other", f"made with model {', '.join(sorted(str(m) for m in models - {model}))}"
    return None


def _move_into(part: str, parts_dir: str, folder: str) -> None:
    """Move one part (a regular file, checked again here) into ``parts_dir/folder`` (a real folder)."""
    dest = storage.join(parts_dir, folder)
    name = part.rsplit("/", 1)[-1]
    local = storage.local_path(part)
    if local is None:
        fs, inner = storage.resolve(dest)
        fs.create_dir(inner, recursive=True)
        fs.move(storage.resolve(part)[1], f"{inner}/{name}")
        return
    st = _lstat(str(local))
    if st is None or not stat.S_ISREG(st.st_mode):
        return  # gone or replaced since the survey: not ours to move
    dest_local = str(storage.local_path(dest))
    held = _lstat(dest_local)
    if held is None:
        os.mkdir(dest_local)
    elif stat.S_ISLNK(held.st_mode) or not stat.S_ISDIR(held.st_mode):
        raise storage.UnsafePathError(f"{storage.redact(dest)} is a symbolic link or not a folder; raygenre moves "
                                      f"parts only into a real folder there: move it away and run again")
    storage.check_inside(f"{dest_local}/{name}", parts_dir)
    os.rename(str(local), f"{dest_local}/{name}")


@dataclass
class SetAside:
    """Parts a resume could not use, moved out of the way (kept, never deleted); their files are labelled again."""

    broken: list[str] = field(default_factory=list)  # names moved to broken/ (unreadable)
    other: list[str] = field(default_factory=list)  # "name: why" moved to other-runs/ (another model or schema)


def set_aside_broken_parts(parts_dir: str, schema: pa.Schema | None = None, model: str | None = None) -> SetAside:
    """Move parts that are not readable Parquet (zero bytes, cut short) to ``PARTS/broken/``, and parts that
    are not this run's (another ``schema`` or ``model``, when given) to ``PARTS/other-runs/``.

    Their files have no row then, so the run labels them again; nothing is merged from another run, nothing lost.
    """
    moved = SetAside()
    for part in list_parts(parts_dir):
        problem = _part_problem(part, schema, model)
        if problem is None:
            continue
        name = part.rsplit("/", 1)[-1]
        if problem[0] == "broken":
            _move_into(part, parts_dir, BROKEN_DIR)
            moved.broken.append(name)
        else:
            _move_into(part, parts_dir, OTHER_DIR)
            moved.other.append(f"{name}: {problem[1]}")
    return moved


# ----------------------------------------------------------------------------------------------- the output
def _sniff_columns(fs: pafs.FileSystem, inner: str) -> list[str] | None:
    """The columns of an existing file if it is a table raygenre could have written (Parquet schema, CSV
    header or the first JSON Lines object), else ``None``. Reads the footer or the first MiB, never the rest."""
    try:
        found = pq.read_schema(inner, filesystem=fs)
        return found.names if is_label_schema(found) or _is_legacy_schema(found) else None
    except (pa.ArrowException, OSError):
        pass
    with fs.open_input_stream(inner) as f:
        head = f.read(SNIFF_BYTES)
    try:
        line = head.split(b"\n", 1)[0].decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    if line.startswith("{"):
        try:
            first = json.loads(line)
        except ValueError:
            return None
        return list(first) if isinstance(first, dict) else None
    try:
        return next(csv.reader([line]))
    except (csv.Error, StopIteration):
        return None


def is_label_output(out: str) -> bool:
    """Whether the existing file ``out`` is a label table raygenre wrote, so that a rerun may replace it.

    Recognised by its content, which goes wherever the file goes: its columns are exactly a label table's
    (path, genre, top_genre, confidence, p_<genre>..., duration_s, segments_used, error, model, size, mtime, or
    an earlier raygenre's without top_genre; Parquet: with their types). ``run.json`` beside it would not do
    alone: the parts folder may be gone (deleted to start over) while the output stays. An empty file counts
    only when ``OUT.parts/run.json`` says a label run wrote here (a JSON Lines output of no rows is empty).
    """
    fs, inner = storage.resolve(out)
    info = fs.get_file_info(inner)
    if info.type != pafs.FileType.File:
        return False
    if info.size == 0:
        return storage.exists(storage.join(parts_dir_of(out), RUN_FILE))
    columns = _sniff_columns(fs, inner)
    return columns is not None and genres_of_columns(columns, legacy=True) is not None


def check_label_output(out: str, *, overwrite: bool) -> None:
    """Refuse ``out`` before any work unless it is absent, a label table raygenre wrote (replaced by a rerun),
    or (with ``overwrite``) another file. A folder is always refused. A local symlink is refused; with
    ``overwrite`` the link itself is replaced (the final rename replaces the link, never its target). Then
    ``check_parts_dir``. Raises ``OutputExistsError`` (``UnsafePathError`` for links); ``StorageError`` for an S3
    ``out`` whose settings the final upload could not use (``storage.s3_client_kwargs``)."""
    shown = storage.redact(out)
    again = "choose another --out, or pass --overwrite to replace it"
    local = storage.local_path(out)
    if local is not None:
        st = _lstat(str(local))
        if st is not None and stat.S_ISLNK(st.st_mode):
            if not overwrite:
                raise storage.UnsafePathError(
                    f"{shown} is a symbolic link; raygenre never writes through a link: give the real path, "
                    f"or pass --overwrite to replace the link itself (its target is left untouched)")
        elif st is not None and stat.S_ISDIR(st.st_mode):
            raise storage.OutputExistsError(f"{shown} is a folder; --out names the output file "
                                            f"(e.g. {shown.rstrip('/')}/labels.parquet)")
        elif st is not None and not stat.S_ISREG(st.st_mode):
            raise storage.OutputExistsError(f"{shown} exists and is not a regular file (a pipe, socket or device); "
                                            f"choose another --out")
        elif st is not None and not overwrite and not is_label_output(out):
            raise storage.OutputExistsError(f"{shown} already exists and is not a label table raygenre wrote "
                                            f"(raygenre never overwrites what it did not write): {again}")
        parent = local.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise storage.OutputExistsError(f"{shown}: {parent} is not a folder, so --out cannot be written there")
    else:
        fs, inner = storage.resolve(out)
        if isinstance(fs, pafs.S3FileSystem):  # the end-of-run upload's client settings: refused now, not then
            storage.s3_client_kwargs(fs, out)
        kind = fs.get_file_info(inner).type
        if kind == pafs.FileType.Directory:
            raise storage.OutputExistsError(f"{shown} is a folder; --out names the output file "
                                            f"(e.g. {shown.rstrip('/')}/labels.parquet)")
        if kind == pafs.FileType.File and not overwrite and not is_label_output(out):
            raise storage.OutputExistsError(f"{shown} already exists and is not a label table raygenre wrote "
                                            f"(raygenre never overwrites what it did not write): {again}")
    check_parts_dir(parts_dir_of(out))


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
        name = part_name(self.index)
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
    skipped: list[str] = field(default_factory=list)  # "name: why" of parts not merged (not this run's)
    keys: list[pa.Table] = field(default_factory=list)  # (path, size, mtime) of the rows written: the done index

    def summary(self) -> dict[str, Any]:
        """The counts the done index records (``index.write_index``)."""
        return {"files": self.files, "errors": self.errors, "genres": self.genres.most_common(),
                "error_examples": self.error_examples}

    def add(self, table: pa.Table) -> None:
        self.files += table.num_rows
        self.keys.append(table.select(["path", "size", "mtime"]))
        errs = table.column("error").to_pylist()
        self.errors += sum(e is not None for e in errs)
        self.genres.update(g for g in table.column("genre").to_pylist() if g is not None)
        for p, e in zip(table.column("path").to_pylist(), errs, strict=True):
            if e is not None and len(self.error_examples) < MAX_ERROR_EXAMPLES:
                self.error_examples.append((p, e))


class _OutputFile:
    """Streams tables into one Parquet/CSV/JSONL file under a temporary name; ``commit`` publishes it whole.

    Locally the temporary is created exclusively and without following links (``O_EXCL | O_NOFOLLOW``) and
    fsynced before the rename; the rename replaces the directory entry at ``out`` (a link there is replaced
    itself, its target never written).

    S3: the file is spooled to a local temporary file (``tempfile.TemporaryFile`` in ``$TMPDIR``: unlinked at once,
    so the kernel frees it however the process ends, even killed), fsynced, checked, then uploaded to ``out`` in
    one upload (``storage.upload_file_atomic``): no temporary key, no CopyObject (S3 refuses one above 5 GB), and a
    failed upload is aborted, leaving the object at ``out`` as it was. ``$TMPDIR`` needs room for the output.
    Other object stores (gs://, ...): a temporary key, then Arrow's ``move`` (boto3 speaks only S3; the 5 GB
    single-copy limit is S3's CopyObject's).
    """

    def __init__(self, out: str, fmt: str, schema: pa.Schema, overwrite: bool = False, check: bool = True) -> None:
        self.out, self.overwrite, self.check = out, overwrite, check
        self.fs, self.inner = storage.resolve(out)
        parent, name = self.inner.rsplit("/", 1)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.s3 = isinstance(self.fs, pafs.S3FileSystem)
        self.tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:8]}"
        self.sink: Any
        if self.local:
            os.makedirs(parent or "/", exist_ok=True)
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
            self.sink = open(fd, "wb")  # noqa: SIM115 - closed in close()
        elif self.s3:
            # Not Arrow's S3 output stream: it has no abort, and its destructor completes the multipart upload,
            # so a failure mid-way would publish part of the output. The client settings are read now, before
            # the whole output is spooled, so that one boto3 cannot honour fails first.
            storage.s3_client_kwargs(self.fs, out)
            self.sink = tempfile.TemporaryFile(prefix=f".{name}.raygenre-upload-")  # noqa: SIM115 - in close()
        else:
            self.fs.create_dir(parent, recursive=True)
            self.sink = self.fs.open_output_stream(self.tmp)
        self.fmt, self.schema = fmt, schema
        self.pending: list[pa.Table] = []
        self.rows = 0
        self.writer: Any = None
        if fmt == "parquet":
            self.writer = pq.ParquetWriter(self.sink, schema)
        elif fmt == "csv":
            self.writer = pacsv.CSVWriter(self.sink, schema)

    def write(self, table: pa.Table) -> None:
        """Buffer ``table``; every ``OUTPUT_ROW_GROUP`` rows are written as one Parquet row group (a part is a
        few hundred rows: one row group each gave 39,000 row groups and a footer of megabytes at 10M files)."""
        self.pending.append(table)
        self.rows += table.num_rows
        if self.rows >= OUTPUT_ROW_GROUP:
            self._drain()

    def _drain(self) -> None:
        if not self.pending:
            return
        table = pa.concat_tables(self.pending)
        self.pending, self.rows = [], 0
        if self.fmt == "parquet":
            self.writer.write_table(table, row_group_size=max(1, table.num_rows))
            return
        if self.writer is not None:  # CSV
            self.writer.write_table(table)
            return
        lines = io.StringIO()
        for row in table.to_pylist():
            lines.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.sink.write(lines.getvalue().encode("utf-8"))

    def close(self) -> None:
        self._drain()
        if self.writer is not None:
            self.writer.close()
        if (self.local or self.s3) and not self.sink.closed:
            # S3's spool too: a write the disk could not hold (full, quota) fails here, not as a short upload
            self.sink.flush()
            os.fsync(self.sink.fileno())
        if not self.s3:  # the spool stays open until it is uploaded (closing it frees it)
            self.sink.close()

    def commit(self) -> None:
        """Publish the output at ``out`` whole (after ``check_label_output`` once more, unless ``check`` is off)."""
        self.close()
        # Checked again at the end: a run takes hours, and what appeared at OUT meanwhile is not ours to replace.
        if self.check:
            check_label_output(self.out, overwrite=self.overwrite)
        if self.s3:
            try:
                storage.upload_file_atomic(self.sink, self.out, resolved=(self.fs, self.inner))
            finally:
                self.sink.close()
            return
        if not self.local:
            self.fs.move(self.tmp, self.inner)
            return
        os.replace(self.tmp, self.inner)
        fd = os.open(os.path.dirname(self.inner) or "/", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def abort(self) -> None:
        """Drop the output: delete the temporary (S3: close the spool, which frees it; nothing was uploaded)."""
        self.pending = []  # nothing more is written: the temporary goes
        with contextlib.suppress(Exception):
            self.close()
        with contextlib.suppress(Exception):
            if self.s3:
                self.sink.close()
            elif self.local:
                os.unlink(self.tmp)
            else:
                self.fs.delete_file(self.tmp)


def with_threshold(table: pa.Table, min_confidence: float) -> pa.Table:
    """``table`` with ``genre`` set to ``UNKNOWN`` where ``confidence < min_confidence`` (``top_genre`` keeps
    the best guess, the probabilities stay); error rows (null genre) stay null. 0 changes nothing."""
    if min_confidence <= 0:
        return table
    unsure = pc.fill_null(pc.less(table.column("confidence"), pa.scalar(min_confidence, pa.float32())), False)
    genre = pc.if_else(unsure, pa.scalar(UNKNOWN), table.column("genre"))
    return table.set_column(table.schema.get_field_index("genre"), "genre", genre)


def consolidate(parts_dir: str, out: str, fmt: str, schema: pa.Schema, *, keep_deleted: bool = False,
                model: str | None = None, overwrite: bool = False, min_confidence: float = 0.0) -> _Tally:
    """Stream the parts into ``out`` in ``fmt`` (atomically: ``_OutputFile``); count rows.

    Exactly one row per file: where runs labelled a path more than once (it changed between runs), the row of
    the latest part wins; rows of files no longer in the library are dropped unless ``keep_deleted``, and so is
    a folder's error row ("cannot list this folder") once that folder can be listed (its files have rows then).
    Parts of another ``schema`` or (given) ``model`` are never merged: they are skipped and named in
    ``skipped``. ``out`` goes through ``check_label_output`` again before it is published. ``min_confidence``:
    ``with_threshold`` (applied here, not in the parts: changing it relabels nothing).
    """
    parts = []
    tally = _Tally()
    for part in list_parts(parts_dir):
        problem = _part_problem(part, schema, model)
        if problem is None:
            parts.append(part)
        else:
            tally.skipped.append(f"{part.rsplit('/', 1)[-1]}: {problem[1]}")
    latest: dict[str, tuple[int, int]] = {}  # path -> (part, row) of its newest row
    for i, part in enumerate(parts):
        for j, path in enumerate(read_part(part, ["path"]).column("path").to_pylist()):
            latest[path] = (i, j)
    target = _OutputFile(out, fmt, schema, overwrite)
    # Many small parts are merged into one (newest row per path, nothing else dropped): a resume, the scan's
    # done sets and the next consolidation then read one file, not thousands (256 rows each: 39,000 at 10M).
    merged = _OutputFile(storage.join(parts_dir, part_name(_part_key(parts[-1].rsplit("/", 1)[-1])[0])),
                         "parquet", schema, check=False) if len(parts) >= COMPACT_PARTS else None
    try:
        for i, part in enumerate(parts):
            table = read_part(part).select(schema.names).cast(schema)
            cols = table.select(["path", "error", "size"]).to_pydict()
            newest = [latest[p] == (i, j) for j, p in enumerate(cols["path"])]
            if merged is not None:
                merged.write(table.filter(pa.array(newest, type=pa.bool_())))
            keep = [n and (keep_deleted or on_disk(p)) and not (e is not None and s == 0 and listable_folder(p))
                    for n, p, e, s in zip(newest, cols["path"], cols["error"], cols["size"], strict=True)]
            table = with_threshold(table.filter(pa.array(keep, type=pa.bool_())), min_confidence)
            target.write(table)
            tally.add(table)
        target.commit()
    except BaseException:
        target.abort()
        if merged is not None:
            merged.abort()
        raise
    if merged is not None:
        _commit_compacted(merged, parts, parts_dir)
    return tally


def _commit_compacted(merged: _OutputFile, parts: list[str], parts_dir: str) -> None:
    """Publish the merged part, then delete the parts it holds. Crash-safe either way: until the deletes, a path's
    newest row is in both the merged part and its old part, the same row, so whichever wins is the same; the
    merged part carries the highest merged number, so later parts (later runs) still win over it."""
    try:
        merged.commit()
    except BaseException:
        merged.abort()
        raise
    for part in parts:
        _remove_part(part, parts_dir)


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
    check_parts_dir(parts_dir)
    local = storage.local_path(parts_dir)
    if local is None:
        try:
            lease = storage.Lease.acquire(parts_dir, "labels")
        except storage.OutputExistsError as exc:
            raise ValueError(f"another `raygenre label` is writing to {storage.redact(parts_dir)}: {exc}") from None
        try:
            yield
        finally:
            lease.release()
        return
    local.mkdir(parents=True, exist_ok=True)
    try:  # O_NOFOLLOW: a lock file planted as a link must not create or open its target
        fd = os.open(local / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise storage.UnsafePathError(f"{storage.redact(parts_dir)}/{LOCK_FILE} is a symbolic link; remove "
                                      f"it") from None
    with open(fd, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another `raygenre label` is writing to {storage.redact(parts_dir)}; wait for it or "
                             f"use another --out") from None
        yield


def _read_run(run_file: str) -> tuple[dict[str, Any] | None, str]:
    """(the run record, "") or (None, what is wrong with it: missing, not JSON, not an object...)."""
    if not storage.exists(run_file):
        return None, "is missing"
    try:
        old = json.loads(storage.read_text(run_file))
    except (ValueError, UnicodeDecodeError):  # cut short (power loss before it was fsynced), or garbage
        return None, "is damaged (not JSON)"
    if not isinstance(old, dict):
        return None, f"is damaged (a JSON {type(old).__name__}, not an object)"
    if not isinstance(old.get("model"), str) or not isinstance(old.get("genres"), list):
        return None, "is damaged (it names no model or genres)"
    return old, ""


def _rebuild_problem(parts: list[str], run: dict[str, Any], schema: pa.Schema) -> str | None:
    """Why the parts (readable ones) do not agree with ``run`` (model, schema, library), else ``None``."""
    prefix = str(run.get("library", "")).rstrip("/") + "/"
    for part in parts:
        problem = _part_problem(part, schema, str(run["model"]))
        if problem is not None and problem[0] == "broken":
            continue  # set aside later; it holds no rows to disagree with
        if problem is not None:
            return f"{part.rsplit('/', 1)[-1]} was {problem[1]}"
        if "library" in run:
            outside = [p for p in read_part(part, ["path"]).column("path").to_pylist()
                       if not original_path(p).startswith(prefix)]
            if outside:
                return f"{part.rsplit('/', 1)[-1]} holds files of another library ({outside[0]})"
    return None


@dataclass
class PartsState:
    """What ``prepare_parts`` found and did; ``warnings`` are for the user (one line each)."""

    set_aside: SetAside = field(default_factory=SetAside)
    warnings: list[str] = field(default_factory=list)


def prepare_parts(parts_dir: str, run: dict[str, Any], resume: bool) -> PartsState:
    """Start fresh (``resume=False``) or check that existing parts were made with this model and settings.

    ``run`` must name ``model`` and ``genres``; the output schema is recorded with it in ``run.json``, written
    durably (fsync). Resume: a ``run.json`` that names other settings is refused (``ResumeMismatchError``); a
    missing or damaged one is rebuilt when every readable part agrees with this run (model, schema, library),
    else refused; then unreadable parts go to ``broken/`` and parts of another model or schema to
    ``other-runs/``. Fresh start: raygenre's label parts are deleted, anything else set aside the same way.
    Links and stray files in the folder are never touched (a warning each).
    """
    check_parts_dir(parts_dir)
    shown = storage.redact(parts_dir)
    schema = output_schema(list(run["genres"]))
    run = {**run, "schema": describe_schema(schema)}
    run_file = storage.join(parts_dir, RUN_FILE)
    survey = survey_parts(parts_dir)
    state = PartsState(warnings=[f"{shown}/{name} is {why}: ignored (left as it is)" for name, why in survey.ignored])
    if not resume:
        for part in survey.parts:
            problem = _part_problem(part, None, None)
            if problem is None:  # a label part raygenre wrote: --no-resume discards it
                _remove_part(part, parts_dir)
            else:
                _move_into(part, parts_dir, BROKEN_DIR if problem[0] == "broken" else OTHER_DIR)
                (state.set_aside.broken if problem[0] == "broken" else state.set_aside.other).append(
                    part.rsplit("/", 1)[-1] + ("" if problem[0] == "broken" else f": {problem[1]}"))
    elif survey.parts:
        old, trouble = _read_run(run_file)
        if old is not None:
            # "schema" was added to run.json later: an older file without it is judged by its genres
            diff = [k for k in run if (k in old or k != "schema") and old.get(k) != run[k]]
            if diff:
                raise ResumeMismatchError(
                    f"{shown} holds results made with other {', '.join(diff)} "
                    f"({', '.join(f'{k}: {old.get(k)!r} -> {run[k]!r}' for k in diff if k != 'schema')}); "
                    f"use --no-resume to label everything again, or another --out")
        else:
            problem = _rebuild_problem(survey.parts, run, schema)
            if problem is not None:
                raise ResumeMismatchError(
                    f"{shown}/{RUN_FILE} {trouble}, and its parts are not all this run's ({problem}), so they "
                    f"cannot be resumed: use --no-resume to label everything again (the parts of other runs are "
                    f"kept in {OTHER_DIR}/), or another --out")
            state.warnings.append(f"{shown}/{RUN_FILE} {trouble}: rebuilt from the {len(survey.parts)} part(s), "
                                  f"which were all made with this model and schema")
        state.set_aside = set_aside_broken_parts(parts_dir, schema, str(run["model"]))
    for tmp in survey.temporaries:  # temporaries of parts (and run.json) killed mid-write: raygenre's own
        _remove_part(tmp, parts_dir)
    fs, inner = storage.resolve(parts_dir)
    fs.create_dir(inner, recursive=True)
    storage.write_bytes_durable(run_file, (json.dumps(run, indent=2, default=str) + "\n").encode("utf-8"))
    state.warnings += [f"{shown}/{name}: set aside in {OTHER_DIR}/, never merged" for name in state.set_aside.other]
    return state


def _remove_part(path: str, parts_dir: str) -> None:
    """Delete one of raygenre's files in the parts folder: locally only a regular file, never through a link."""
    local = storage.local_path(path)
    if local is None:
        storage.remove(path)
        return
    st = _lstat(str(local))
    if st is not None and stat.S_ISREG(st.st_mode):
        storage.check_inside(str(local), parts_dir)
        os.unlink(local)
