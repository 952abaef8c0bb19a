"""`raygenre tag` and `raygenre playlists` on real files: MP3, FLAC, OGG Vorbis, Opus and M4A made by ffmpeg from a
synthetic tone, and WAV, each with and without a genre tag. Real mutagen, real decoders (soundfile; ffmpeg to raw
PCM for M4A): after tagging and after undo the decoded samples are compared exactly, the tags read back exactly.
Every crafted input (links, read-only files and folders, an immutable file, garbage, hard links, edited files,
a journal left by a crash) checks that the victim is byte-for-byte unchanged, or the exact result.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from conftest import tree_of
from typer.testing import CliRunner

from raygenre.cli import app
from raygenre.label import tagged
from raygenre.label.parts import output_schema, parts_dir_of
from raygenre.tag import apply
from raygenre.tag.apply import tag_labels, undo
from raygenre.tag.playlists import MANIFEST, playlist_name, write_playlists
from raygenre.tag.tags import TagState, open_audio, read_state, write_state

FFMPEG = shutil.which("ffmpeg") or ("/usr/bin/ffmpeg" if os.path.exists("/usr/bin/ffmpeg") else None)
GENRES = ["blues", "jazz", "rock"]
ENCODE = {"mp3": ["-c:a", "libmp3lame", "-b:a", "64k"], "flac": ["-c:a", "flac"],
          "ogg": ["-c:a", "libvorbis"], "opus": ["-c:a", "libopus", "-ar", "48000"],
          "m4a": ["-c:a", "aac", "-b:a", "64k"]}
FORMATS = ["wav", "aiff", *ENCODE]


def _tone(path: Path, seconds: float = 1.0, sr: int = 22050, freq: float = 440.0) -> None:
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, subtype="PCM_16")


def make_file(folder: Path, name: str, genre: str | None) -> Path:
    """A real file of ``name``'s format (ffmpeg from a sine WAV), with ``genre`` as its genre tag or none."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    ext = path.suffix.lstrip(".")
    if ext in ("wav", "aiff"):
        _tone(path)
        if genre is not None:  # an ID3 chunk, as taggers write into WAV and AIFF
            write_state(open_audio(str(path)), TagState((genre,), None, True))
        return path
    if FFMPEG is None:
        pytest.skip("ffmpeg is not installed: cannot make MP3/FLAC/OGG/Opus/M4A test files")
    src = folder / f".src-{name}.wav"
    _tone(src)
    meta = ["-metadata", f"genre={genre}"] if genre else []
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-y", "-i", str(src), *ENCODE[ext], "-map_metadata", "-1",
                    *meta, str(path)], check=True)
    src.unlink()
    return path


def decode(path: Path) -> np.ndarray:
    """Every decoded sample: soundfile (libsndfile), or ffmpeg to raw float PCM for M4A (libsndfile has no AAC)."""
    if path.suffix == ".m4a":
        raw = subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-i", str(path), "-f", "f32le", "-"],
                             check=True, capture_output=True).stdout
        return np.frombuffer(raw, dtype=np.float32)
    data, _ = sf.read(str(path), dtype="float32", always_2d=True)
    return data


def state_of(path: Path) -> TagState:
    return read_state(open_audio(str(path)))


