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

Links (local paths; object stores have none): raygenre never creates a symlink and never deletes, moves or
writes through one. ``resolve`` does not follow links; ``remove`` unlinks a link itself and never descends into
one; the writers refuse a name that is a link (``UnsafePathError``) and, given the output ``root``, a path whose
real location leaves it (``check_inside``); ``check_output`` refuses an output whose ``attempts`` folder,
manifest or lease is a link. URIs are shown and stored with credentials removed (``redact``).

Big files to S3 (``upload_file_atomic``): one upload with boto3 (multipart above ``UPLOAD_MULTIPART_THRESHOLD``),
which S3 publishes only when it completes and which s3transfer aborts on failure; never Arrow's output stream
(its destructor completes a multipart upload, publishing a partial object) nor a temporary key plus
``fs.move`` (one CopyObject: refused above 5 GB, and a second full copy on the server).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import stat
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qsl, urlsplit

import pyarrow.fs as pafs

from raygenre.redact import redact


def is_uri(path: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...`` strings (``file://`` included)."""
    return "://" in str(path)


class StorageError(ValueError):
    """A URI that names no bucket or whose store cannot be reached; the message names the URI redacted."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


def _not_found(exc: OSError) -> bool:
    """An Arrow error that means "no such file" (S3's NoSuchKey arrives as a plain OSError)."""
    text = str(exc)
    return (isinstance(exc, FileNotFoundError) or "NoSuchKey" in text or "NO_SUCH_KEY" in text
            or "not found" in text.lower())


def _first_line(exc: BaseException) -> str:
    return redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)


@contextmanager
def _remote_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn an object store's OSError (unreachable endpoint, denied, DNS) into one ``StorageError`` line that
    names the URI redacted, so the CLI prints it without a traceback or a secret. Not-found passes through."""
    try:
        yield
    except OSError as exc:
        if not is_uri(path) or _not_found(exc):
            raise
        raise StorageError(f"{redact(str(path))}: the object store cannot be used: {_first_line(exc)}") from None


def resolve(path: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or URI. Local paths become absolute (``~`` expanded,
    ``..`` folded) but symlinks are NOT followed: a link stays a link, so ``remove`` and the writers can see
    it and act on the link itself rather than on whatever it points at."""
    p = str(path)
    if is_uri(p):
        scheme, _, rest = redact(p).partition("://")
        if scheme.lower() != "file" and not re.split(r"[/?#]", rest, maxsplit=1)[0]:
            raise StorageError(f"{redact(p)} names no bucket; give a URI like {scheme}://bucket/folder")
        try:  # an S3 URI without a region makes Arrow ask the bucket (a network call that may fail)
            fs, inner = pafs.FileSystem.from_uri(p)
        except (OSError, ValueError) as exc:
            raise StorageError(f"{redact(p)}: cannot open it: {_first_line(exc)}") from None
        if not isinstance(fs, pafs.LocalFileSystem) and not inner.strip("/"):
            raise StorageError(f"{redact(p)} names no bucket; give a URI like {scheme}://bucket/folder")
        return fs, inner
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(p))


def _local(path: str | os.PathLike[str]) -> str | None:
    """The absolute local path (links not followed) for a local path or ``file://`` URI, ``None`` for remote
    URIs, without touching the network (``resolve`` of an S3 URI may ask the bucket for its region)."""
    p = str(path)
    if is_uri(p) and not p.lower().startswith("file:"):
        return None
    fs, inner = resolve(p)
    return inner if isinstance(fs, pafs.LocalFileSystem) else None


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
    """True when a file or folder is at ``path`` (a local symlink counts as what it points at)."""
    fs, inner = resolve(path)
    with _remote_errors(path):
        return fs.get_file_info(inner).type != pafs.FileType.NotFound


def read_text(path: str | os.PathLike[str]) -> str:
    return read_bytes(path).decode("utf-8")


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    fs, inner = resolve(path)
    with _remote_errors(path), fs.open_input_stream(inner) as f:
        return f.read()


def refuse_link(path: str | os.PathLike[str]) -> None:
    """Raise ``UnsafePathError`` when the local name ``path`` exists as a symlink, ``OutputExistsError`` when it
    is a folder; nothing for an absent name, a regular file or a remote URI."""
    inner = _local(path)
    if inner is None:
        return
    try:
        st = os.lstat(inner)
    except (FileNotFoundError, NotADirectoryError):
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(f"{inner} is a symlink (to {os.readlink(inner)}), which raygenre never creates: it "
                              f"neither writes through it nor replaces it. Remove the link, or choose another "
                              f"output.")
    if stat.S_ISDIR(st.st_mode):
        raise OutputExistsError(f"{inner} is a folder where raygenre writes a file; raygenre never deletes what "
                                f"it did not write: move it away, or choose another output.")


def _write_local(inner: str, data: bytes, *, durable: bool, root: str | os.PathLike[str] | None) -> None:
    if root is not None:
        check_inside(inner, root)
    refuse_link(inner)
    parent, name = os.path.split(inner)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    # O_EXCL|O_NOFOLLOW: the temporary name is ours alone; a link planted there makes the open fail
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        refuse_link(inner)  # again, right before the rename (rename(2) itself never writes through a link)
        os.replace(tmp, inner)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


# boto3's multipart settings for upload_file_atomic (s3transfer's defaults; it raises the chunk itself so that a
# file needs at most S3's 10,000 parts, and never goes below S3's 5 MiB). Module-level so tests can force a
# multipart upload of a small file.
UPLOAD_MULTIPART_THRESHOLD = 8 * 1024 * 1024
UPLOAD_CHUNK = 8 * 1024 * 1024
# Arrow S3 options (S3FileSystem's constructor arguments) that upload_file_atomic gives boto3, and those that
# do not matter to one upload (bucket creation: the bucket must exist; Arrow's own write buffering). An option
# in neither set, with a value other than its default, is refused: it would be silently ignored otherwise.
_S3_MAPPED = frozenset({"access_key", "secret_key", "session_token", "anonymous", "region", "scheme",
                        "endpoint_override", "tls_ca_file_path", "force_virtual_addressing", "connect_timeout",
                        "request_timeout"})
_S3_IRRELEVANT = frozenset({"allow_bucket_creation", "allow_bucket_deletion", "background_writes",
                            "allow_delayed_open", "check_directory_existence_before_creation", "load_frequency"})
_S3_DEFAULTS: dict[str, Any] = {"role_arn": "", "session_name": "", "external_id": "", "default_metadata": None,
                                "proxy_options": {"scheme": "", "host": "", "port": -1, "username": "",
                                                  "password": ""}}


def _s3_option_set(name: str, value: Any) -> bool:
    """True when an Arrow S3 option holds something other than its default (an option a later pyarrow adds
    counts as set only when it holds a value: refusing its default would refuse every upload)."""
    if name in _S3_DEFAULTS:
        return bool(value != _S3_DEFAULTS[name])
    return value not in (None, "", False) and value != {} and value != []


def _arrow_bool(value: str) -> bool | None:
    """Arrow's reading of a boolean URI option (true/false/1/0, any case); ``None`` for anything else."""
    return {"true": True, "1": True, "false": False, "0": False}.get(value.strip().lower())


def s3_client_kwargs(fs: pafs.S3FileSystem, uri: str) -> dict[str, Any]:
    """Keyword arguments for ``boto3.client("s3", ...)`` that reach the same endpoint, with the same credentials
    and region, as ``fs`` (what ``resolve(uri)`` returned). No network.

    Read from ``fs`` itself (its pickled constructor arguments, as Ray ships it to workers), so the URI's query
    (``endpoint_override``, ``scheme``, ``region``, ``tls_ca_file_path``), its ``KEY:SECRET@`` credentials, the
    region Arrow asked the bucket for and ``AWS_ENDPOINT_URL`` all arrive exactly as Arrow read them; plus
    ``tls_verify_certificates`` from the URI (Arrow accepts it but does not keep it in those arguments). No
    credentials in ``fs`` (the usual case): boto3's own default chain, which reads the same environment
    variables, profile files and instance/workload identity as the AWS SDK Arrow uses. Raises ``StorageError``
    for an option that boto3 would not honour here (an assumed role, a proxy, default metadata: none can come
    from a URI) rather than ignoring it."""
    from botocore import UNSIGNED
    from botocore.config import Config

    try:
        opts = dict(fs.__reduce__()[1][0])
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        raise StorageError(f"{redact(uri)}: cannot read the S3 settings of this pyarrow's S3FileSystem") from None
    unmapped = sorted(k for k, v in opts.items() if k not in _S3_MAPPED | _S3_IRRELEVANT and _s3_option_set(k, v))
    if unmapped:
        raise StorageError(f"{redact(uri)}: its S3 setting(s) {', '.join(unmapped)} cannot be passed on to the "
                           f"upload (boto3); use a URI and the AWS environment variables instead")
    kwargs: dict[str, Any] = {}
    config: dict[str, Any] = {}
    if opts.get("access_key"):
        kwargs.update(aws_access_key_id=opts["access_key"], aws_secret_access_key=opts.get("secret_key") or None,
                      aws_session_token=opts.get("session_token") or None)
    if opts.get("anonymous"):
        config["signature_version"] = UNSIGNED
    if opts.get("region"):
        kwargs["region_name"] = opts["region"]
    scheme = opts.get("scheme") or "https"
    endpoint = opts.get("endpoint_override") or ""
    if endpoint:  # AWS_ENDPOINT_URL arrives with its scheme; a URI's endpoint_override=host:port takes ?scheme=
        kwargs["endpoint_url"] = endpoint if "://" in endpoint else f"{scheme}://{endpoint}"
    elif scheme == "http":
        kwargs["use_ssl"] = False
    if opts.get("tls_ca_file_path"):
        kwargs["verify"] = opts["tls_ca_file_path"]
    query = dict(parse_qsl(urlsplit(uri).query, keep_blank_values=True))
    if "tls_verify_certificates" in query:
        verify = _arrow_bool(query["tls_verify_certificates"])
        if verify is None:
            raise StorageError(f"{redact(uri)}: tls_verify_certificates must be true or false")
        if not verify:
            kwargs["verify"] = False
    # Arrow addresses buckets by path when given an endpoint (MinIO, Ceph, moto), by virtual host otherwise
    virtual = not endpoint or bool(opts.get("force_virtual_addressing"))
    config["s3"] = {"addressing_style": "virtual" if virtual else "path"}
    for arrow_key, boto_key in (("connect_timeout", "connect_timeout"), ("request_timeout", "read_timeout")):
        if isinstance(opts.get(arrow_key), (int, float)) and opts[arrow_key] > 0:
            config[boto_key] = opts[arrow_key]
    kwargs["config"] = Config(**config)
    return kwargs


def upload_file_atomic(source: str | os.PathLike[str] | BinaryIO, uri: str, *,
                       resolved: tuple[pafs.FileSystem, str] | None = None) -> None:
    """Upload ``source`` (a local file name, or a binary file open for reading, read from its start) to the S3
    object ``uri`` in one upload: S3 makes the object visible only when the upload completes, so readers see the
    old object or the whole new one, never part of it. Above ``UPLOAD_MULTIPART_THRESHOLD`` a multipart upload
    (any size up to S3's 5 TB, unlike a CopyObject's 5 GB), which s3transfer aborts if any part fails, so a
    failure leaves the object at ``uri`` as it was. The client reaches what ``resolve(uri)`` reaches
    (``s3_client_kwargs``). Raises ``StorageError`` (one line, redacted) when the upload fails or ``uri`` is not
    an S3 URI. ``resolved``: what ``resolve(uri)`` returned, when the caller holds it (resolving an S3 URI without a
    region asks the bucket: a network call)."""
    import boto3
    from boto3.exceptions import S3UploadFailedError
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    fs, inner = resolved or resolve(uri)
    if not isinstance(fs, pafs.S3FileSystem):
        raise StorageError(f"{redact(uri)}: upload_file_atomic writes S3 objects only")
    bucket, _, key = inner.partition("/")
    config = TransferConfig(multipart_threshold=UPLOAD_MULTIPART_THRESHOLD, multipart_chunksize=UPLOAD_CHUNK,
                            # s3transfer's own client: its abort-on-failure is what the guarantee rests on
                            preferred_transfer_client="classic")
    try:
        client = boto3.client("s3", **s3_client_kwargs(fs, uri))
        if isinstance(source, (str, os.PathLike)):
            client.upload_file(os.fspath(source), bucket, key, Config=config)
        else:
            source.seek(0)
            client.upload_fileobj(source, bucket, key, Config=config)
    except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
        raise StorageError(f"{redact(uri)}: the upload failed, the object there is unchanged: "
                           f"{_first_line(exc)}") from None


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *,
                       root: str | os.PathLike[str] | None = None) -> None:
    """Write a file so that it is either absent or whole.

    Local disks: a temporary name beside it (created with ``O_EXCL | O_NOFOLLOW``), then a rename. Object
    stores: one upload of the whole buffer, which the store makes visible only when it completes (a rename
    there would be a copy plus a delete).

    Never writes through a symlink. If the name exists as a symlink, the write is refused
    (``UnsafePathError``) rather than replacing the link: raygenre creates no links, so a link at a name it
    writes was put there by someone else, and both ways of "writing" it destroy something raygenre did not
    write (through it: the target, e.g. ``~/.bashrc``; over it: the user's link). The link's target is
    never opened. A folder at the name is refused too (``OutputExistsError``). ``root`` (the output the file
    belongs to): also refuse a path whose real location leaves it (``check_inside``), e.g. through a
    symlinked parent folder.
    """
    fs, inner = resolve(path)
    if not isinstance(fs, pafs.LocalFileSystem):
        with _remote_errors(path), fs.open_output_stream(inner) as f:
            f.write(data)
        return
    _write_local(inner, data, durable=False, root=root)


