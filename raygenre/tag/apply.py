"""A tag run: each file's label written into its genre tag, with a journal that undoes it exactly.

Per file (``tag_labels``): checks (a regular file, not a link, one hard link, writable, unchanged since it was
labelled, a format mutagen tags, no genre tag yet unless ``replace``), then the rewrite, which is atomic:

1. journal the temporary's name (*copying*), then copy the file there, beside it (``O_EXCL | O_NOFOLLOW``; mode,
   owner and xattrs copied), write the tags into the copy with mutagen, fsync it, and stat it: the size and
   mtime it will have;
2. append a *pending* journal record (path, old tags, new tags, size/mtime before and after, the temporary's
   name) and fsync the journal; record the same before/after in ``LABELS.parts/tagged.jsonl`` (label's resume);
3. rename the copy over the file (the commit point: rename keeps the copy's size and mtime), fsync the folder;
4. append a *done* record.

A crash leaves each file either untouched (no rename: its size/mtime are the "before" ones) or fully tagged
(renamed: exactly the "after" ones); the next ``undo`` (or a look at the journal) tells which by the stamp, and a
leftover temporary is removed. Audio bytes are copied, never re-encoded: mutagen rewrites only the tag block.

``undo`` goes through the journal newest first and writes back the old tags by the same atomic route (a file that
had no genre tag has none again, raygenre's confidence tag goes too), only for files whose size and mtime are
still what tagging left; any other file is refused with one line. Pure: no Ray.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from raygenre import storage
from raygenre.label import tagged
from raygenre.label.parts import check_parts_dir, original_path, parts_dir_of, read_labels
from raygenre.tag.tags import TagError, TagState, open_audio, read_state, write_state

UNKNOWN = "unknown"  # the genre `label --min-confidence` gives a file it is not sure of
JOURNAL_VERSION = 1
TMP_MARK = ".raygenre-tag-"  # temporaries: .<name>.raygenre-tag-<hex>


class JournalError(ValueError):
    """A journal that cannot be used (missing, not raygenre's, exists already): a usage error, exit 2."""


@dataclass
class FileOutcome:
    """What happened to one file: ``action`` is tagged | would tag | skipped | error | undone | refused."""

    path: str
    action: str
    old: tuple[str, ...] | None = None  # genre values before (None: no genre tag)
    new: str | None = None  # genre written (or that would be)
    reason: str = ""  # why it was skipped, refused or failed (one line)


@dataclass
class TagReport:
    """A tag run (or undo): one outcome per label row, and where things were written."""

    outcomes: list[FileOutcome] = field(default_factory=list)
    journal: str | None = None  # the undo journal (None: dry run, or undo)
    plan: str | None = None  # dry run: the file listing what would change
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, action: str) -> int:
        return sum(o.action == action for o in self.outcomes)


# ------------------------------------------------------------------------------------------- the label table
@dataclass(frozen=True)
class Row:
    """One label row, as tag needs it. ``genre``: the label (None for an error row); ``top_genre``: the best guess
    even when the label is unknown; ``confidence``: the top probability (0..1)."""

    path: str  # stored form (parts.safe_str)
    genre: str | None
    top_genre: str | None
    confidence: float | None
    error: str | None
    size: int | None
    mtime: float | None


def _confidence(row: dict[str, Any], probs: list[str]) -> float | None:
    """The row's ``confidence``, or (older tables) its largest ``p_<genre>``."""
    value = row.get("confidence")
    if value is None and probs:
        values = [row[p] for p in probs if row.get(p) is not None]
        value = max(values) if values else None
    return None if value is None or not math.isfinite(float(value)) else float(value)


