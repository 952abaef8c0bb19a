"""Finding a library's audio files: a streaming walk in shards, skipping what earlier runs already labelled.

The library's entries at one depth (``spread_depth``: the top level, or the first level below it with enough
entries, so that a library of one top folder, ``~/Music/``, still spreads) are split into ``SCAN_SHARDS``
shards by a hash of their path; scan task *k* lists the levels above that depth itself (streaming
``os.scandir``: small, by construction) and walks only the subtrees of its shard, yielding blocks of
``SCAN_BLOCK_ROWS`` paths: it holds one open folder and a stack of pending sub-folders, never a list of files.
Hidden files and folders (``.name``) are skipped; symlinked folders are followed unless they point back into the
library or into one of their own ancestors (a loop). A folder that cannot be opened or listed (no permission, a
path longer than the system allows) and a file whose information cannot be read get an error row each: nothing is
skipped silently. Pure: no Ray (``pipeline.LibraryScan`` runs it as a source).
"""

from __future__ import annotations

import errno
import os
import stat
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from raygenre import storage
from raygenre.label import tagged
from raygenre.label.parts import list_parts, original_path, read_part, safe_str

SCAN_SHARDS = 8  # read tasks; each walks the subtrees of ~1/8 of the top-level entries
SCAN_BLOCK_ROWS = 8  # paths per scan block = files per decode task: small, so decoding spreads over workers
SPREAD_ENTRIES = 4 * SCAN_SHARDS  # entries at the split depth: enough that every shard gets several subtrees
SPREAD_MAX_DEPTH = 3  # deepest split level (every shard lists the levels above it)


def library_root(library: str) -> str:
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


def shard_of(name: str, shards: int) -> int:
    """Stable shard (0..shards-1) of an entry's key (its path below the root, down to the split depth)."""
    return zlib.crc32(os.fsencode(name)) % shards


def _key(rel: str, depth: int) -> str:
    """The part of a path below the root (``rel``) that decides its shard: its first ``depth + 1`` names."""
    return "/".join(rel.split("/")[: depth + 1])


def spread_depth(root: str, shards: int = SCAN_SHARDS) -> int:
    """The depth whose entries are sharded: 0 (the top level) unless it has fewer than ``SPREAD_ENTRIES``
    (counting stops there) visible entries, then the first level below that has, at most ``SPREAD_MAX_DEPTH``.

    A library of one top folder with a million files below it was walked by one task (one top-level name, one
    shard). Symlinked folders are not followed here: they are keys, which is all the split needs.
    """
    level = [root]
    for depth in range(SPREAD_MAX_DEPTH):
        count, below = 0, []
        for folder in level:
            try:
                with os.scandir(folder) as it:
                    for entry in it:
                        if entry.name.startswith("."):
                            continue
                        count += 1
                        if entry.is_dir(follow_symlinks=False):
                            below.append(entry.path)
                        if count >= max(SPREAD_ENTRIES, 4 * shards):
                            return depth
            except OSError:
                continue  # the scan reports it (an error row)
        if not below:
            return depth
        level = below
    return SPREAD_MAX_DEPTH


def _shard_of_path(path: str, prefix: str, shards: int, depth: int = 0) -> int | None:
    """Shard of a stored path (``safe_str``) under ``prefix`` (root + "/"), ``None`` when it is elsewhere."""
    path = original_path(path)  # the real name: what walk_shard shards by
    if not path.startswith(prefix):
        return None
    return shard_of(_key(path[len(prefix):], depth), shards)


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


def path_max(root: str) -> int:
    """The longest path the system takes, in bytes with the final NUL (PATH_MAX: 4096 on Linux)."""
    try:
        return int(os.pathconf(root, "PC_PATH_MAX"))
    except (OSError, ValueError):
        return 4096


def _too_long(path: str, limit: int) -> str | None:
    """The error for a path the system cannot open (``limit``: ``path_max``), else ``None``."""
    size = len(os.fsencode(path))
    if size < limit:
        return None
    return (f"path too long: {size} bytes, the system opens at most {limit - 1}; move it closer to the top of the "
            f"library")


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENAMETOOLONG:
        return "path too long for the system to open; move it closer to the top of the library"
    return exc.strerror or str(exc)


def _consider(entry: os.DirEntry[str], ancestors: tuple[tuple[int, int], ...], root_real: str,
              exts: frozenset[str], stack: list[tuple[str, tuple[tuple[int, int], ...]]],
              limit: int = 4096) -> Iterator[_Found]:
    """Queue a sub-folder on ``stack`` or yield an audio file (by extension); ignore anything else.

    A folder that cannot be opened (its path too long, its information unreadable) yields an error row: the
    files under it cannot be found, and the row says why.
    """
    try:
        is_dir = entry.is_dir(follow_symlinks=True)
    except OSError:
        is_dir = False
    if is_dir:
        too_long = _too_long(entry.path, limit)
        if too_long:
            yield _Found(entry.path, 0, 0.0, f"cannot list this folder: {too_long}")
            return
        try:
            if entry.is_symlink() and _inside(os.path.realpath(entry.path), root_real):
                return  # points back into the library: walked anyway (or a loop)
            did = _dir_id(entry.path)
        except OSError as exc:
            yield _Found(entry.path, 0, 0.0, f"cannot list this folder: {_reason(exc)}")
            return
        if did not in ancestors:  # a symlink to one of its own ancestors would loop
            stack.append((entry.path, (*ancestors, did)))
        return
    if os.path.splitext(entry.name)[1].lower().lstrip(".") not in exts:
        return
    too_long = _too_long(entry.path, limit)
    if too_long:  # no stat, no decoder: nothing can open it
        yield _Found(entry.path, 0, 0.0, too_long)
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
        yield _Found(entry.path, 0, 0.0, f"cannot read the file's information: {_reason(exc)}")


