"""``raygenre playlists``: one extended M3U playlist per genre from a label table.

``DIR/<genre>.m3u8`` (UTF-8, ``#EXTM3U``; per track ``#EXTINF:<seconds>,<title>`` then its path, relative to
DIR unless the two share nothing but ``/``). Seconds: the table's ``duration_s``, else mutagen's, else -1;
title: the file's "artist - title" tags, else its file name. ``unknown`` gets a playlist like any genre; error
rows and files no longer on disk are in none. Each playlist is written under a temporary name in DIR and
renamed (``storage.write_bytes_atomic``).

raygenre replaces only playlists it wrote: ``DIR/.raygenre-playlists.json`` records the SHA-256 of every
playlist it wrote; a file at a playlist's name that is not recorded (or was edited since) is refused before
anything is written, unless ``overwrite``. A symbolic link at a playlist's name, at the manifest or as DIR is
always refused: raygenre never writes through a link. A playlist raygenre wrote whose genre has no file any
more is removed (only when its content is still what raygenre wrote). Pure: no Ray.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import stat
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import mutagen

from raygenre import storage
from raygenre.label.parts import NON_UTF8, original_path, read_labels

MANIFEST = ".raygenre-playlists.json"
SUFFIX = ".m3u8"
_UNSAFE = re.compile(r"[/\\\x00-\x1f]")


@dataclass
class PlaylistsResult:
    """What ``write_playlists`` did: (file name, tracks) per playlist written, stale ones removed, warnings."""

    out: str
    written: list[tuple[str, int]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def playlist_name(genre: str) -> str:
    """The file name of a genre's playlist: path separators and control characters become ``_``, and a name
    starting with ``.`` gets a ``_`` (no hidden files, no ``..``)."""
    name = _UNSAFE.sub("_", genre) or "_"
    return ("_" + name if name.startswith(".") else name) + SUFFIX


def _one_line(text: str) -> str:
    """A title on one line: a newline in a tag would start a new playlist entry (a path of the tag's choosing)."""
    return " ".join(text.split())


def _track_info(path: str, duration: float | None) -> tuple[int, str]:
    """(seconds, title) of one track: ``duration`` (from the table) or mutagen's; tags' artist/title or the name."""
    title = os.path.splitext(os.path.basename(path))[0]
    audio: Any = None
    with contextlib.suppress(Exception):  # missing, unreadable, not audio: the name and the table's duration do
        audio = mutagen.File(path, easy=True)
    if duration is None or not math.isfinite(duration):
        length = getattr(getattr(audio, "info", None), "length", None)
        duration = float(length) if length else None
    if audio is not None and audio.tags is not None:
        with contextlib.suppress(Exception):
            tag_title = (audio.tags.get("title") or [""])[0]
            artist = (audio.tags.get("artist") or [""])[0]
            if tag_title:
                title = f"{artist} - {tag_title}" if artist else tag_title
    return (-1 if duration is None else round(duration)), _one_line(str(title)) or "_"


def _entry_path(path: str, out_dir: str) -> str:
    """``path`` relative to ``out_dir`` when they share a folder below ``/``, else absolute."""
    if os.path.commonpath([path, out_dir]) == "/":
        return path
    return os.path.relpath(path, out_dir)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_manifest(path: str) -> dict[str, list[str]]:
    """{playlist name: [sha256, ...]} raygenre wrote (empty when absent or damaged: nothing counts as ours)."""
    try:
        with open(path, "rb") as f:  # lstat checked by the caller: not a link
            obj = json.loads(f.read())
    except (OSError, ValueError):
        return {}
    files = obj.get("files") if isinstance(obj, dict) else None
    if not isinstance(files, dict):
        return {}
    return {str(k): [str(h) for h in v] for k, v in files.items() if isinstance(v, list)}


def _current(path: str) -> tuple[str, str | None]:
    """("absent" | "link" | "other" | "file", sha256 of a regular file)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "absent", None
    if stat.S_ISLNK(st.st_mode):
        return "link", None
    if not stat.S_ISREG(st.st_mode):
        return "other", None
    with open(path, "rb") as f:
        return "file", _sha256(f.read())


def build_playlists(labels: str, out_dir: str) -> tuple[dict[str, bytes], dict[str, int], list[str]]:
    """({file name: content}, {file name: tracks}, warnings) for every genre in ``labels``."""
    table = read_labels(labels)
    names = table.schema.names
    if "path" not in names or "genre" not in names:
        raise ValueError(f"{labels} is not a label table: it has no path and genre columns (raygenre label --out)")
    tracks: dict[str, list[str]] = defaultdict(list)
    warnings: list[str] = []
    skipped_errors = missing = 0
    for row in table.to_pylist():
        stored, genre = str(row["path"]), row.get("genre")
        if row.get("error") or genre is None or stored.startswith(NON_UTF8):
            skipped_errors += 1
            continue
        path = original_path(stored)
        if not os.path.exists(path):  # moved or deleted since labelling: an entry no player can open
            missing += 1
            continue
        if "\n" in path or "\r" in path:
            warnings.append(f"{path!r}: its name holds a line break, which an M3U line cannot: left out")
            continue
        duration = row.get("duration_s")
        seconds, title = _track_info(path, None if duration is None else float(duration))
        tracks[str(genre)].extend([f"#EXTINF:{seconds},{title}", _entry_path(path, out_dir)])
    if missing:
        warnings.append(f"{missing} file(s) no longer on disk are in no playlist")
    if skipped_errors:
        warnings.append(f"{skipped_errors} error row(s) (files that could not be labelled) are in no playlist")
    contents, counts = {}, {}
    by_name: dict[str, str] = {}
    for genre in sorted(tracks):
        name = playlist_name(genre)
        if name in by_name:  # "a/b" and "a_b": one file would hold both; keep them apart
            raise ValueError(f"genres {by_name[name]!r} and {genre!r} would share the playlist {name}")
        by_name[name] = genre
        contents[name] = ("\n".join(["#EXTM3U", *tracks[genre]]) + "\n").encode("utf-8")
        counts[name] = len(tracks[genre]) // 2
    return contents, counts, warnings


def write_playlists(labels: str, out: str, *, overwrite: bool = False) -> PlaylistsResult:
    """Write ``<genre>.m3u8`` for every genre of ``labels`` into the local folder ``out`` (see the module doc).

    Raises ``storage.UnsafePathError`` for a link (``out``, the manifest, a playlist's name) and
    ``storage.OutputExistsError`` for a playlist file raygenre did not write (without ``overwrite``), before
    anything is written; ``ValueError`` for a table that is not a label table.
    """
    local = storage.local_path(out)
    if local is None:
        raise ValueError(f"--out {out}: playlists are written to a local folder")
    out_dir = os.path.abspath(str(local))
    if os.path.islink(out_dir):
        raise storage.UnsafePathError(f"{out_dir} is a symbolic link; raygenre never writes through a link: give "
                                      f"the real folder")
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise storage.OutputExistsError(f"{out_dir} exists and is not a folder")
    if not storage.exists(labels):
        raise FileNotFoundError(f"label table not found: {labels}")
    contents, counts, warnings = build_playlists(labels, out_dir)
    manifest_path = os.path.join(out_dir, MANIFEST)
    kind, _ = _current(manifest_path)
    if kind in ("link", "other"):
        raise storage.UnsafePathError(f"{manifest_path} is not the file raygenre keeps there (a link or not a "
                                      f"regular file): remove it")
    ours = _read_manifest(manifest_path) if kind == "file" else {}
    foreign = []
    for name in contents:
        kind, digest = _current(os.path.join(out_dir, name))
        if kind == "link":
            raise storage.UnsafePathError(f"{os.path.join(out_dir, name)} is a symbolic link; raygenre never "
                                          f"writes through a link: remove it")
        if kind == "other" or (kind == "file" and digest not in ours.get(name, []) and not overwrite):
            foreign.append(name)
    if foreign:
        raise storage.OutputExistsError(f"{out_dir} holds playlist file(s) raygenre did not write (or that were "
                                        f"edited since): {', '.join(sorted(foreign))}; pass --overwrite to "
                                        f"replace them, or choose another --out")
    os.makedirs(out_dir, exist_ok=True)
    result = PlaylistsResult(out=out_dir, warnings=warnings)
    # The manifest names the new contents before they are written (old ones stay listed until the end), so a
    # crash in between leaves every playlist file recognised as raygenre's.
    pending = {name: sorted({*ours.get(name, []), _sha256(data)}) for name, data in contents.items()}
    storage.write_json_atomic(manifest_path, {"files": {**ours, **pending}}, root=out_dir)
    for name, data in contents.items():
        storage.write_bytes_atomic(os.path.join(out_dir, name), data, root=out_dir)
        result.written.append((name, counts[name]))
    final = {name: [_sha256(data)] for name, data in contents.items()}
    for name, digests in ours.items():
        if name in final:
            continue
        path = os.path.join(out_dir, name)
        kind, digest = _current(path)
        if kind == "file" and digest in digests and name.endswith(SUFFIX) and "/" not in name:
            os.unlink(path)  # raygenre's own stale playlist (a regular file with the content it wrote)
            result.removed.append(name)
        elif kind != "absent":
            final[name] = digests  # edited or replaced since: not ours to delete; still named, still refused
            result.warnings.append(f"{name}: its genre has no file now, but it was edited since raygenre wrote "
                                   f"it: left as it is")
    storage.write_json_atomic(manifest_path, {"files": final}, root=out_dir)
    return result