def read_rows(labels: str) -> list[Row]:
    """The rows of a label table (Parquet, CSV or JSON Lines), with or without ``confidence``/``top_genre``.

    Raises ``ValueError`` for a file that is not a label table (no ``path``/``genre`` columns).
    """
    if not storage.exists(labels):
        raise FileNotFoundError(f"label table not found: {labels}")
    try:
        table: pa.Table = read_labels(labels)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{labels} is not a label table raygenre can read: {str(exc).splitlines()[0]}") from None
    names = table.schema.names
    if "path" not in names or "genre" not in names:
        raise ValueError(f"{labels} is not a label table: it has no path and genre columns (raygenre label --out)")
    probs = [n for n in names if n.startswith("p_")]
    rows = []
    for r in table.to_pylist():
        genre = r.get("genre")
        rows.append(Row(path=str(r["path"]), genre=genre, top_genre=r.get("top_genre") or genre,
                        confidence=_confidence(r, probs), error=r.get("error") or None,
                        size=None if r.get("size") is None else int(r["size"]),
                        mtime=None if r.get("mtime") is None else float(r["mtime"])))
    return rows


def choose_genre(row: Row, min_confidence: float | None) -> tuple[str | None, str]:
    """(genre to write, "") or (None, why not). Without ``min_confidence`` the table's ``genre`` decides (an
    ``unknown`` label is not written); with it, the best guess (``top_genre``) is written when the confidence
    reaches it, whatever threshold label used."""
    if row.error is not None:
        return None, f"label row has an error: {row.error}"
    if min_confidence is None:
        if row.genre is None or row.genre == UNKNOWN:
            return None, "label is unknown (not confident enough)"
        return row.genre, ""
    if row.confidence is None or row.confidence < min_confidence:
        shown = "none" if row.confidence is None else f"{row.confidence:.2f}"
        return None, f"confidence {shown} is below --min-confidence {min_confidence:g}"
    guess = row.top_genre or row.genre
    if guess is None or guess == UNKNOWN:
        return None, "label is unknown"
    return guess, ""


# ------------------------------------------------------------------------------------------------ the files
def stamp_of(st: os.stat_result) -> dict[str, Any]:
    """What the journal keeps of a file's state: size (bytes), mtime_ns, and mtime (float s, as label rows)."""
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "mtime": float(st.st_mtime)}


def _same(st: os.stat_result, stamp: dict[str, Any]) -> bool:
    return int(st.st_size) == stamp["size"] and int(st.st_mtime_ns) == stamp["mtime_ns"]


def check_file(path: str) -> os.stat_result:
    """The file's ``lstat`` when raygenre may rewrite it, else ``TagError`` with why (one line).

    Root writes anything, so permissions are judged by the mode bits as well as ``os.access``: a file or folder
    with no write bit is read-only to raygenre even when run as root. An immutable file (``chattr +i``) fails
    ``os.access`` (Linux checks it, even for root).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise TagError("file not found (moved or deleted since it was labelled)") from None
    except OSError as exc:
        raise TagError(f"cannot read the file's information: {exc.strerror or exc}") from None
    if stat.S_ISLNK(st.st_mode):
        raise TagError(f"is a symbolic link (to {os.readlink(path)}); raygenre never writes through a link it did "
                       f"not create: label the target's own path to tag it")
    if not stat.S_ISREG(st.st_mode):
        raise TagError("not a regular file")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.realpath(folder) != folder:  # the rename would land in the folder a link points to
        raise TagError(f"its path goes through a symbolic link (the folder is really {os.path.realpath(folder)}); "
                       f"raygenre never writes through a link it did not create: label the real path to tag it")
    if st.st_nlink > 1:
        raise TagError(f"has {st.st_nlink} hard links; rewriting it would split them (the other names would keep "
                       f"the old tags)")
    if not (st.st_mode & 0o222):
        raise TagError("file is read-only")
    if not os.access(path, os.W_OK):
        raise TagError("file is not writable (permission denied, or immutable: chattr +i)")
    dst = os.stat(folder)
    if not (dst.st_mode & 0o222) or not os.access(folder, os.W_OK | os.X_OK):
        raise TagError("its folder is read-only (the tagged copy is renamed into place there)")
    return st


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_tmp(tmp: str) -> None:
    """Remove one of raygenre's temporaries (a regular file; never a link's target)."""
    with contextlib.suppress(OSError):
        if stat.S_ISREG(os.lstat(tmp).st_mode):
            os.unlink(tmp)


def tmp_name(path: str) -> str:
    """A fresh temporary name beside ``path``: ``.<name>.raygenre-tag-<hex>``."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}{TMP_MARK}{uuid.uuid4().hex[:8]}")