def walk_shard(root: str, shard: int, shards: int, exts: frozenset[str], depth: int = 0) -> Iterator[_Found]:
    """Audio files of ``shard`` (their key at ``depth``: ``spread_depth``), streamed (depth first).

    Folders above ``depth`` are listed by every shard, and only their entries of this shard are yielded; at
    ``depth`` only this shard's entries are followed, and everything below them is this shard's. Holds one open
    directory and a stack of pending sub-folders, never a list of files. A folder that cannot be listed yields
    one error row (its path, size 0), in its own shard.
    """
    root_real = os.path.realpath(root)
    prefix = root.rstrip("/") + "/"
    limit = path_max(root)

    def mine(path: str) -> bool:
        # by the real name (bytes): what load_done shards the rows of earlier runs by (via original_path)
        return shard_of(_key(path[len(prefix):], depth), shards) == shard

    stack: list[tuple[str, tuple[tuple[int, int], ...], int]] = [(root, (_dir_id(root),), 0)]
    while stack:
        folder, ancestors, level = stack.pop()
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    if entry.name.startswith(".") or (level == depth and not mine(entry.path)):
                        continue
                    found_dirs: list[tuple[str, tuple[tuple[int, int], ...]]] = []
                    for found in _consider(entry, ancestors, root_real, exts, found_dirs, limit):
                        if level >= depth or mine(found.path):
                            yield found
                    stack.extend((path, anc, level + 1) for path, anc in found_dirs)
        except OSError as exc:
            if folder == root:
                raise
            if level > depth or mine(folder):
                yield _Found(folder, 0, 0.0, f"cannot list this folder: {_reason(exc)}")


def load_done(parts_dir: str, root: str, shard: int, shards: int,
              model: str | None = None, depth: int = 0) -> dict[str, tuple[int, float]]:
    """{path: (size, mtime)} of rows already in the parts, for this shard only (1/shards of the library).

    With ``model``, only that model's rows count. A part that cannot be read as a label part (planted while
    the run goes on) counts for nothing: its files are labelled, and the next resume sets it aside.
    """
    prefix = root.rstrip("/") + "/"
    done: dict[str, tuple[int, float]] = {}
    for part in list_parts(parts_dir):
        try:
            cols = read_part(part, ["path", "size", "mtime", *(["model"] if model else [])]).to_pydict()
        except (pa.ArrowException, OSError):
            continue
        models = cols.get("model") or [model] * len(cols["path"])
        for p, s, m, mid in zip(cols["path"], cols["size"], cols["mtime"], models, strict=True):
            if mid == model and _shard_of_path(p, prefix, shards, depth) == shard:
                done[p] = (s, m)
    # `raygenre tag` rewrote some files' tags (new size and mtime, same audio): their rows still count as done.
    moves = tagged.load(parts_dir, keep=done)
    return {p: tagged.advance(p, st, moves) for p, st in done.items()} if moves else done


SCAN_SCHEMA = pa.schema([("path", pa.string()), ("size", pa.int64()), ("mtime", pa.float64()),
                         ("error", pa.string()), ("replaces", pa.bool_())])


def scan_shard(root: str, shard: int, shards: int, exts: frozenset[str], parts_dir: str | None,
               block_rows: int = SCAN_BLOCK_ROWS, model: str | None = None, depth: int = 0) -> Iterator[pa.Table]:
    """Read task body: blocks (``SCAN_SCHEMA``) of files in ``shard`` that have no row (of ``model``, when
    given) in the parts yet.

    ``replaces`` marks a file whose path has a row for another (size, mtime): it changed and is relabelled.
    """
    done = load_done(parts_dir, root, shard, shards, model, depth) if parts_dir else {}
    rows: dict[str, list[Any]] = {k: [] for k in SCAN_SCHEMA.names}
    for found in walk_shard(root, shard, shards, exts, depth):
        path, name_error = safe_str(found.path)
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


def stat_files(paths: Iterable[str]) -> pa.Table:
    """Scan rows (``SCAN_SCHEMA``) for an explicit list of files, as the walk would give them: one per distinct path
    (made absolute, links kept: ``os.path.abspath``), in the order given, with an error row for a path that is
    missing, a folder, not a regular file or too long to open. ``replaces`` is always false (nothing is resumed).

    For callers that already know their files (the beets plugin: a query's items live anywhere on disk).
    """
    rows: dict[str, list[Any]] = {k: [] for k in SCAN_SCHEMA.names}
    seen: set[str] = set()
    for raw in paths:
        path = os.path.abspath(raw)
        stored, name_error = safe_str(path)
        if stored in seen:
            continue
        seen.add(stored)
        size, mtime, error = 0, 0.0, _too_long(path, path_max(os.path.dirname(path) or "/"))
        if error is None:
            try:
                st = os.stat(path)
                if stat.S_ISREG(st.st_mode):
                    size, mtime = int(st.st_size), float(st.st_mtime)
                elif stat.S_ISDIR(st.st_mode):
                    error = "a folder, not an audio file"
                else:  # a FIFO or device would block the decoder forever
                    error = "not a regular file (a pipe, socket or device)"
            except FileNotFoundError:
                error = ("broken symbolic link: its target does not exist" if os.path.islink(path)
                         else "file not found")
            except OSError as exc:
                error = f"cannot read the file's information: {_reason(exc)}"
        for key, value in (("path", stored), ("size", size), ("mtime", mtime), ("error", error or name_error),
                           ("replaces", False)):
            rows[key].append(value)
    return pa.table(rows, schema=SCAN_SCHEMA)
