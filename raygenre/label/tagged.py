"""Files ``raygenre tag`` rewrote: so that label's resume still knows them as labelled (exactly once).

Tagging changes a file's size and mtime, which is how label decides "changed, label again". For every file it
rewrites, ``raygenre tag`` (and its undo) appends one line to ``OUT.parts/tagged.jsonl``: the path, its (size,
mtime) before the rewrite and after. Label's done checks (``scan.load_done``, ``index.unchanged``) then move a
labelled row's (size, mtime) along these records: a file whose current (size, mtime) is where the chain from its
labelled row ends is unchanged (only its tags were written by raygenre); any other change (new audio, another
tagger) still breaks the chain and the file is labelled again. A line is written (fsynced) before the file is
renamed into place, so a crash in between leaves a record whose "after" no file has: harmless. A line cut short
(power loss) is ignored. Pure: no Ray.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from typing import Any

from raygenre import storage
from raygenre.label.parts import TAGGED_FILE

Stamp = tuple[int, float]  # (size in bytes, st_mtime in seconds): what label rows hold
Moves = dict[tuple[str, Stamp], Stamp]  # (stored path, before) -> after


def record(parts_dir: str, path: str, before: Stamp, after: Stamp) -> None:
    """Append one rewrite of ``path`` (its stored form, ``parts.safe_str``) and fsync. Local parts folders only;
    never through a link (``O_NOFOLLOW``)."""
    line = json.dumps({"path": path, "before": list(before), "after": list(after)}) + "\n"
    fd = os.open(storage.join(parts_dir, TAGGED_FILE),
                 os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def load(parts_dir: str | None, keep: Collection[str] | None = None) -> Moves:
    """Every recorded rewrite in ``parts_dir`` (empty when there is none, on an object store, or a link);
    with ``keep``, only those of these stored paths (a scan shard holds its own share, not the library's)."""
    local = storage.local_path(parts_dir) if parts_dir else None
    if local is None:
        return {}
    try:
        fd = os.open(local / TAGGED_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return {}
    moves: Moves = {}
    with os.fdopen(fd, "rb") as f:
        for raw in f:
            try:
                rec: dict[str, Any] = json.loads(raw)
                if keep is not None and rec["path"] not in keep:
                    continue
                before = (int(rec["before"][0]), float(rec["before"][1]))
                moves[(str(rec["path"]), before)] = (int(rec["after"][0]), float(rec["after"][1]))
            except (ValueError, KeyError, TypeError, IndexError):
                continue  # a line cut short by power loss: that rewrite is simply not known
    return moves


def advance(path: str, stamp: Stamp, moves: Moves) -> Stamp:
    """Where the chain of rewrites from ``stamp`` ends for ``path`` (``stamp`` itself when there is none)."""
    seen = {stamp}
    while (path, stamp) in moves:
        stamp = moves[(path, stamp)]
        if stamp in seen:  # a cycle cannot come from real rewrites (mtime moves on); stop rather than loop
            break
        seen.add(stamp)
    return stamp