def write_bytes_durable(path: str | os.PathLike[str], data: bytes, *,
                        root: str | os.PathLike[str] | None = None) -> None:
    """``write_bytes_atomic`` (the same symlink and ``root`` rules), and on a local disk flushed to the device
    (file, then folder) before it returns.

    Object stores are durable when the upload completes. A local rename without fsync can survive power loss
    as a zero-byte file under the final name.
    """
    fs, inner = resolve(path)
    if not isinstance(fs, pafs.LocalFileSystem):
        write_bytes_atomic(path, data)
        return
    _write_local(inner, data, durable=True, root=root)


def write_text_atomic(path: str | os.PathLike[str], text: str, *, root: str | os.PathLike[str] | None = None) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), root=root)


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, root: str | os.PathLike[str] | None = None) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", root=root)


def _rmtree_nofollow(path: str) -> None:
    """Delete a real folder bottom-up, unlinking the links inside it and never descending into them."""
    with os.scandir(path) as it:
        entries = list(it)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            _rmtree_nofollow(entry.path)
        else:
            os.unlink(entry.path)
    os.rmdir(path)


def remove(path: str | os.PathLike[str]) -> None:
    """Remove a file or folder if present. Never follows a link: a symlink (even one to a folder) is
    unlinked itself and its target is untouched; a real folder is deleted bottom-up, the links inside it
    unlinked, never descended into."""
    fs, inner = resolve(path)
    if isinstance(fs, pafs.LocalFileSystem):
        try:
            st = os.lstat(inner)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):  # files, symlinks (to anything), fifos, sockets
            os.unlink(inner)
        elif shutil.rmtree.avoids_symlink_attacks:  # fd-based (openat, O_NOFOLLOW): no check-then-use race
            shutil.rmtree(inner)
        else:  # pragma: no cover - platforms without the fd-based walk
            _rmtree_nofollow(inner)
        return
    with _remote_errors(path):
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
    ``--overwrite``), or an output a live run is writing. Its message is redacted (``redact``): whoever raises
    it may name a URI with credentials, and the CLI prints it."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class UnsafePathError(OutputExistsError):
    """A local path raygenre was about to write, move or delete is a symlink it did not create, or its real
    location leaves the output root. A ``FileExistsError`` so the CLI prints it as one line (exit 2)."""


