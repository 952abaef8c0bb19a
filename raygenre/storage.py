"""Paths and URIs: every path option accepts a local path or a ``pyarrow.fs`` URI (s3://, gs://, file://).

On a cluster all nodes must see the same data: use an object-store URI or a path on a shared mount. The
code path is the same for both; tests exercise local paths, ``file://`` URIs and a real S3 endpoint (moto).

Output commit protocol (``open_output``), the same on local disks and object stores, with no directory
rename (S3 and GCS have none; Arrow emulates it with per-object copies that fail or leave half a folder):

- ``OUT/attempts/<id>/``: each run writes its files under a fresh attempt prefix.
- ``OUT/<manifest>`` (features.json, model.json): written last, in one object PUT (or a local file rename),
  it names the attempt it describes (``"attempt": "attempts/<id>"``); readers resolve every file through it
  (``committed_path``), so an interrupted run leaves at most an attempt that nothing points at. A folder of
  the old layout (manifest and files at top level, no ``attempt`` key) still reads.
- ``OUT/raygenre-lease.json``: the writer's lease (holder, host, pid, command, heartbeat every
  ``LEASE_HEARTBEAT_S``). A second writer is refused while the lease is live; a lease whose process is gone
  (same host) or whose heartbeat is older than ``LEASE_TTL_S`` is taken over. Attempts other than the
  committed one are deleted by the run that commits, which holds the lease, so never by a concurrent run.
- Before any work, ``check_output`` refuses an ``OUT`` that is a file, a folder of something else, or a
  finished raygenre output without ``overwrite``: raygenre never deletes what it did not write.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
    """Write a file so that it is either absent or whole.

    Local disks: a temporary name beside it, then a rename. Object stores: one upload of the whole buffer,
    which the store makes visible only when it completes (a rename there would be a copy plus a delete).
    """
    fs, inner = resolve(path)
    if not isinstance(fs, pafs.LocalFileSystem):
        with fs.open_output_stream(inner) as f:
            f.write(data)
        return
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


# ------------------------------------------------------------------------------------------ output protocol
ATTEMPTS = "attempts"
LEASE = "raygenre-lease.json"
# The manifest that marks each kind of output finished (written last, names the committed attempt).
MANIFESTS = {"feature table": "features.json", "model": "model.json"}
LEASE_TTL_S = 120.0  # a lease whose heartbeat is older than this is abandoned (another host's killed run)
LEASE_HEARTBEAT_S = 15.0
# After writing its lease a writer waits, then reads it back: of two writers that both saw no lease, the
# one whose write landed first sees the other's and backs off. The window it must cover is one writer's
# read-then-write gap (~1 ms on a local disk, ~10-30 ms to moto/S3 on loopback), so these leave a wide margin.
LEASE_SETTLE_LOCAL_S = 0.2
LEASE_SETTLE_REMOTE_S = 1.0


class OutputExistsError(FileExistsError):
    """``--out`` holds something raygenre will not replace: another kind of data, a finished output (without
    ``--overwrite``), or an output a live run is writing."""


def _entries(fs: pafs.FileSystem, inner: str) -> list[str]:
    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True)))


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        return json.loads(read_text(path))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None
    except OSError as exc:  # S3 "NoSuchKey" arrives as OSError from some Arrow versions
        if "NoSuchKey" in str(exc) or "NO_SUCH_KEY" in str(exc) or "not found" in str(exc).lower():
            return None
        raise


def committed_path(root: str | os.PathLike[str], manifest: dict[str, Any], *parts: str) -> str:
    """A file of a committed output: under the attempt its manifest names, or at top level (old layout)."""
    attempt = str(manifest.get("attempt") or "")
    if attempt and (attempt.startswith("/") or ".." in attempt.split("/") or "://" in attempt):
        raise ValueError(f"{root}: its manifest names attempt {attempt!r}, which is outside the folder")
    return join(root, *([attempt] if attempt else []), *parts)


def check_output(root: str | os.PathLike[str], kind: str, *, overwrite: bool, flag: str = "--overwrite") -> None:
    """Refuse ``root`` before any work unless it is absent, empty, an unfinished raygenre ``kind`` output, or
    (with ``overwrite``) a finished one. ``kind``: a key of ``MANIFESTS``. Raises ``OutputExistsError``."""
    fs, inner = resolve(root)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        return
    if info.type != pafs.FileType.Directory:
        raise OutputExistsError(f"{root} is a file; the output must be a folder. Choose another path "
                                f"(raygenre never deletes what it did not write).")
    names = _entries(fs, inner)
    manifest = MANIFESTS[kind]
    others = [k for k, m in MANIFESTS.items() if k != kind and m in names]
    if manifest in names:
        if not overwrite:
            meta = _read_json(join(root, manifest)) or {}
            when = f", written {meta['created']}" if meta.get("created") else ""
            raise OutputExistsError(f"{root} already holds a raygenre {kind}{when}. Pass {flag} to replace it, "
                                    f"or choose another output.")
        return
    if others:
        raise OutputExistsError(f"{root} holds a raygenre {others[0]}, not a {kind}; choose another output "
                                f"(--overwrite only replaces an output of the same kind).")
    foreign = [n for n in names if n not in (ATTEMPTS, LEASE)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputExistsError(f"{root} already exists and is not a raygenre {kind} (it holds {shown}). "
                                f"raygenre never deletes what it did not write: choose a new or empty folder.")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _lease_live(lease: dict[str, Any], now: float) -> bool:
    same_host = lease.get("host") == socket.gethostname() and isinstance(lease.get("pid"), int)
    if same_host and not _pid_alive(lease["pid"]):
        return False  # a killed run on this host: take over at once
    return now - float(lease.get("heartbeat", 0.0)) < LEASE_TTL_S


def _describe(lease: dict[str, Any], now: float) -> str:
    age = now - float(lease.get("heartbeat", 0.0))
    return (f"run {lease.get('holder')} ({lease.get('command') or '?'}, pid {lease.get('pid')} on "
            f"{lease.get('host')}, started {lease.get('started')}, last heartbeat {age:.0f} s ago)")


@dataclass
class Lease:
    """This process's claim on an output folder; ``release`` deletes it if it is still ours."""

    path: str
    record: dict[str, Any]
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    lost_to: dict[str, Any] | None = None

    @classmethod
    def acquire(cls, root: str, kind: str) -> Lease:
        path = join(root, LEASE)
        now = time.time()
        held = _read_json(path)
        if held and _lease_live(held, now):
            raise OutputExistsError(f"{root} is being written by {_describe(held, now)}. Wait for it to "
                                    f"finish, or stop it; a lease without a heartbeat for {LEASE_TTL_S:.0f} s is "
                                    f"taken over.")
        record = {"holder": uuid.uuid4().hex[:12], "kind": kind, "host": socket.gethostname(), "pid": os.getpid(),
                  "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300],
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "heartbeat": now}
        write_json_atomic(path, record)
        time.sleep(LEASE_SETTLE_LOCAL_S if local_path(root) is not None else LEASE_SETTLE_REMOTE_S)
        now_held = _read_json(path)
        if not now_held or now_held.get("holder") != record["holder"]:
            raise OutputExistsError(f"{root} is being written by "
                                    f"{_describe(now_held or {}, time.time())} (it claimed the output just now).")
        lease = cls(path=path, record=record)
        lease._thread = threading.Thread(target=lease._beat, name=f"raygenre-lease-{record['holder']}", daemon=True)
        lease._thread.start()
        return lease

    def _beat(self) -> None:
        while not self._stop.wait(LEASE_HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a missed beat is retried; TTL covers several
                self.check()
                write_json_atomic(self.path, {**self.record, "heartbeat": time.time()})

    def check(self) -> None:
        """Raise ``OutputExistsError`` if another run took the lease over (e.g. ours looked dead)."""
        held = _read_json(self.path)
        if held is not None and held.get("holder") != self.record["holder"]:
            self.lost_to = held
            self._stop.set()
            raise OutputExistsError(f"{self.path}: the output was taken over by {_describe(held, time.time())}; "
                                    f"this run does not commit.")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        held = _read_json(self.path)
        if held is not None and held.get("holder") == self.record["holder"]:
            remove(self.path)


@dataclass
class Output:
    """One run's write into an output folder: files go under ``dir`` (``attempts/<id>/``), then ``commit``."""

    root: str
    kind: str
    attempt: str  # "attempts/<id>", relative to root
    lease: Lease
    legacy: tuple[str, ...] = ()  # top-level names of the old layout that a commit makes stale
    committed: bool = False

    @property
    def dir(self) -> str:
        """Where this attempt's files go (same scheme as ``root``)."""
        return join(self.root, self.attempt)

    def commit(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Write the manifest last (it names this attempt), then delete other attempts and stale top-level
        files of the old layout. Returns the manifest as written."""
        self.lease.check()
        manifest = {**manifest, "attempt": self.attempt}
        write_json_atomic(join(self.root, MANIFESTS[self.kind]), manifest)
        self.committed = True
        fs, inner = resolve(self.root)
        for name in _entries(fs, f"{inner}/{ATTEMPTS}"):
            if f"{ATTEMPTS}/{name}" != self.attempt:
                remove(join(self.root, ATTEMPTS, name))
        for name in self.legacy:
            remove(join(self.root, name))
        return manifest


@contextmanager
def open_output(root: str | os.PathLike[str], kind: str, *, overwrite: bool,
                legacy: tuple[str, ...] = ()) -> Iterator[Output]:
    """Check ``root`` (``check_output``), take its lease, yield an ``Output`` to write into and commit.

    The block must call ``Output.commit``. If it raises, this attempt's files are deleted (best effort); if
    the process is killed, they stay until the next run of this output commits. The lease is released either
    way.
    """
    root = str(root)
    check_output(root, kind, overwrite=overwrite)
    created = not exists(root)
    lease = Lease.acquire(root, kind)
    out = Output(root=root, kind=kind, attempt=f"{ATTEMPTS}/{time.strftime('%Y%m%d-%H%M%S')}-"
                 f"{lease.record['holder'][:8]}", lease=lease, legacy=legacy)
    try:
        fs, inner = resolve(out.dir)
        fs.create_dir(inner, recursive=True)
        yield out
        if not out.committed:
            raise RuntimeError(f"internal error: {root} was written but not committed")
    except BaseException:
        if not out.committed:
            with contextlib.suppress(Exception):
                remove(out.dir)
        raise
    finally:
        lease.release()
        if created and not out.committed:  # leave no empty folder behind where there was none
            with contextlib.suppress(Exception):
                fs, inner = resolve(root)
                if not _entries(fs, f"{inner}/{ATTEMPTS}") and _entries(fs, inner) in ([], [ATTEMPTS]):
                    remove(root)
