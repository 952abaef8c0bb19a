"""Paths and URIs: every path option accepts a local path or a ``pyarrow.fs`` URI (s3://, gs://, file://).

On a cluster all nodes must see the same data: use an object-store URI or a path on a shared mount. The
code path is the same for both; tests exercise local paths and ``file://`` URIs.

Atomic output: a result folder is built under a hidden temporary name beside its destination and moved
into place when complete, and readers require its manifest file (written last), so an interrupted run
never leaves something that looks finished.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs


def is_uri(path: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...`` strings (``file://`` included)."""
    return "://" in str(path)


def resolve(path: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or URI. Local paths become absolute."""
    p = str(path)
    if is_uri(p):
        fs, inner = pafs.FileSystem.from_uri(p)
        return fs, inner
    return pafs.LocalFileSystem(), str(Path(p).expanduser().resolve())


def local_path(path: str | os.PathLike[str]) -> Path | None:
    """The local ``Path`` for a local path or ``file://`` URI; ``None`` for remote URIs."""
    fs, inner = resolve(path)
    return Path(inner) if isinstance(fs, pafs.LocalFileSystem) else None


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """Join path parts onto a local path or URI (URIs keep their scheme)."""
    b = str(base)
    if is_uri(b):
        return "/".join([b.rstrip("/"), *[p.strip("/") for p in parts]])
    return str(Path(b).expanduser().joinpath(*parts))


def exists(path: str | os.PathLike[str]) -> bool:
    fs, inner = resolve(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def read_text(path: str | os.PathLike[str]) -> str:
    fs, inner = resolve(path)
    with fs.open_input_stream(inner) as f:
        return f.read().decode("utf-8")


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    fs, inner = resolve(path)
    with fs.open_input_stream(inner) as f:
        return f.read()


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write a file so that it is either absent or whole: temp name beside it, then a rename."""
    fs, inner = resolve(path)
    parent = inner.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/.{inner.rsplit('/', 1)[1]}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, inner)


def write_bytes_durable(path: str | os.PathLike[str], data: bytes) -> None:
    """``write_bytes_atomic``, and on a local disk flushed to the device (file, then folder) before it returns.

    Object stores are durable when the upload completes. A local rename without fsync can survive power loss
    as a zero-byte file under the final name.
    """
    local = local_path(path)
    if local is None:
        write_bytes_atomic(path, data)
        return
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.parent / f".{local.name}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, local)
    fd = os.open(local.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def remove(path: str | os.PathLike[str]) -> None:
    """Remove a file or folder if present."""
    fs, inner = resolve(path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(inner)
    elif info.type == pafs.FileType.File:
        fs.delete_file(inner)


@contextmanager
def atomic_dir(dest: str | os.PathLike[str]) -> Iterator[str]:
    """Build a folder under a temporary sibling name; move it to ``dest`` only if the block succeeds.

    Yields the temporary location (same scheme as ``dest``). Stale temporaries of ``dest`` left by
    interrupted runs are removed first. An existing ``dest`` is replaced only after the new one is complete.
    """
    fs, inner = resolve(dest)
    parent, name = inner.rstrip("/").rsplit("/", 1)
    fs.create_dir(parent, recursive=True)
    for info in fs.get_file_info(pafs.FileSelector(parent)):
        if info.base_name.startswith(f".{name}.tmp-"):
            fs.delete_dir(info.path) if info.type == pafs.FileType.Directory else fs.delete_file(info.path)
    tmp_inner = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:8]}"
    fs.create_dir(tmp_inner, recursive=True)
    tmp = f"{str(dest).split('://')[0]}://{tmp_inner}" if is_uri(dest) else tmp_inner
    try:
        yield tmp
    except BaseException:
        fs.delete_dir(tmp_inner)
        raise
    if fs.get_file_info(inner).type != pafs.FileType.NotFound:
        old = f"{parent}/.{name}.old-{uuid.uuid4().hex[:8]}"
        fs.move(inner, old)
        fs.move(tmp_inner, inner)
        fs.delete_dir(old)
    else:
        fs.move(tmp_inner, inner)