def _real_location(path: str) -> str:
    """Where ``path`` really is: the realpath of its parent plus its own name (the last component is not
    followed, so a link is judged by where the link itself lives)."""
    parent, name = os.path.split(path)
    return os.path.join(os.path.realpath(parent), name) if name else os.path.realpath(path)


def check_inside(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> None:
    """Raise ``UnsafePathError`` when a local ``path``'s real location (realpath of its parent + its own name)
    is not ``root`` or under ``realpath(root)``; a no-op for remote URIs (object stores have no links)."""
    p, r = _local(path), _local(root)
    if p is None or r is None:
        return
    real, real_root = _real_location(p), os.path.realpath(r)
    if real != real_root and not real.startswith(real_root.rstrip("/") + "/"):
        raise UnsafePathError(f"{path}: its real location {real} is outside {redact(str(root))} (a symlink "
                              f"on the way leads elsewhere); raygenre writes, moves and deletes only inside "
                              f"its output")


def _entries(fs: pafs.FileSystem, inner: str) -> list[str]:
    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True)))


def _read_json(path: str) -> dict[str, Any] | None:
    """A JSON object file; ``None`` when it is absent, unreadable as JSON, or not an object (a list, a number:
    nothing raygenre wrote)."""
    try:
        obj = json.loads(read_text(path))
    except (FileNotFoundError, StorageError, ValueError, UnicodeDecodeError):
        return None
    except OSError as exc:  # S3 "NoSuchKey" arrives as OSError from some Arrow versions
        if _not_found(exc):
            return None
        raise
    return obj if isinstance(obj, dict) else None


