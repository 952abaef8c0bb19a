"""The done index: what the last committed label output holds, so a resume with nothing to do starts no Ray.

After every consolidation, ``OUT.parts/done-index.parquet`` records the output's files as one sorted Arrow
table (path, size, mtime: ~20 bytes + the path per file) and, in its metadata, the run settings, the parts it
was built from (name and size), the output's own size and mtime, and the summary counts. A resume first walks
the library here in the driver (``scan.walk_shard``, every shard: the ``scandir`` + ``stat`` floor) and
compares: when the files found are exactly the indexed ones (same paths, sizes and mtimes), the settings and
parts are the same and the output is the one raygenre wrote, consolidating again would write the same bytes
and labelling would find nothing, so the run ends there, without Ray (measured: bench/label_scale.py). Any
difference (a new, changed or deleted file, another model, a part added or removed, an output someone
replaced, a lost ``run.json``) falls through to the full run, which is what decides; the index only ever skips work.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raygenre import storage
from raygenre.label import tagged
from raygenre.label.parts import INDEX_FILE, RUN_FILE, _read_run, list_parts, safe_str
from raygenre.label.scan import walk_shard

_META = b"raygenre.done-index"
_SCHEMA = pa.schema([("path", pa.string()), ("size", pa.int64()), ("mtime", pa.float64())])


def _parts_of(parts_dir: str) -> list[list[Any]]:
    """[name, size] of every part, in order: a part added, removed or rewritten changes it."""
    parts = list_parts(parts_dir)
    if not parts:
        return []
    fs, _ = storage.resolve(parts_dir)
    infos = fs.get_file_info([storage.resolve(part)[1] for part in parts])  # one listing call, not one per part
    return [[part.rsplit("/", 1)[-1], int(info.size or 0)] for part, info in zip(parts, infos, strict=True)]


def _out_stamp(out: str) -> list[Any] | None:
    """[size, mtime_ns] of the output file, or None when it is not a plain file."""
    fs, inner = storage.resolve(out)
    info = fs.get_file_info(inner)
    if info.type != pafs.FileType.File:
        return None
    return [int(info.size or 0), int(info.mtime_ns or 0)]


def write_index(parts_dir: str, out: str, settings: dict[str, Any], keys: pa.Table, summary: dict[str, Any]) -> None:
    """Record the committed output ``out``: its rows' ``keys`` (path, size, mtime), the run ``settings`` (run
    record, format, keep_deleted) and ``summary`` counts. Written atomically, after the output's commit."""
    meta = {"settings": settings, "parts": _parts_of(parts_dir), "out": _out_stamp(out), "summary": summary}
    table = keys.select(_SCHEMA.names).cast(_SCHEMA).sort_by("path")
    table = table.replace_schema_metadata({_META: json.dumps(meta, default=str).encode()})
    path = storage.join(parts_dir, INDEX_FILE)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.write_bytes_atomic(path, sink.getvalue().to_pybytes(), root=parts_dir)


def walk_library(root: str, exts: frozenset[str]) -> pa.Table:
    """Every entry the scan would consider (``_SCHEMA``: its stored path, size, mtime), sorted by path."""
    cols: dict[str, list[Any]] = {"path": [], "size": [], "mtime": []}
    for found in walk_shard(root, 0, 1, exts):  # one shard of one: the whole library in a single pass
        cols["path"].append(safe_str(found.path)[0])
        cols["size"].append(found.size)
        cols["mtime"].append(found.mtime)
    return pa.table(cols, schema=_SCHEMA).sort_by("path")


# Settings that only consolidation applies: when they alone differ, the output is rewritten from the parts
# (``rewrite_only``), without Ray and without labelling a file again.
OUTPUT_SETTINGS = ("format", "keep_deleted", "min_confidence")


def compare(parts_dir: str, out: str, settings: dict[str, Any], root: str,
            exts: frozenset[str]) -> tuple[str, dict[str, Any]] | None:
    """("unchanged", recorded summary) when nothing is left to do for this run (see the module doc);
    ("rewrite", summary) when the library, the parts and the run are the indexed ones and only
    ``OUTPUT_SETTINGS`` (or the output file) differ, so consolidating again is all there is to do; else None."""
    try:
        fs, inner = storage.resolve(storage.join(parts_dir, INDEX_FILE))
        index = pq.read_table(inner, filesystem=fs)
        meta = json.loads((index.schema.metadata or {})[_META])
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None  # no index, or one cut short: the full run decides
    wanted = json.loads(json.dumps(settings, default=str))
    had = meta.get("settings") or {}
    if {k: v for k, v in had.items() if k not in OUTPUT_SETTINGS} != \
            {k: v for k, v in wanted.items() if k not in OUTPUT_SETTINGS}:
        return None
    recorded, _ = _read_run(storage.join(parts_dir, RUN_FILE))  # lost or damaged: the full run rebuilds it
    if recorded is None or any(recorded.get(k) != v for k, v in wanted["run"].items()):
        return None
    if meta.get("parts") != _parts_of(parts_dir):
        return None
    found = walk_library(root, exts)
    recorded_keys = index.select(_SCHEMA.names).cast(_SCHEMA).replace_schema_metadata(None)
    moves = tagged.load(parts_dir)
    if moves:  # files `raygenre tag` rewrote since: compare them at the (size, mtime) tagging left them with
        cols = recorded_keys.to_pydict()
        after = [tagged.advance(p, (s, m), moves) for p, s, m in zip(cols["path"], cols["size"], cols["mtime"],
                                                                      strict=True)]
        recorded_keys = pa.table({"path": cols["path"], "size": [a[0] for a in after],
                                  "mtime": [a[1] for a in after]}, schema=_SCHEMA)
    if not found.equals(recorded_keys):
        return None
    same = had == wanted and meta.get("out") == _out_stamp(out)
    return ("unchanged" if same else "rewrite"), dict(meta["summary"])


def unchanged(parts_dir: str, out: str, settings: dict[str, Any], root: str,
              exts: frozenset[str]) -> dict[str, Any] | None:
    """The recorded summary when nothing is left to do for this run (see the module doc), else None."""
    found = compare(parts_dir, out, settings, root, exts)
    return found[1] if found is not None and found[0] == "unchanged" else None