def write_table(out: Path, rows: list[dict], *, legacy: bool = False, top_genre: bool = False) -> Path:
    """A label table as `raygenre label` writes it (its schema), one row per dict: path, genre, confidence,
    probabilities (the winner gets ``confidence``), error; size/mtime from the file now. ``legacy``: no
    ``confidence`` (nor ``top_genre``) column, as older tables; ``top_genre``: with the column `label
    --min-confidence` adds (already there when this schema has it)."""
    schema = output_schema(GENRES)
    cols: dict[str, list] = {n: [] for n in schema.names}
    for r in rows:
        p = Path(r["path"])
        st = os.lstat(p) if os.path.lexists(p) else None
        genre, conf = r.get("genre"), r.get("confidence", 0.9)
        best = r.get("top_genre", genre)
        cols["path"].append(str(p))
        cols["genre"].append(genre)
        if "top_genre" in cols:  # label tables with --min-confidence's column (newer schema)
            cols["top_genre"].append(None if r.get("error") else best)
        cols["confidence"].append(None if r.get("error") else conf)
        for g in GENRES:
            share = conf if g == best else (1 - conf) / (len(GENRES) - 1)
            cols[f"p_{g}"].append(None if r.get("error") else share)
        cols["duration_s"].append(r.get("duration_s", 1.0))
        cols["segments_used"].append(1)
        cols["error"].append(r.get("error"))
        cols["model"].append("test-model")
        cols["size"].append(0 if st is None else st.st_size)
        cols["mtime"].append(0.0 if st is None else st.st_mtime)
    table = pa.table(cols, schema=schema)
    if legacy:  # as written before confidence and top_genre
        table = table.drop([n for n in ("confidence", "top_genre") if n in table.schema.names])
    if top_genre and "top_genre" not in table.schema.names:
        table = table.append_column("top_genre", pa.array([r.get("top_genre", r.get("genre")) for r in rows],
                                                          pa.string()))
    pq.write_table(table, out)
    return out


# ----------------------------------------------------------------------------------- every format, exactly
@pytest.mark.parametrize("fmt", FORMATS)
def test_tag_and_undo_every_format_keep_the_audio_bit_identical(fmt: str, tmp_path: Path) -> None:
    """Each format with a genre tag (--replace), without one, and with no tag block at all: tagged exactly,
    decoded samples identical, undo gives back the exact old tags (no genre, no block) and the same samples."""
    lib = tmp_path / "lib"
    with_genre = make_file(lib, f"with.{fmt}", "Jazz")
    without = make_file(lib, f"without.{fmt}", None)
    bare = make_file(lib, f"bare.{fmt}", None)
    open_audio(str(bare)).delete()  # no tag block at all (ffmpeg writes an encoder tag)
    files = [with_genre, without, bare]
    before = {p: (state_of(p), decode(p)) for p in files}
    labels = write_table(tmp_path / "labels.parquet", [{"path": p, "genre": "rock", "confidence": 0.87654}
                                                        for p in files])
    result = tag_labels(str(labels), replace=True)
    assert [o.action for o in result.outcomes] == ["tagged"] * 3, [o.reason for o in result.outcomes]
    for p in files:
        assert state_of(p) == TagState(("rock",), ("0.8765",), True)
        np.testing.assert_array_equal(decode(p), before[p][1])  # exactly: no sample differs
    assert result.outcomes[0].old == ("Jazz",) and result.outcomes[1].old is None

    back = undo(str(result.journal))
    assert [o.action for o in back.outcomes] == ["undone"] * 3, [o.reason for o in back.outcomes]
    for p in files:
        assert state_of(p) == before[p][0]
        np.testing.assert_array_equal(decode(p), before[p][1])
    if fmt not in ("ogg", "opus", "m4a"):  # Ogg always carries a comment header; mutagen's MP4 keeps an empty one
        assert before[bare][0].had_tags is False and state_of(bare).had_tags is False
    again = undo(str(result.journal))
    assert [o.reason for o in again.outcomes] == ["already undone"] * 3