_ATTEMPT_RE = re.compile(rf"{ATTEMPTS}/[A-Za-z0-9][A-Za-z0-9._-]{{0,127}}")


def committed_path(root: str | os.PathLike[str], manifest: dict[str, Any], *parts: str) -> str:
    """A file of a committed output: under the attempt its manifest names, or at top level (old layout)."""
    attempt = manifest.get("attempt") or ""
    if not isinstance(attempt, str):
        raise ValueError(f"{redact(str(root))}: its manifest's attempt must be a string like "
                         f"'{ATTEMPTS}/<id>', got {type(attempt).__name__}")
    if attempt and (attempt.startswith("/") or ".." in attempt.split("/") or "://" in attempt):
        raise ValueError(f"{redact(str(root))}: its manifest names attempt {attempt[:80]!r}, which is outside "
                         f"the folder")
    if attempt and not _ATTEMPT_RE.fullmatch(attempt):  # NUL bytes, newlines, nested folders: not ours
        raise ValueError(f"{redact(str(root))}: its manifest names attempt {attempt[:80]!r}, which is not a "
                         f"raygenre attempt name ('{ATTEMPTS}/<id>'); the output is damaged or was not written "
                         f"by raygenre")
    return join(root, *([attempt] if attempt else []), *parts)


def _check_links(root: str, names: list[str], kind: str) -> None:
    """Refuse a local output whose ``attempts`` folder, manifest or lease is a symlink (or ``attempts`` is not a
    folder): raygenre deletes old attempts and replaces its manifest and lease, and never through a link."""
    inner = _local(root)
    if inner is None:
        return
    for name in (ATTEMPTS, MANIFESTS[kind], LEASE):
        if name not in names:
            continue
        path = os.path.join(inner, name)
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePathError(f"{redact(root)}: {name} is a symlink (to {os.readlink(path)}); raygenre "
                                  f"deletes and replaces what it holds and never does so through a link, which "
                                  f"it never creates. Remove the link (or copy its target into a real folder), "
                                  f"or choose another output.")
        if name == ATTEMPTS and not stat.S_ISDIR(st.st_mode):
            raise OutputExistsError(f"{redact(root)}: {name} is not a folder, so this is not a raygenre {kind}; "
                                    f"raygenre never deletes what it did not write: choose another output.")