def prepare_copy(path: str, st: os.stat_result, cls: type[Any], state: TagState,
                 tmp: str) -> tuple[str, os.stat_result]:
    """A tagged copy of ``path`` at ``tmp`` (``tmp_name``): (its name, its stat after fsync). ``cls``: the mutagen
    class."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with open(path, "rb") as src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        shutil.copystat(path, tmp, follow_symlinks=False)  # mode and xattrs; times are set anew by the write
        with contextlib.suppress(PermissionError):
            os.chown(tmp, st.st_uid, st.st_gid, follow_symlinks=False)
        write_state(open_audio(tmp, cls), state)
        os.utime(tmp, ns=(st.st_atime_ns, time.time_ns()))  # now: backup tools see a changed file
        wfd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fsync(wfd)
            return tmp, os.fstat(wfd)
        finally:
            os.close(wfd)
    except BaseException:
        _remove_tmp(tmp)
        raise


# ------------------------------------------------------------------------------------------------ the journal
class Journal:
    """An append-only JSON Lines file; every record is fsynced before ``append`` returns."""

    def __init__(self, path: str, fd: int) -> None:
        self.path, self.fd = path, fd

    @classmethod
    def create(cls, path: str, labels: str) -> Journal:
        """A new journal at ``path`` (refused when something is there: ``JournalError``)."""
        if storage.local_path(path) is None:
            raise JournalError(f"--journal {path}: the journal must be a local file")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o666)
        except FileExistsError:
            raise JournalError(f"--journal {path} already exists; raygenre never overwrites or appends to it: "
                               f"choose another name (undo it first with `raygenre tag --undo {path}`)") from None
        except OSError as exc:
            raise JournalError(f"--journal {path}: {exc.strerror or exc}") from None
        journal = cls(path, fd)
        _fsync_dir(os.path.dirname(os.path.abspath(path)))
        journal.append({"raygenre_tag_journal": JOURNAL_VERSION, "labels": os.path.abspath(labels),
                        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        return journal

    @classmethod
    def open(cls, path: str) -> tuple[Journal, list[dict[str, Any]]]:
        """An existing journal to append to (undo), and its records (the header first). ``JournalError`` when it
        is not one."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise JournalError(f"journal not found: {path}") from None
        except OSError as exc:
            raise JournalError(f"cannot open the journal {path}: {exc.strerror or exc}") from None
        with os.fdopen(os.dup(fd), "rb") as f:
            lines = f.read().split(b"\n")
        records = []
        for n, raw in enumerate(lines):
            if not raw.strip():
                continue
            try:
                records.append(json.loads(raw))
            except ValueError:
                if n == len(lines) - 1 or all(not x.strip() for x in lines[n + 1:]):
                    continue  # the last line cut short by a crash: that record never counted
                os.close(fd)
                raise JournalError(f"{path} is damaged (line {n + 1} is not JSON)") from None
        if not records or records[0].get("raygenre_tag_journal") != JOURNAL_VERSION:
            os.close(fd)
            raise JournalError(f"{path} is not a raygenre tag journal")
        return cls(path, fd), records

    def append(self, record: dict[str, Any]) -> None:
        os.write(self.fd, (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        os.fsync(self.fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def default_journal(labels: str) -> str:
    """``LABELS.tag-journal-<UTC time>.jsonl`` beside the label table (one per run, never reused)."""
    when = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = f"{str(labels).rstrip('/')}.tag-journal-{when}"
    path, n = f"{base}.jsonl", 1
    while os.path.lexists(path):
        n += 1
        path = f"{base}-{n}.jsonl"
    return path


def plan_path(labels: str) -> str:
    """Where a dry run lists what would change: ``LABELS.tag-plan.csv``."""
    return f"{str(labels).rstrip('/')}.tag-plan.csv"


def _tag_parts_dir(labels: str) -> str | None:
    """LABELS.parts/ (label's resume state) when it is a real local folder, else None."""
    parts_dir = parts_dir_of(labels)
    local = storage.local_path(parts_dir)
    if local is None or not local.is_dir() or local.is_symlink():
        return None
    try:
        check_parts_dir(parts_dir)
    except (FileExistsError, ValueError):
        return None
    return parts_dir


def _labelled_as(row: Row, st: os.stat_result, moves: tagged.Moves) -> bool:
    """Whether the file is the one that was labelled: its (size, mtime) is the row's, or where raygenre's own
    rewrites since have taken it. A table without size/mtime columns cannot tell: taken as labelled."""
    if row.size is None or row.mtime is None:
        return True
    now = (int(st.st_size), float(st.st_mtime))
    return tagged.advance(row.path, (row.size, row.mtime), moves) == now


def _rewrite(path: str, st: os.stat_result, cls: type[Any], state: TagState, journal: Journal,
             record: dict[str, Any], parts_dir: str | None, stored: str) -> os.stat_result:
    """The atomic rewrite (steps 1-4 of the module doc). Returns the file's stat after."""
    tmp = tmp_name(path)
    # named in the journal before it exists: a kill while copying leaves a temporary that undo can find
    journal.append({"seq": record["seq"], "state": "copying", "path": record["path"], "tmp": os.path.basename(tmp)})
    tmp, after = prepare_copy(path, st, cls, state, tmp)
    pending = False
    try:
        before, after_stamp = stamp_of(st), stamp_of(after)
        journal.append({**record, "state": "pending", "before": before, "after": after_stamp,
                        "tmp": os.path.basename(tmp)})
        pending = True
        if parts_dir is not None:
            tagged.record(parts_dir, stored, (before["size"], before["mtime"]),
                          (after_stamp["size"], after_stamp["mtime"]))
        now = os.lstat(path)
        if not _same(now, before) or stat.S_ISLNK(now.st_mode):  # changed while we copied: leave it alone
            raise TagError("the file changed while it was being tagged; left as it is")
        os.rename(tmp, path)  # the commit point
    except BaseException:
        _remove_tmp(tmp)
        if pending:  # not renamed: the journal says so at once (a kill here is what undo's stamp check is for)
            with contextlib.suppress(OSError):
                journal.append({"seq": record["seq"], "state": "abandoned"})
        raise
    _fsync_dir(os.path.dirname(path))
    journal.append({"seq": record["seq"], "state": "done"})
    return after


PLAN_HEADER = "path,old_genre,new_genre\n"


def _check_plan(path: str) -> None:
    """Refuse, before any work, a file at the dry run's list that raygenre did not write (another header), a
    folder or a link (``storage.OutputExistsError`` / ``UnsafePathError``)."""
    storage.refuse_link(path)
    local = storage.local_path(path)
    if local is not None and local.is_file():
        with open(local, "rb") as f:
            head = f.read(len(PLAN_HEADER))
        if head != PLAN_HEADER.encode():
            raise storage.OutputExistsError(f"{path} exists and is not a dry-run list raygenre wrote; move it away")


def _write_plan(path: str, outcomes: list[FileOutcome]) -> None:
    _check_plan(path)
    text = io.StringIO()
    out = csv.writer(text, lineterminator="\n")
    out.writerow(["path", "old_genre", "new_genre"])
    for o in outcomes:
        if o.action == "would tag":
            out.writerow([o.path, "" if o.old is None else "; ".join(o.old), o.new])
    storage.write_text_atomic(path, text.getvalue())


def tag_labels(labels: str, *, dry_run: bool = False, replace: bool = False, min_confidence: float | None = None,
               journal: str | None = None) -> TagReport:
    """Write every labelled file's genre (and raygenre's confidence tag) into the file itself.

    ``labels``: a label table (``raygenre label --out``). Rows that are errors or ``unknown`` (or, with
    ``min_confidence`` (0..1), below it) are skipped, and so are files that already have a genre tag unless
    ``replace``. ``dry_run`` touches no file: it lists what would change in ``plan_path(labels)``. Otherwise the
    undo journal goes to ``journal`` (default ``default_journal(labels)``; an existing file is refused). Every
    file that cannot be tagged gets an outcome with its reason; only usage errors raise (``ValueError``,
    ``FileNotFoundError``).
    """
    t0 = time.monotonic()
    if min_confidence is not None and not (0.0 <= min_confidence <= 1.0):
        raise ValueError(f"--min-confidence {min_confidence}: a probability between 0 and 1")
    rows = read_rows(labels)
    if dry_run:
        _check_plan(plan_path(labels))
    parts_dir = _tag_parts_dir(labels)
    moves = tagged.load(parts_dir)
    report = TagReport()
    if parts_dir is None and not dry_run:
        report.warnings.append(f"{parts_dir_of(labels)} (label's resume state) is not there: the next `raygenre "
                               f"label` over this library will label the tagged files again")
    jfile: Journal | None = None
    if not dry_run:
        report.journal = journal or default_journal(labels)
        jfile = Journal.create(report.journal, labels)
    try:
        for seq, row in enumerate(rows):
            report.outcomes.append(_tag_one(row, seq, dry_run, replace, min_confidence, jfile, parts_dir, moves))
    finally:
        if jfile is not None:
            jfile.close()
    if dry_run:
        report.plan = plan_path(labels)
        _write_plan(report.plan, report.outcomes)
    report.seconds = time.monotonic() - t0
    return report


def _tag_one(row: Row, seq: int, dry_run: bool, replace: bool, min_confidence: float | None,
             journal: Journal | None, parts_dir: str | None, moves: tagged.Moves) -> FileOutcome:
    path = original_path(row.path)
    genre, why = choose_genre(row, min_confidence)
    if genre is None:
        return FileOutcome(row.path, "skipped", reason=why)
    try:
        st = check_file(path)
        if not _labelled_as(row, st, moves):
            return FileOutcome(row.path, "skipped", new=genre,
                               reason="changed since it was labelled (size or mtime differ): label it again first")
        audio = open_audio(path)
        old = read_state(audio)
        if old.genre is not None and not replace:
            return FileOutcome(row.path, "skipped", old=old.genre, new=genre,
                               reason=f"has a genre tag already ({'; '.join(old.genre)}): --replace to overwrite")
        conf = None if row.confidence is None else (f"{row.confidence:.4f}",)
        new = TagState((genre,), conf, True)
        if (old.genre, old.confidence) == (new.genre, new.confidence):
            return FileOutcome(row.path, "skipped", old=old.genre, new=genre, reason="already tagged so")
        if dry_run:
            return FileOutcome(row.path, "would tag", old=old.genre, new=genre)
        assert journal is not None
        record = {"seq": seq, "op": "tag", "path": row.path, "class": type(audio).__name__,
                  "old": old.to_json(), "new": new.to_json()}
        _rewrite(path, st, type(audio), new, journal, record, parts_dir, row.path)
        return FileOutcome(row.path, "tagged", old=old.genre, new=genre)
    except TagError as exc:
        return FileOutcome(row.path, "error", new=genre, reason=str(exc))
    except OSError as exc:  # the rename or copy refused (immutable file, disk full, ...)
        return FileOutcome(row.path, "error", new=genre, reason=f"could not rewrite it: {exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 - mutagen on a crafted file: that file fails, never the run
        return FileOutcome(row.path, "error", new=genre, reason=f"mutagen failed on it ({type(exc).__name__}: "
                                                               f"{str(exc).splitlines()[0] if str(exc) else ''})")


# ------------------------------------------------------------------------------------------------------ undo
def _tag_records(records: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], str]]:
    """(pending record, its final state) of every tag, newest first. Final state: done | abandoned | undone
    | undo-pending (``state`` of the last record of its ``seq``)."""
    pending: dict[int, dict[str, Any]] = {}
    last: dict[int, str] = {}
    undo_after: dict[int, dict[str, Any]] = {}
    for rec in records:
        seq = rec.get("seq")
        if not isinstance(seq, int):
            continue
        if rec.get("state") == "pending":
            pending[seq] = rec
        if rec.get("state") == "undo-pending":
            undo_after[seq] = rec
        if rec.get("state") not in ("copying", "undo-copying"):  # named a temporary; says nothing of the file
            last[seq] = str(rec.get("state"))
    for seq in sorted(pending, reverse=True):
        yield {**pending[seq], "undo": undo_after.get(seq)}, last[seq]


def undo(journal_path: str) -> TagReport:
    """Restore every file a tag run changed (``journal_path``: its journal) to its old tags, newest first.

    A file whose size or mtime is not what tagging left (edited since, tagged again) is refused, one line each;
    so is a link or a file that is gone. Files undone are marked in the journal (a second undo skips them) and
    recorded for label's resume (they stay "unchanged" to it). A tag left pending by a crash is judged by the
    file's stamp: committed (the "after" stamp) is undone, not committed is left, its temporary removed.
    """
    t0 = time.monotonic()
    journal, records = Journal.open(journal_path)
    report = TagReport()
    labels = str(records[0].get("labels") or "")  # the header: which label table the run tagged from
    parts_dir = _tag_parts_dir(labels) if labels else None
    paths = {r["seq"]: str(r["path"]) for r in records[1:] if isinstance(r.get("seq"), int) and "path" in r}
    for r in records[1:]:  # temporaries a kill left (tag's or an earlier undo's): ours, named before creation
        tmp = str(r.get("tmp", ""))
        if TMP_MARK in tmp and "/" not in tmp and r.get("seq") in paths:
            _remove_tmp(os.path.join(os.path.dirname(original_path(paths[r["seq"]])), tmp))
    try:
        for rec, state in _tag_records(records[1:]):
            report.outcomes.append(_undo_one(rec, state, journal, parts_dir))
    finally:
        journal.close()
    report.seconds = time.monotonic() - t0
    return report


def _undo_one(rec: dict[str, Any], state: str, journal: Journal, parts_dir: str | None) -> FileOutcome:
    stored = str(rec["path"])
    path = original_path(stored)
    old = TagState.from_json(rec["old"])
    after: dict[str, Any] = rec["after"]
    if state == "undone":
        return FileOutcome(stored, "skipped", reason="already undone")
    if state == "undo-pending":  # a crash during an earlier undo: its stamp says whether that rename happened
        with contextlib.suppress(OSError):
            if _same(os.lstat(path), rec["undo"]["after"]):
                journal.append({"seq": rec["seq"], "state": "undone"})
                return FileOutcome(stored, "undone", old=old.genre)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return FileOutcome(stored, "refused", reason="file not found: nothing to undo")
    except OSError as exc:
        return FileOutcome(stored, "refused", reason=f"cannot read the file's information: {exc.strerror or exc}")
    if state == "pending" and _same(st, rec["before"]):
        journal.append({"seq": rec["seq"], "state": "abandoned"})
        return FileOutcome(stored, "skipped", reason="never tagged (the run stopped before this file)")
    if not _same(st, after):
        return FileOutcome(stored, "refused", reason="changed since tagging (size/mtime differ from the journal): "
                                                     "not undone")
    try:
        st = check_file(path)
        cls = open_audio(path).__class__
        record = {"seq": rec["seq"], "op": "undo"}
        tmp_new = tmp_name(path)
        journal.append({**record, "state": "undo-copying", "tmp": os.path.basename(tmp_new)})
        tmp_new, after2 = prepare_copy(path, st, cls, old, tmp_new)
        try:
            journal.append({**record, "state": "undo-pending", "after": stamp_of(after2)})
            if parts_dir is not None:
                tagged.record(parts_dir, stored, (int(st.st_size), float(st.st_mtime)),
                              (int(after2.st_size), float(after2.st_mtime)))
            if not _same(os.lstat(path), after):
                raise TagError("the file changed while it was being restored; left as it is")
            os.rename(tmp_new, path)
        except BaseException:
            _remove_tmp(tmp_new)
            raise
        _fsync_dir(os.path.dirname(path))
        journal.append({"seq": rec["seq"], "state": "undone"})
        return FileOutcome(stored, "undone", old=old.genre, new=None)
    except TagError as exc:
        return FileOutcome(stored, "refused", reason=str(exc))
    except OSError as exc:
        return FileOutcome(stored, "refused", reason=f"could not rewrite it: {exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 - as in _tag_one: one file fails, never the undo
        return FileOutcome(stored, "refused", reason=f"mutagen failed on it ({type(exc).__name__})")