def test_an_id3v23_file_stays_v23_and_other_tags_are_kept(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    path = make_file(lib, "old.mp3", None)
    from mutagen.id3 import ID3, TIT2

    tags = ID3(str(path))
    tags.add(TIT2(encoding=1, text=["A title"]))
    tags.save(str(path), v2_version=3)
    labels = write_table(tmp_path / "labels.parquet", [{"path": path, "genre": "blues"}])
    tag_labels(str(labels))
    tags = ID3(str(path))
    assert tags.version[:2] == (2, 3) and tags["TIT2"].text == ["A title"] and tags["TCON"].text == ["blues"]


# --------------------------------------------------------------------------------------------- the rules
def test_existing_genres_are_kept_without_replace(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    kept = make_file(lib, "kept.flac", "Jazz")
    fresh = make_file(lib, "fresh.flac", None)
    blob = kept.read_bytes()
    labels = write_table(tmp_path / "labels.parquet", [{"path": kept, "genre": "rock"}, {"path": fresh,
                                                                                         "genre": "blues"}])
    result = tag_labels(str(labels))
    assert [(o.action, o.reason) for o in result.outcomes] == [
        ("skipped", "has a genre tag already (Jazz): --replace to overwrite"), ("tagged", "")]
    assert kept.read_bytes() == blob and state_of(fresh).genre == ("blues",)


def test_dry_run_touches_nothing_and_lists_the_changes(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    a = make_file(lib, "a.mp3", "Jazz")
    b = make_file(lib, "b.wav", None)
    labels = write_table(tmp_path / "labels.parquet", [{"path": a, "genre": "rock"}, {"path": b, "genre": "blues"}])
    before = tree_of(tmp_path)
    result = CliRunner().invoke(app, ["tag", str(labels), "--dry-run", "--replace"])
    assert result.exit_code == 0, result.output
    assert f"would tag: {a}: Jazz -> rock" in result.output and f"would tag: {b}: (none) -> blues" in result.output
    plan = Path(f"{labels}.tag-plan.csv")
    assert plan.read_text() == f"path,old_genre,new_genre\n{a},Jazz,rock\n{b},,blues\n"
    after = tree_of(tmp_path)
    del after[plan.name]
    assert after == before  # no audio file, no journal, nothing else
    assert CliRunner().invoke(app, ["tag", str(labels), "--dry-run"]).exit_code == 0  # its own list: replaced
    plan.write_text("my notes\n")
    result = CliRunner().invoke(app, ["tag", str(labels), "--dry-run"])
    assert result.exit_code == 2 and "not a dry-run list raygenre wrote" in result.output
    assert plan.read_text() == "my notes\n"


def test_unknown_error_and_unsure_rows_are_not_tagged_and_old_tables_work(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    files = [make_file(lib, f"f{i}.flac", None) for i in range(4)]
    rows = [{"path": files[0], "genre": "unknown", "top_genre": "jazz", "confidence": 0.4},
            {"path": files[1], "genre": None, "error": "decoding failed"},
            {"path": files[2], "genre": "rock", "confidence": 0.55},
            {"path": files[3], "genre": "blues", "confidence": 0.95}]
    blobs = {p: p.read_bytes() for p in files}
    labels = write_table(tmp_path / "new.parquet", rows, top_genre=True)
    dry = tag_labels(str(labels), dry_run=True)
    assert [(o.action, o.new) for o in dry.outcomes] == [("skipped", None), ("skipped", None),
                                                        ("would tag", "rock"), ("would tag", "blues")]
    assert dry.outcomes[1].reason == "label row has an error: decoding failed"
    # --min-confidence: the best guess (top_genre) of a file label called unknown is written when sure enough
    lower = tag_labels(str(labels), dry_run=True, min_confidence=0.35)
    assert [(o.action, o.new) for o in lower.outcomes][0] == ("would tag", "jazz")
    higher = tag_labels(str(labels), dry_run=True, min_confidence=0.6)
    assert [o.action for o in higher.outcomes] == ["skipped", "skipped", "skipped", "would tag"]
    assert higher.outcomes[2].reason == "confidence 0.55 is below --min-confidence 0.6"
    # an older table: no confidence column (taken from p_<genre>), no top_genre (the genre)
    old = write_table(tmp_path / "old.parquet", rows, legacy=True)
    result = tag_labels(str(old), min_confidence=0.6)
    assert [o.action for o in result.outcomes] == ["skipped", "skipped", "skipped", "tagged"]
    assert state_of(files[3]) == TagState(("blues",), ("0.9500",), True)
    assert all(files[i].read_bytes() == blobs[files[i]] for i in range(3))


def test_links_read_only_immutable_missing_garbage_and_hard_links_are_refused(tmp_path: Path) -> None:
    """Each gets its own error line; no file, link target or folder changes; the run goes on (one good file)."""
    lib = tmp_path / "lib"
    good = make_file(lib, "good.mp3", None)
    target = make_file(tmp_path / "elsewhere", "target.mp3", None)
    link = lib / "link.mp3"
    link.symlink_to(target)
    readonly = make_file(lib, "readonly.flac", None)
    readonly.chmod(0o444)
    locked_dir = lib / "locked"
    in_locked = make_file(locked_dir, "in.flac", None)
    locked_dir.chmod(0o555)
    garbage = lib / "garbage.mp3"
    garbage.write_bytes(b"not audio at all " * 100)
    hard = make_file(lib, "hard.ogg", None)
    os.link(hard, lib / "hard-twin.ogg")
    immutable = make_file(lib, "immutable.opus", None)
    chattr = subprocess.run(["chattr", "+i", str(immutable)], capture_output=True)
    missing = lib / "gone.wav"
    (lib / "linked-dir").symlink_to(tmp_path / "elsewhere")  # a folder link: the file under it is elsewhere
    via_link = lib / "linked-dir" / "target.mp3"
    paths = [good, link, readonly, in_locked, garbage, hard, immutable, missing, via_link]
    labels = write_table(tmp_path / "labels.parquet", [{"path": p, "genre": "rock"} for p in paths])
    before = tree_of(tmp_path / "elsewhere") | {k: v for k, v in tree_of(lib).items() if k != "good.mp3"}
    try:
        result = tag_labels(str(labels))
    finally:
        locked_dir.chmod(0o755)
        if chattr.returncode == 0:
            subprocess.run(["chattr", "-i", str(immutable)], check=True)
    by = {Path(o.path).name: (o.action, o.reason) for o in result.outcomes}
    assert by["good.mp3"] == ("tagged", "")
    assert by["link.mp3"][0] == "error" and "symbolic link" in by["link.mp3"][1]
    assert by["readonly.flac"] == ("error", "file is read-only")
    assert by["in.flac"] == ("error", "its folder is read-only (the tagged copy is renamed into place there)")
    assert by["garbage.mp3"][0] == "error" and by["garbage.mp3"][1].startswith("mutagen")
    assert by["hard.ogg"][0] == "error" and "2 hard links" in by["hard.ogg"][1]
    assert by["gone.wav"] == ("error", "file not found (moved or deleted since it was labelled)")
    via = next(o for o in result.outcomes if o.path == str(via_link))
    assert via.action == "error" and via.reason.startswith("its path goes through a symbolic link")
    if chattr.returncode == 0:  # root ignores mode bits, not the immutable flag: the rename is refused
        assert by["immutable.opus"] == ("error", "file is not writable (permission denied, or immutable: chattr +i)")
    after = tree_of(tmp_path / "elsewhere") | {k: v for k, v in tree_of(lib).items() if k != "good.mp3"}
    if chattr.returncode != 0:
        del before["immutable.opus"], after["immutable.opus"]
    assert after == before
    assert not [n for n in os.listdir(lib) if apply.TMP_MARK in n]  # no temporary left behind


def test_per_file_problems_are_lines_in_the_report_and_exit_0(tmp_path: Path) -> None:
    good = make_file(tmp_path / "lib", "good.ogg", None)
    labels = write_table(tmp_path / "labels.parquet", [{"path": tmp_path / "lib" / "gone.mp3", "genre": "rock"},
                                                       {"path": good, "genre": "jazz"}])
    result = CliRunner().invoke(app, ["tag", str(labels), "--journal", str(tmp_path / "j.jsonl")])
    assert result.exit_code == 0, result.output
    assert f"error: {tmp_path}/lib/gone.mp3: file not found (moved or deleted since it was labelled)" in result.output
    assert f"tagged: {good}: (none) -> jazz" in result.output and "Traceback" not in result.output
    assert state_of(good).genre == ("jazz",)


def test_a_file_changed_since_labelling_is_not_tagged(tmp_path: Path) -> None:
    path = make_file(tmp_path / "lib", "a.flac", None)
    labels = write_table(tmp_path / "labels.parquet", [{"path": path, "genre": "rock"}])
    os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 10**9))
    blob = path.read_bytes()
    result = tag_labels(str(labels))
    assert result.outcomes[0].action == "skipped" and "changed since it was labelled" in result.outcomes[0].reason
    assert path.read_bytes() == blob


def test_undo_refuses_a_file_changed_since_tagging_and_undoes_the_rest(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    a, b = make_file(lib, "a.mp3", None), make_file(lib, "b.m4a", "Jazz")
    labels = write_table(tmp_path / "labels.parquet", [{"path": a, "genre": "rock"}, {"path": b, "genre": "blues"}])
    journal = tmp_path / "j.jsonl"
    tag_labels(str(labels), replace=True, journal=str(journal))
    write_state(open_audio(str(a)), TagState(("Edited",), None, True))  # someone else's tagger, after ours
    edited = a.read_bytes()
    result = CliRunner().invoke(app, ["tag", "--undo", str(journal)])
    assert result.exit_code == 0, result.output
    assert f"refused: {a}: changed since tagging (size/mtime differ from the journal): not undone" in result.output
    assert a.read_bytes() == edited and state_of(b) == TagState(("Jazz",), None, True)


def test_a_crash_before_or_after_the_rename_is_recovered_from_the_journal(tmp_path: Path) -> None:
    """The journal a kill leaves: "pending" without "done". After the rename (file at its "after" stamp) undo
    restores it; before the rename (file untouched, temporary still there) undo leaves it and removes the
    temporary."""
    lib = tmp_path / "lib"
    a, b = make_file(lib, "a.flac", None), make_file(lib, "b.flac", None)
    b_blob, b_st = b.read_bytes(), os.stat(b)
    labels = write_table(tmp_path / "labels.parquet", [{"path": a, "genre": "rock"}, {"path": b, "genre": "jazz"}])
    journal = tmp_path / "j.jsonl"
    tag_labels(str(labels), journal=str(journal))
    lines = [json.loads(x) for x in journal.read_text().splitlines()]
    assert [r.get("state") for r in lines[1:]] == ["copying", "pending", "done"] * 2
    # a: killed after its rename, before "done"; b: killed before its rename (temporary tagged, file untouched)
    pend_b = lines[5]
    (lib / pend_b["tmp"]).write_bytes(b.read_bytes())
    b.write_bytes(b_blob)
    os.utime(b, ns=(b_st.st_atime_ns, b_st.st_mtime_ns))
    kept = [lines[0], lines[1], lines[2], lines[4], lines[5]]
    journal.write_text("\n".join(json.dumps(r) for r in kept) + "\n{\"seq\": 1, \"sta")
    a_before = state_of(a)
    assert a_before.genre == ("rock",)
    result = undo(str(journal))
    by = {Path(o.path).name: (o.action, o.reason) for o in result.outcomes}
    assert by == {"a.flac": ("undone", ""), "b.flac": ("skipped", "never tagged (the run stopped before this "
                                                                  "file)")}
    assert state_of(a).genre is None and b.read_bytes() == b_blob
    assert not (lib / pend_b["tmp"]).exists()


def test_a_killed_tag_run_leaves_every_file_untouched_or_fully_tagged_and_undo_restores_them(tmp_path: Path) -> None:
    """SIGKILL a real `raygenre tag` mid-run: every file is byte-for-byte what it was, or tagged and at the
    journal's "after" stamp (samples identical); undo then gives every file its exact old bytes' tags back."""
    lib = tmp_path / "lib"
    lib.mkdir()
    files = []
    for i in range(150):
        path = lib / f"t{i:03d}.wav"
        _tone(path, seconds=3.0, freq=220.0 + i)
        files.append(path)
    blobs = {p: p.read_bytes() for p in files}
    samples = decode(files[0])
    labels = write_table(tmp_path / "labels.parquet", [{"path": p, "genre": "rock"} for p in files])
    journal = tmp_path / "j.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "raygenre", "tag", str(labels), "--journal", str(journal)],
                            cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_bytes().count(b"\n") >= 31:  # ten files in (3 records each)
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    records = [json.loads(x) for x in journal.read_text().splitlines() if x.endswith("}")]
    after = {r["path"]: r["after"] for r in records[1:] if r.get("state") == "pending"}
    tagged_now = untouched = 0
    for p in files:
        st = os.stat(p)
        if p.read_bytes() == blobs[p]:
            untouched += 1
            continue
        tagged_now += 1  # changed: then exactly tagging's result, and journaled
        assert state_of(p) == TagState(("rock",), ("0.9000",), True)
        assert (st.st_size, st.st_mtime_ns) == (after[str(p)]["size"], after[str(p)]["mtime_ns"])
    assert tagged_now >= 10 and untouched >= 1, (tagged_now, untouched)
    np.testing.assert_array_equal(decode(files[0]), samples)
    leftovers = [n for n in os.listdir(lib) if apply.TMP_MARK in n]  # the kill may leave one (then undo removes it)
    journaled = {r["tmp"] for r in records[1:] if r.get("state") == "copying"}
    assert set(leftovers) <= journaled and len(leftovers) <= 1
    result = undo(str(journal))
    assert result.count("refused") == 0 and result.count("undone") == tagged_now
    assert all(state_of(p) == TagState(None, None, False) for p in files)
    assert not [n for n in os.listdir(lib) if apply.TMP_MARK in n]


def test_usage_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    path = make_file(tmp_path / "lib", "a.wav", None)
    labels = write_table(tmp_path / "labels.parquet", [{"path": path, "genre": "rock"}])
    taken = tmp_path / "taken.jsonl"
    taken.write_text("mine\n")
    not_labels = tmp_path / "notes.csv"
    not_labels.write_text("a,b\n1,2\n")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (tmp_path / "link.jsonl").symlink_to(victim)
    Path(f"{labels}.tag-plan.csv").symlink_to(victim)  # a dry run's list never goes through a link either
    runner = CliRunner()
    for args, words in ([["tag", str(tmp_path / "nope.parquet")], "label table not found"],
                        [["tag", str(labels), "--journal", str(tmp_path / "link.jsonl")], "already exists"],
                        [["tag", str(labels), "--dry-run"], "symlink"],
                        [["tag", str(labels), "--journal", str(taken)], "already exists"],
                        [["tag", str(labels), "--min-confidence", "2"], "between 0 and 1"],
                        [["tag", str(not_labels)], "not a label table"],
                        [["tag", "--undo", str(taken)], "not a raygenre tag journal"],
                        [["tag", "--undo", str(tmp_path / "none.jsonl")], "journal not found"],
                        [["tag", str(labels), "--undo", str(taken)], "takes no LABELS"],
                        [["tag"], "give LABELS"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert words in result.output and "Traceback" not in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert taken.read_text() == "mine\n" and state_of(path).genre is None and victim.read_text() == "keep me\n"


# ------------------------------------------------------------------------- exactly once with label's resume
def test_tagged_records_move_label_stamps_along_the_chain(tmp_path: Path) -> None:
    parts = tmp_path / "labels.parquet.parts"
    parts.mkdir()
    tagged.record(str(parts), "/m/a.mp3", (10, 1.5), (20, 2.5))
    tagged.record(str(parts), "/m/a.mp3", (20, 2.5), (12, 3.5))  # undo
    with open(parts / tagged.TAGGED_FILE, "a") as f:
        f.write('{"path": "/m/b.mp3", "before": [1, ')  # cut short by power loss
    moves = tagged.load(str(parts))
    assert tagged.advance("/m/a.mp3", (10, 1.5), moves) == (12, 3.5)
    assert tagged.advance("/m/a.mp3", (11, 1.5), moves) == (11, 1.5)  # another stamp: no chain
    assert tagged.advance("/m/b.mp3", (1, 1.0), moves) == (1, 1.0)


def test_the_scan_skips_a_tagged_file_and_labels_one_whose_audio_changed_since(tmp_path: Path) -> None:
    """The resume's done check without Ray: rows in a real part, files tagged by `tag_labels`, `scan_shard`."""
    from raygenre.label.parts import PartWriter
    from raygenre.label.scan import scan_shard

    lib = tmp_path / "lib"
    a, b = make_file(lib, "a.flac", None), make_file(lib, "b.flac", None)
    labels = write_table(tmp_path / "labels.parquet", [{"path": a, "genre": "rock"}, {"path": b, "genre": "jazz"}])
    parts_dir = parts_dir_of(str(labels))
    writer = PartWriter(parts_dir, output_schema(GENRES), 10, 0)
    writer.add(pq.read_table(labels))
    writer.flush()

    def pending() -> list[str]:
        return [Path(p).name for t in scan_shard(str(lib), 0, 1, frozenset({"flac"}), parts_dir, model="test-model")
                for p in t.column("path").to_pylist()]

    assert pending() == []
    assert tag_labels(str(labels)).count("tagged") == 2
    assert pending() == []  # tagged: size and mtime changed, recognised through tagged.jsonl
    write_state(open_audio(str(b)), TagState(("Other",), None, True))  # someone else's tagger: not raygenre's
    assert pending() == ["b.flac"]


def _random_model(out: Path) -> str:
    """A real, untrained, seeded CNN artifact (labels arbitrary but deterministic)."""
    import torch

    from raygenre.config import load_config
    from raygenre.model.artifact import save_model
    from raygenre.model.networks import build_model

    feats = load_config("featurize").features
    torch.manual_seed(0)
    module = build_model("cnn", feats.frames, feats.n_mfcc, len(GENRES))
    save_model(str(out), module, name="cnn", hparams={"hidden": 64, "dropout": 0.3}, features=feats,
               genres=GENRES, mean=np.r_[-250.0, 80.0, np.zeros(feats.n_mfcc - 2)],
               std=np.full(feats.n_mfcc, 40.0), metrics={}, synthetic=True)
    return str(out)


def test_label_tag_label_relabels_nothing_and_a_changed_file_exactly_once(ray_local: None, tmp_path: Path) -> None:
    """label -> tag -> label (no-op, no Ray) -> label without the done index (the scan's check: nothing) ->
    new audio in one file -> label (exactly that one) -> undo -> label (nothing)."""
    from conftest import write_tone_track

    from raygenre.config import load_config
    from raygenre.label.index import INDEX_FILE
    from raygenre.label.pipeline import label_library

    lib = tmp_path / "lib"
    names = ["a.wav", "b.flac", "sub/c.wav", "sub/d.flac"]
    for i, name in enumerate(names):
        write_tone_track(lib / name, 3.5, seed=i)
    model = _random_model(tmp_path / "model")
    out = tmp_path / "labels.parquet"
    # min_confidence 0: an untrained model is never confident, and every file must get a genre to tag
    cfg = dataclasses.replace(load_config("label"), files_per_part=2, batch_size=2, min_confidence=0.0)

    def run() -> tuple[int, bool, list[str]]:
        r = label_library(str(lib), str(out), cfg, model_dir=model, progress=False)
        return r.new, r.unchanged, r.warnings

    assert run()[0] == 4
    tagging = tag_labels(str(out))
    assert tagging.count("tagged") == 4, [o.reason for o in tagging.outcomes]
    assert run() == (0, True, [])  # the done index: every tagged file recognised, Ray never started
    (Path(parts_dir_of(str(out))) / INDEX_FILE).unlink()
    assert run() == (0, False, [])  # the full resume (Ray, the scan's done check): nothing labelled either
    changed = lib / "sub/c.wav"
    write_tone_track(changed, 4.0, seed=9)  # new audio (and its tags gone: a new file)
    new, _, warned = run()
    assert (new, warned) == (1, [])  # and no warning about the done index or tagged.jsonl in OUT.parts/
    rows = {r["path"]: r for r in pq.read_table(out).to_pylist()}
    assert rows[str(changed)]["size"] == os.stat(changed).st_size
    back = undo(str(tagging.journal))
    assert back.count("undone") == 3 and back.count("refused") == 1  # c.wav was replaced: refused
    assert run()[:2] == (0, True)


# ------------------------------------------------------------------------------------------------ playlists
def test_playlists_per_genre_relative_paths_durations_and_titles(tmp_path: Path) -> None:
    lib = tmp_path / "music"
    a = make_file(lib, "a.flac", None)
    write_state(open_audio(str(a)), TagState(None, None, True))
    from mutagen.flac import FLAC

    f = FLAC(str(a))
    f["TITLE"], f["ARTIST"] = ["Evil\ntitle"], ["Someone"]  # a line break in a tag must not make an entry
    f.save()
    b = make_file(lib / "sub", "b.mp3", None)
    c = make_file(lib, "c.wav", None)
    labels = write_table(tmp_path / "labels.parquet", [
        {"path": a, "genre": "rock", "duration_s": 61.6}, {"path": b, "genre": "unknown", "duration_s": None},
        {"path": c, "genre": None, "error": "bad"}, {"path": lib / "gone.wav", "genre": "rock"}])
    out = tmp_path / "lists"
    result = write_playlists(str(labels), str(out))
    assert sorted(result.written) == [("rock.m3u8", 1), ("unknown.m3u8", 1)]
    assert (out / "rock.m3u8").read_text() == "#EXTM3U\n#EXTINF:62,Someone - Evil title\n../music/a.flac\n"
    assert (out / "unknown.m3u8").read_text() == "#EXTM3U\n#EXTINF:1,b\n../music/sub/b.mp3\n"  # mutagen's length
    assert result.warnings == ["1 file(s) no longer on disk are in no playlist",
                               "1 error row(s) (files that could not be labelled) are in no playlist"]
    assert playlist_name("../etc/x") == "_.._etc_x.m3u8" and playlist_name(".hidden") == "_.hidden.m3u8"


def test_playlists_never_overwrite_what_raygenre_did_not_write_nor_write_through_links(tmp_path: Path) -> None:
    lib = tmp_path / "music"
    a, b = make_file(lib, "a.wav", None), make_file(lib, "b.wav", None)
    labels = write_table(tmp_path / "labels.parquet", [{"path": a, "genre": "rock"}, {"path": b, "genre": "jazz"}])
    out = tmp_path / "lists"
    out.mkdir()
    (out / "rock.m3u8").write_text("my own playlist\n")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    before = tree_of(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["playlists", str(labels), "--out", str(out)])
    assert result.exit_code == 2 and "rock.m3u8" in result.output and len(result.output.strip().splitlines()) == 1
    assert tree_of(tmp_path) == before  # nothing written, not even jazz.m3u8
    (out / "jazz.m3u8").symlink_to(victim)
    result = runner.invoke(app, ["playlists", str(labels), "--out", str(out), "--overwrite"])
    assert result.exit_code == 2 and "symbolic link" in result.output
    assert victim.read_text() == "keep me\n"
    (out / "jazz.m3u8").unlink()
    result = runner.invoke(app, ["playlists", str(labels), "--out", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (out / "rock.m3u8").read_text().startswith("#EXTM3U\n")
    # a rerun replaces its own files without --overwrite; a genre gone removes its playlist (ours, unedited)
    labels = write_table(tmp_path / "labels.parquet", [{"path": a, "genre": "rock"}, {"path": b, "genre": "rock"}])
    result = write_playlists(str(labels), str(out))
    assert result.removed == ["jazz.m3u8"] and sorted(os.listdir(out)) == [MANIFEST, "rock.m3u8"]
    (out / "rock.m3u8").write_text("edited by hand\n")
    with pytest.raises(FileExistsError, match="edited since"):
        write_playlists(str(labels), str(out))
    assert (out / "rock.m3u8").read_text() == "edited by hand\n"
    link_out = tmp_path / "link-out"
    link_out.symlink_to(out)
    with pytest.raises(FileExistsError, match="symbolic link"):
        write_playlists(str(labels), str(link_out), overwrite=True)