def check_output(root: str | os.PathLike[str], kind: str, *, overwrite: bool, flag: str = "--overwrite") -> None:
    """Refuse ``root`` before any work unless it is absent, empty, an unfinished raygenre ``kind`` output, or
    (with ``overwrite``) a finished one. ``kind``: a key of ``MANIFESTS``. Raises ``OutputExistsError``."""
    root = str(root)
    shown_root = redact(root)
    fs, inner = resolve(root)
    with _remote_errors(root):
        info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        if _local(root) is not None and os.path.islink(inner):
            raise UnsafePathError(f"{shown_root} is a symlink to {os.readlink(inner)}, which does not exist; "
                                  f"the output must be a folder. Choose another path.")
        return
    if info.type != pafs.FileType.Directory:
        raise OutputExistsError(f"{shown_root} is a file; the output must be a folder. Choose another path "
                                f"(raygenre never deletes what it did not write).")
    with _remote_errors(root):
        names = _entries(fs, inner)
    manifest = MANIFESTS[kind]
    others = [k for k, m in MANIFESTS.items() if k != kind and m in names]
    if manifest in names:
        _check_links(root, names, kind)
        if not overwrite:
            meta = _read_json(join(root, manifest)) or {}
            when = f", written {meta['created']}" if isinstance(meta.get("created"), str) else ""
            raise OutputExistsError(f"{shown_root} already holds a raygenre {kind}{when}. Pass {flag} to replace "
                                    f"it, or choose another output.")
        return
    if others:
        raise OutputExistsError(f"{shown_root} holds a raygenre {others[0]}, not a {kind}; choose another output "
                                f"(--overwrite only replaces an output of the same kind).")
    foreign = [n for n in names if n not in (ATTEMPTS, LEASE)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputExistsError(f"{shown_root} already exists and is not a raygenre {kind} (it holds {shown}). "
                                f"raygenre never deletes what it did not write: choose a new or empty folder.")
    _check_links(root, names, kind)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _heartbeat(lease: dict[str, Any]) -> float:
    beat = lease.get("heartbeat", 0.0)
    return float(beat) if isinstance(beat, (int, float)) and not isinstance(beat, bool) else 0.0


def _lease_live(lease: dict[str, Any], now: float) -> bool:
    pid = lease.get("pid")
    same_host = lease.get("host") == socket.gethostname() and isinstance(pid, int) and not isinstance(pid, bool)
    if same_host and (pid <= 0 or not _pid_alive(pid)):  # os.kill(0 or -n) would probe a process group
        return False  # a killed run on this host: take over at once
    return now - _heartbeat(lease) < LEASE_TTL_S


def _describe(lease: dict[str, Any], now: float) -> str:
    age = now - _heartbeat(lease)
    # redacted here too: a lease written by an older raygenre may hold a URI with credentials
    return redact(f"run {lease.get('holder')} ({lease.get('command') or '?'}, pid {lease.get('pid')} on "
                  f"{lease.get('host')}, started {lease.get('started')}, last heartbeat {age:.0f} s ago)")


def _command_line() -> str:
    """This process's command line for the lease record, credentials in URIs redacted."""
    return redact(" ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv)))[:300]


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
        root = str(root)
        path = join(root, LEASE)
        now = time.time()
        held = _read_json(path)
        if held and _lease_live(held, now):
            raise OutputExistsError(f"{redact(root)} is being written by {_describe(held, now)}. Wait for it to "
                                    f"finish, or stop it; a lease without a heartbeat for {LEASE_TTL_S:.0f} s is "
                                    f"taken over.")
        record = {"holder": uuid.uuid4().hex[:12], "kind": kind, "host": socket.gethostname(), "pid": os.getpid(),
                  "command": _command_line(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "heartbeat": now}
        write_json_atomic(path, record, root=root)
        time.sleep(LEASE_SETTLE_LOCAL_S if _local(root) is not None else LEASE_SETTLE_REMOTE_S)
        now_held = _read_json(path)
        if not now_held or now_held.get("holder") != record["holder"]:
            raise OutputExistsError(f"{redact(root)} is being written by "
                                    f"{_describe(now_held or {}, time.time())} (it claimed the output just now).")
        lease = cls(path=path, record=record)
        lease._thread = threading.Thread(target=lease._beat, name=f"raygenre-lease-{record['holder']}", daemon=True)
        lease._thread.start()
        return lease

    def _beat(self) -> None:
        while not self._stop.wait(LEASE_HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a missed beat is retried; TTL covers several
                self.check()
                beat = {**self.record, "heartbeat": time.time()}
                write_json_atomic(self.path, beat, root=self.path.rsplit("/", 1)[0])

    def check(self) -> None:
        """Raise ``OutputExistsError`` if another run took the lease over (e.g. ours looked dead)."""
        held = _read_json(self.path)
        if held is not None and held.get("holder") != self.record["holder"]:
            self.lost_to = held
            self._stop.set()
            raise OutputExistsError(f"{redact(self.path)}: the output was taken over by "
                                    f"{_describe(held, time.time())}; this run does not commit.")

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
        write_json_atomic(join(self.root, MANIFESTS[self.kind]), manifest, root=self.root)
        self.committed = True
        fs, inner = resolve(self.root)
        for name in _entries(fs, f"{inner}/{ATTEMPTS}"):
            if f"{ATTEMPTS}/{name}" != self.attempt:
                self._remove(join(self.root, ATTEMPTS, name))
        for name in self.legacy:
            self._remove(join(self.root, name))
        return manifest

    def _remove(self, path: str) -> None:
        """Delete a stale entry (``remove`` unlinks a link itself); one whose real location left the root
        (``attempts`` swapped for a link since ``check_output``) is left alone: never delete through a link."""
        try:
            check_inside(path, self.root)
        except UnsafePathError:
            return
        remove(path)


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
