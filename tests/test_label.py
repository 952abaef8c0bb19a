"""`raygenre label`: real Ray (``ray_local``), real audio in every format, real Parquet/CSV/JSONL output.

Covers the streaming scan, formats, bad files (each kind gets an error row; CLI exit 1), long and short files,
resume after a SIGKILL (every file exactly once), output formats, a missing model (exit 2) and labels that are
right for an easy case (a hand-built loud/quiet model).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from conftest import REPO, write_lying_header, write_nan_track, write_tone_track
from ray.util.state import list_actors
from typer.testing import CliRunner

from raygenre.cli import app
from raygenre.config import load_config
from raygenre.data.mfcc import MfccExtractor, window_starts
from raygenre.label.parts import (
    ResumeMismatchError,
    consolidate,
    format_of,
    list_parts,
    output_schema,
    parts_dir_of,
    read_labels,
)
from raygenre.label.pipeline import LabelResult, NoModelError, _pool_sizes, label_library
from raygenre.label.predict import Predictor, decode_batch, decode_file, mean_per_file
from raygenre.label.scan import SCAN_SHARDS, scan_shard, walk_shard
from raygenre.model.artifact import load_model, save_model
from raygenre.model.networks import build_model

F = load_config("featurize").features  # 22050 Hz, 13 MFCC, 3 s segments: what the models are trained on
GENRES = ["blues", "jazz", "rock"]
EXTS = frozenset(load_config("label").extensions)


def cfg(**over):
    """The default label config with overrides (small parts so that tests exercise several of them)."""
    return dataclasses.replace(load_config("label"), **over)


def random_model(out: Path, seed: int = 0, genres: list[str] = GENRES) -> str:
    """A real, untrained, seeded CNN artifact (its labels are arbitrary but deterministic)."""
    torch.manual_seed(seed)
    module = build_model("cnn", F.frames, F.n_mfcc, len(genres))
    mean = np.r_[-250.0, 80.0, np.zeros(F.n_mfcc - 2)]
    save_model(str(out), module, name="cnn", hparams={"hidden": 64, "dropout": 0.3}, features=F, genres=genres,
               mean=mean, std=np.full(F.n_mfcc, 40.0), metrics={}, synthetic=True)
    return str(out)


def loudness_model(out: Path, threshold: float) -> str:
    """An ANN whose answer is known: "loud" when the mean MFCC c0 over a segment exceeds ``threshold``."""
    module = build_model("ann", F.frames, F.n_mfcc, 2, hidden=16, dropout=0.0)
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
        d0, d1, d2 = module.dense
        c0 = torch.arange(F.frames) * F.n_mfcc  # flattened (frames, n_mfcc): coefficient 0 of every frame
        d0.weight[0, c0], d0.bias[0] = 1 / F.frames, -threshold  # relu(mean c0 - T)
        d0.weight[1, c0], d0.bias[1] = -1 / F.frames, threshold  # relu(T - mean c0)
        for layer in (d1, d2):
            layer.weight[0, 0] = layer.weight[1, 1] = 1.0
        module.out.weight[:] = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    save_model(str(out), module, name="ann", hparams={"hidden": 16, "dropout": 0.0}, features=F,
               genres=["loud", "quiet"], mean=np.zeros(F.n_mfcc), std=np.ones(F.n_mfcc), metrics={}, synthetic=False)
    return str(out)


def rows_by_name(table: pa.Table) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in table.to_pylist()}


def check_probabilities(row: dict, genres: list[str] = GENRES) -> None:
    p = np.array([row[f"p_{g}"] for g in genres])
    assert p.sum() == pytest.approx(1.0, abs=1e-4)
    assert row["top_genre"] == genres[int(p.argmax())]
    assert row["confidence"] == pytest.approx(p.max(), abs=1e-6)
    unsure = row["confidence"] < load_config("label").min_confidence  # the default threshold applies
    assert row["genre"] == ("unknown" if unsure else row["top_genre"])


# ------------------------------------------------------------------------------------------------ scan
def test_scan_streams_shards_skips_hidden_and_loops(tmp_path: Path) -> None:
    lib, outside = tmp_path / "lib", tmp_path / "outside"
    for i in range(6):
        write_tone_track(lib / f"artist{i}" / "album" / f"t{i}.wav", 0.2)
    write_tone_track(lib / "top.FLAC", 0.2, fmt="FLAC")  # extensions are case-insensitive
    (lib / "artist0" / "cover.jpg").write_bytes(b"jpeg")  # not audio by extension: ignored
    write_tone_track(lib / ".cache" / "hidden.wav", 0.2)  # hidden folder
    write_tone_track(lib / "artist1" / "._t1.wav", 0.2)  # hidden file (macOS resource fork)
    (lib / "artist1" / "loop").symlink_to(lib / "artist1")  # symlink loop inside the library
    (lib / "artist2" / "again").symlink_to(lib / "artist3")  # points back inside: walked once, not twice
    write_tone_track(outside / "sub" / "o.wav", 0.2)
    (outside / "sub" / "up").symlink_to(outside)  # a loop outside the library
    (lib / "artist4" / "linked").symlink_to(outside)  # followed: it is outside the library
    (lib / "artist5" / "gone.mp3").symlink_to(tmp_path / "missing.mp3")
    os.mkfifo(lib / "artist5" / "pipe.wav")  # decoding a FIFO would block forever

    shards = [list(walk_shard(str(lib), k, SCAN_SHARDS, EXTS)) for k in range(SCAN_SHARDS)]
    found = [f for s in shards for f in s]
    rel = sorted(str(Path(f.path).relative_to(lib)) for f in found)
    assert rel == sorted([f"artist{i}/album/t{i}.wav" for i in range(6)]
                         + ["top.FLAC", "artist4/linked/sub/o.wav", "artist5/gone.mp3", "artist5/pipe.wav"])
    assert len(rel) == len(set(rel))  # each file in exactly one shard
    assert sum(1 for s in shards if s) > 1  # the work really is spread over shards
    gone = next(f for f in found if f.path.endswith("gone.mp3"))
    assert "broken symbolic link" in gone.error
    assert "not a regular file" in next(f for f in found if f.path.endswith("pipe.wav")).error
    good = next(f for f in found if f.path.endswith("t0.wav"))
    st = os.stat(good.path)
    assert (good.size, good.mtime, good.error) == (st.st_size, st.st_mtime, None)


def test_a_library_of_one_top_folder_spreads_over_every_scan_shard(tmp_path: Path) -> None:
    """~/Music/<artist>/<album>/<file>: one top-level entry used to mean one scan task for the whole library.
    The split goes down to the first level with enough entries; every file is in exactly one shard, and the
    rows of earlier runs are assigned to the same shard as the walk assigns the file (load_done's view)."""
    from raygenre.label.scan import SPREAD_ENTRIES, _shard_of_path, spread_depth

    lib = tmp_path / "lib"
    names = [f"Music/artist{a:02d}/album{b}/t{a}{b}.wav" for a in range(12) for b in range(3)]
    for name in names:
        (lib / name).parent.mkdir(parents=True, exist_ok=True)
        (lib / name).write_bytes(b"RIFF")  # only the walk is tested here
    (lib / "Music" / "loose.wav").write_bytes(b"RIFF")  # a file above the split depth
    (lib / "Music" / "Empty").mkdir()
    depth = spread_depth(str(lib))
    assert depth == 2 and len(names) + 1 >= SPREAD_ENTRIES  # Music (1 entry) -> artists (13) -> albums (37)
    shards = [list(walk_shard(str(lib), k, SCAN_SHARDS, EXTS, depth)) for k in range(SCAN_SHARDS)]
    rel = sorted(str(Path(f.path).relative_to(lib)) for s in shards for f in s)
    assert rel == sorted([*names, "Music/loose.wav"])  # each exactly once
    assert sum(1 for s in shards if s) >= SCAN_SHARDS - 1  # spread over (nearly) every task
    prefix = str(lib) + "/"
    for k, found in enumerate(shards):
        assert all(_shard_of_path(f.path, prefix, SCAN_SHARDS, depth) == k for f in found)
    assert spread_depth(str(tmp_path / "lib" / "Music" / "artist00")) == 1  # 3 albums -> their 3 files (< 32)


def test_scan_skips_done_and_flags_changed(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    paths = [lib / "a" / f"{i}.wav" for i in range(3)]
    for p in paths:
        write_tone_track(p, 0.2)
    parts = tmp_path / "out.parquet.parts"
    parts.mkdir()
    st0, st1 = os.stat(paths[0]), os.stat(paths[1])
    pq.write_table(pa.table({"path": [str(paths[0]), str(paths[1])], "size": [st0.st_size, st1.st_size],
                             "mtime": [st0.st_mtime, st1.st_mtime - 5.0]}), parts / "part-000000-0000abcd.parquet")
    blocks = [b for k in range(SCAN_SHARDS) for b in scan_shard(str(lib), k, SCAN_SHARDS, EXTS, str(parts))]
    rows = {Path(r["path"]).name: r for b in blocks for r in b.to_pylist()}
    assert set(rows) == {"1.wav", "2.wav"}  # 0.wav is done (same size and mtime)
    assert rows["1.wav"]["replaces"] and not rows["2.wav"]["replaces"]  # 1.wav changed since


def test_pool_leaves_room_for_decoding() -> None:
    actors, actor_cpus, decoders, decode_cpus = _pool_sizes(cfg(), {"CPU": 2.0})
    assert (actors, actor_cpus, decoders) == (1, 0.5, 2)  # two decode tasks run beside the actor ...
    assert actors * actor_cpus + decoders * decode_cpus + 1.0 <= 2.0  # ... and a 1-CPU repartition task too
    actors, actor_cpus, decoders, decode_cpus = _pool_sizes(cfg(), {"CPU": 64.0})
    assert (actors, decoders) == (4, 62) and actors * actor_cpus + decoders * decode_cpus + 1.0 <= 64.0
    with pytest.raises(ValueError, match="no CPU for decoding"):
        _pool_sizes(cfg(actors=4), {"CPU": 2.0})


def test_mean_per_file() -> None:
    probs = np.array([[1, 0], [0, 1], [0.5, 0.5], [0.2, 0.8]], dtype=np.float32)
    out = mean_per_file(probs, np.array([2, 0, 1, 1]))
    np.testing.assert_allclose(out[[0, 2, 3]], [[0.5, 0.5], [0.5, 0.5], [0.2, 0.8]])
    assert np.isnan(out[1]).all()


# ------------------------------------------------------------- one CLI run: formats, long, short, bad files
FORMAT_SPECS = {  # name: (sample rate, channels, soundfile format, subtype); all 7 s long
    "a.wav": (44100, 2, "WAV", "PCM_16"), "b.flac": (48000, 2, "FLAC", "PCM_16"),
    "c.mp3": (44100, 2, "MP3", "MPEG_LAYER_III"), "d.ogg": (44100, 2, "OGG", "VORBIS"),
    "e.opus": (48000, 2, "OGG", "OPUS"), "f.au": (22050, 1, "AU", "PCM_16"), "g.aiff": (44100, 2, "AIFF", "PCM_16"),
}


def make_bad_files(lib: Path, scratch: Path) -> dict[str, str]:
    """One file of each kind of trouble; returns {name: a word its error must contain}."""
    lib.mkdir(parents=True, exist_ok=True)
    (lib / "empty.wav").write_bytes(b"")
    (lib / "corrupt.flac").write_bytes(np.random.default_rng(0).bytes(5000))
    (lib / "notes.mp3").write_text("this is a text file with an audio extension\n" * 50)
    write_tone_track(scratch / "whole.wav", 6.0)
    blob = (scratch / "whole.wav").read_bytes()
    (lib / "truncated.wav").write_bytes(blob[: len(blob) // 3])  # header promises 6 s, 2 s are there
    write_tone_track(lib / "tiny.au", 1.0, fmt="AU")
    (lib / "dangling.ogg").symlink_to(scratch / "nowhere.ogg")
    write_nan_track(lib / "nan.wav", 7.0)
    write_lying_header(lib / "one-hertz.wav")
    return {"empty.wav": "empty", "corrupt.flac": "corrupt", "notes.mp3": "not audio", "truncated.wav": "",
            "tiny.au": "too short", "dangling.ogg": "broken symbolic link", "nan.wav": "non-finite samples",
            "one-hertz.wav": "implausible sample rate"}


@dataclasses.dataclass
class MixedRun:
    exit_code: int
    output: str  # what the CLI printed
    rows: dict[str, dict]  # by file name
    bad: dict[str, str]  # bad file name -> a word its error must contain


@pytest.fixture(scope="module")
def mixed_run(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> MixedRun:
    """`raygenre label` (the CLI, in-process) once over every format, a 10-minute mix, short files and bad files."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is needed for .m4a")
    tmp = tmp_path_factory.mktemp("mixed")
    lib = tmp / "lib"
    for i, (name, (sr, ch, fmt, sub)) in enumerate(FORMAT_SPECS.items()):
        write_tone_track(lib / "formats" / name, 7.0, sr=sr, channels=ch, seed=i, fmt=fmt, subtype=sub)
    write_tone_track(tmp / "src.wav", 7.0, sr=44100, channels=2, seed=9)
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(tmp / "src.wav"), "-c:a", "aac", "-b:a", "128k",
                    str(lib / "formats" / "h.m4a")], check=True)
    write_tone_track(lib / "long" / "mix.flac", 600.0, sr=44100, channels=2, seed=4, fmt="FLAC")
    write_tone_track(lib / "long" / "exact.wav", 3.0, seed=5)
    write_tone_track(lib / "long" / "seven.wav", 7.0, seed=6)
    write_tone_track(lib / "long" / "short.wav", 2.9, seed=7)
    bad = make_bad_files(lib / "bad", tmp)
    model = random_model(tmp / "model")
    out = tmp / "labels.parquet"
    res = CliRunner().invoke(app, ["label", str(lib), "--model", model, "--out", str(out)])
    return MixedRun(res.exit_code, " ".join(res.output.split()), rows_by_name(pq.read_table(out)), bad)


def test_formats(mixed_run: MixedRun) -> None:
    for name in [*FORMAT_SPECS, "h.m4a"]:
        row = mixed_run.rows[name]
        assert row["error"] is None, (name, row["error"])
        assert row["segments_used"] == 2, name  # 7 s holds two full 3 s segments
        assert row["duration_s"] == pytest.approx(7.0, abs=0.1), name
        st = os.stat(row["path"])
        assert (row["size"], row["mtime"]) == (st.st_size, st.st_mtime)
        assert row["model"].startswith("cnn-")
        check_probabilities(row)
    assert len({r["model"] for r in mixed_run.rows.values()}) == 1


def test_long_and_short_files(mixed_run: MixedRun) -> None:
    rows = mixed_run.rows
    assert rows["mix.flac"]["segments_used"] == 10 and rows["mix.flac"]["duration_s"] == pytest.approx(600.0)
    check_probabilities(rows["mix.flac"])
    assert rows["exact.wav"]["segments_used"] == 1 and rows["seven.wav"]["segments_used"] == 2
    assert rows["short.wav"]["segments_used"] == 0 and "too short" in rows["short.wav"]["error"]
    assert rows["short.wav"]["genre"] is None and rows["short.wav"]["p_jazz"] is None
    assert rows["short.wav"]["duration_s"] == pytest.approx(2.9)  # error rows keep the header's duration


def test_bad_files_get_error_rows_and_exit_1(mixed_run: MixedRun) -> None:
    assert mixed_run.exit_code == 1, mixed_run.output
    n = len(mixed_run.rows)
    assert n == 8 + 4 + 8
    assert f"{n} rows, 9 with errors" in mixed_run.output  # the 8 bad files and short.wav
    assert "SYNTHETIC" in mixed_run.output and "Top genres" in mixed_run.output
    for name, word in mixed_run.bad.items():
        error = mixed_run.rows[name]["error"]
        assert isinstance(error, str) and len(error) > 5 and word in error, (name, error)
        assert mixed_run.rows[name]["genre"] is None and mixed_run.rows[name]["segments_used"] == 0


def test_labels_right_for_an_easy_case(ray_local: None, tmp_path: Path) -> None:
    """Loud and quiet files (40 dB apart) through a model that thresholds mean MFCC c0: labels are exact."""
    lib = tmp_path / "lib"
    loud = write_tone_track(lib / "loud0.wav", 4.0, seed=1)[:, 0]
    quiet = loud * 0.01
    sf.write(lib / "quiet0.wav", quiet, F.sample_rate)
    write_tone_track(lib / "more" / "loud1.flac", 4.0, seed=2, fmt="FLAC")
    data, _ = sf.read(lib / "more" / "loud1.flac", dtype="float32")
    sf.write(lib / "more" / "quiet1.ogg", data * 0.01, F.sample_rate, format="OGG", subtype="VORBIS")
    ex = MfccExtractor(F)
    c0 = [ex(y[: F.segment_samples].astype(np.float32))[0, :, 0].mean() for y in (loud, quiet)]
    model = loudness_model(tmp_path / "model", threshold=float(np.mean(c0)))

    result = label_library(str(lib), str(tmp_path / "l.parquet"), cfg(), model_dir=model, progress=False)
    rows = rows_by_name(pq.read_table(tmp_path / "l.parquet"))
    assert {n: r["genre"] for n, r in rows.items()} == {"loud0.wav": "loud", "quiet0.wav": "quiet",
                                                        "loud1.flac": "loud", "quiet1.ogg": "quiet"}
    for row in rows.values():
        assert row["confidence"] > 0.99
        check_probabilities(row, ["loud", "quiet"])
    assert dict(result.genres) == {"loud": 2, "quiet": 2} and not result.synthetic
    # the run's restart counter (label.watchdog) goes with it: left alive, each run in one process kept one more
    deadline = time.monotonic() + 20
    while (alive := list_actors(filters=[("class_name", "=", "ActorStarts"), ("state", "=", "ALIVE")])):
        assert time.monotonic() < deadline, alive
        time.sleep(0.5)



def test_non_finite_model_output_is_an_error_row_not_a_genre(tmp_path: Path) -> None:
    """A model that answers NaN for loud input: those files get an error row; quiet files still get a genre."""
    lib = tmp_path / "lib"
    loud = write_tone_track(lib / "loud.wav", 4.0, seed=1)[:, 0]
    sf.write(lib / "quiet.wav", loud * 0.01, F.sample_rate)
    ex = MfccExtractor(F)
    c0 = [ex(y[: F.segment_samples].astype(np.float32))[0, :, 0].mean() for y in (loud, loud * 0.01)]
    model = load_model(loudness_model(tmp_path / "model", threshold=float(np.mean(c0))))
    with torch.no_grad():  # finite weights, but loud input overflows float32 to inf logits -> NaN probabilities
        model.module.dense[1].weight[0, 0] = 3e38
    save_model(str(tmp_path / "damaged"), model.module, name="ann", hparams=model.hparams, features=F,
               genres=model.genres, mean=model.mean.numpy(), std=model.std.numpy(), metrics={}, synthetic=True)
    predictor = Predictor(str(tmp_path / "damaged"), "damaged")
    paths = [str(lib / "loud.wav"), str(lib / "quiet.wav")]
    batch = {"path": np.array(paths, dtype=object), "error": np.array([None, None], dtype=object),
             "size": np.array([1, 1]), "mtime": np.array([0.0, 0.0]), "replaces": np.array([False, False])}
    rows = {r["path"].rsplit("/", 1)[1]: r for r in predictor(decode_batch(batch, F, 10)).to_pylist()}
    assert rows["loud.wav"]["genre"] is None and rows["loud.wav"]["p_loud"] is None
    assert "non-finite probabilities" in rows["loud.wav"]["error"]
    assert rows["quiet.wav"]["genre"] == "quiet" and rows["quiet.wav"]["error"] is None


# ---------------------------------------------------------------------------------------- long / short
def test_long_file_windows_spread_without_reading_it_all(tmp_path: Path) -> None:
    """A 10-minute FLAC: 10 windows spread across it, each equal to the MFCC of that stretch of the file."""
    path = tmp_path / "mix.flac"
    write_tone_track(path, 600.0, seed=3, fmt="FLAC")
    starts = window_starts(600.0, F, 10)
    assert starts[0] < 60 and starts[-1] > 540 and np.allclose(np.diff(starts), 59.7, atol=1e-3)
    tracemalloc.start()
    feats, duration = decode_file(str(path), F, 10)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert duration == pytest.approx(600.0) and feats.shape == (10, F.frames, F.n_mfcc)
    assert peak < 20 * 2**20  # windows only: the whole file would be 53 MB as float32
    full, _ = sf.read(path, dtype="float32")
    ex = MfccExtractor(F)
    for k, s in enumerate(starts):
        i = int(round(s * F.sample_rate))
        np.testing.assert_allclose(feats[k], ex(full[i: i + F.segment_samples])[0], rtol=1e-4, atol=1e-3)



# ------------------------------------------------------------------------------------- permission denied
PERMISSION_CHECK = """
import json, sys
import numpy as np
from raygenre.config import load_config
from raygenre.label.predict import decode_batch
from raygenre.label.scan import SCAN_SHARDS, scan_shard
lib = sys.argv[1]
exts = frozenset(load_config("label").extensions)
blocks = [b for k in range(SCAN_SHARDS) for b in scan_shard(lib, k, SCAN_SHARDS, exts, None)]
rows = [r for b in blocks for r in b.to_pylist()]
batch = {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}
out = decode_batch(batch, load_config("featurize").features, 10)
print(json.dumps({p.rsplit("/", 1)[1]: [e, int(n)] for p, e, n in zip(out["path"], out["error"],
                                                                     out["segments_used"])}))
"""


def test_permission_denied_for_real(tmp_path: Path) -> None:
    """Unreadable file and folder, checked as an unprivileged user (root reads everything)."""
    lib = Path(tempfile.mkdtemp(prefix="raygenre-perm-", dir="/tmp"))
    try:
        lib.chmod(0o755)
        write_tone_track(lib / "ok.wav", 4.0)
        write_tone_track(lib / "secret.wav", 4.0)
        write_tone_track(lib / "locked" / "inside.wav", 4.0)
        (lib / "secret.wav").chmod(0o000)
        (lib / "locked").chmod(0o000)
        cmd = [sys.executable, "-c", PERMISSION_CHECK, str(lib)]
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                pytest.skip("running as root without setpriv: cannot drop privileges")
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        env = {**os.environ, "HOME": "/tmp"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/tmp", timeout=120)
        assert proc.returncode == 0, proc.stderr
        got = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        (lib / "locked").chmod(0o755)
        shutil.rmtree(lib)
    assert got["ok.wav"] == [None, 1]
    assert got["secret.wav"][0].startswith("permission denied")
    assert "cannot list this folder" in got["locked"][0] and "ermission denied" in got["locked"][0]


# ----------------------------------------------------------------------------------------------- resume
def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) from /proc, or None when the process is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[19])


def _descendants(pid: int) -> dict[int, int]:
    """{pid: start time} of every process below ``pid`` (Ray's GCS, raylet, workers...), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _proc_stat(int(entry.name))) is not None:
            children.setdefault(st[0], []).append(int(entry.name))
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if (st := _proc_stat(child)) is not None:
                found[child] = st[1]
                todo.append(child)
    return found


def _kill_tree(proc: subprocess.Popen, family: dict[int, int]) -> None:
    """SIGKILL the run's process group, then any descendant that left the group (same pid *and* start time,
    so never a recycled pid)."""
    family.update(_descendants(proc.pid))  # the group is stopped (SIGSTOP) or gone: nothing new can start
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    for pid, started in family.items():
        st = _proc_stat(pid)
        if st is not None and st[1] == started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_resume_after_kill_labels_every_file_exactly_once(ray_local: None, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    names = [f"d{i % 4}/t{i:02d}.wav" for i in range(80)]
    for i, name in enumerate(names):
        write_tone_track(lib / name, 3.5, seed=i)
    model = random_model(tmp_path / "model")
    out = tmp_path / "labels.parquet"
    config = tmp_path / "small-parts.yaml"
    config.write_text("files_per_part: 2\nbatch_size: 2\n")
    cmd = [sys.executable, "-m", "raygenre.cli", "label", str(lib), "--model", model, "--out", str(out),
           "--config", str(config)]
    with open(tmp_path / "run.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    parts_dir = Path(parts_dir_of(str(out)))
    family: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 240
        # Parts come in bursts once the predictor is warm (a CI run wrote all of them between seeing the first
        # and the kill), so the run is frozen (SIGSTOP: the driver is the only writer of parts) the moment the
        # first one is seen, and only then is /proc walked and the tree killed.
        while not list(parts_dir.glob("part-*.parquet")):
            family.update(_descendants(proc.pid))  # also catches processes that leave the group later
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            assert time.monotonic() < deadline, "no part appeared"
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGSTOP)
    finally:
        _kill_tree(proc, family)
    assert not out.exists(), "the run finished before it was killed; the test needs a slower run"
    before = pa.concat_tables([pq.read_table(p) for p in list_parts(str(parts_dir))])  # whole parts only
    assert 0 < before.num_rows < len(names), before.num_rows

    result = label_library(str(lib), str(out), cfg(files_per_part=8), model_dir=model, progress=False)
    paths = pq.read_table(out).column("path").to_pylist()
    assert sorted(paths) == sorted(str(lib / n) for n in names)  # every file, exactly once
    assert (result.files, result.new, result.resumed) == (80, 80 - before.num_rows, before.num_rows)
    assert not [p for p in parts_dir.iterdir() if ".tmp-" in p.name]

    changed = lib / names[0]
    os.utime(changed, (time.time(), time.time() + 100))
    again = label_library(str(lib), str(out), cfg(), model_dir=model, progress=False)
    table = pq.read_table(out)
    assert (again.new, again.files, table.num_rows) == (1, 80, 80)  # only the changed file was labelled again
    row = next(r for r in table.to_pylist() if r["path"] == str(changed))
    assert row["mtime"] == os.stat(changed).st_mtime  # and its new row replaced the old one


def test_exactly_one_row_per_file_through_changes_deletions_and_broken_parts(ray_local: None,
                                                                           tmp_path: Path) -> None:
    """A sequence of resumed runs: a changed file, a run with no change, a deleted file, broken parts, and
    file names that are not UTF-8 (at the top level and deeper). After each, one row per file that exists."""
    lib = tmp_path / "lib"
    names = [f"d{i % 3}/t{i}.wav" for i in range(6)]
    for i, name in enumerate(names):
        write_tone_track(lib / name, 3.5, seed=i)
    for rel in (b"caf\xe9.wav", b"d1/na\xefve.wav"):  # Latin-1 names: not valid UTF-8
        write_tone_track(tmp_path / "tmp.wav", 3.5)
        os.rename(os.fsencode(tmp_path / "tmp.wav"), os.fsencode(lib) + b"/" + rel)
    model = random_model(tmp_path / "model")
    out = tmp_path / "labels.parquet"

    def run() -> tuple[LabelResult, list[dict]]:
        result = label_library(str(lib), str(out), cfg(files_per_part=2, batch_size=2), model_dir=model,
                               progress=False)
        rows = pq.read_table(out).to_pylist()
        paths = [r["path"] for r in rows]
        assert len(paths) == len(set(paths)), sorted(paths)  # never a path twice
        return result, rows

    first, rows = run()
    assert (first.files, first.new, first.errors) == (8, 8, 2)
    bad_names = sorted(r["path"] for r in rows if r["error"] and "not valid UTF-8" in r["error"])
    assert bad_names == [f"non-utf8:{lib}/caf\\xe9.wav", f"non-utf8:{lib}/d1/na\\xefve.wav"]

    changed = lib / names[0]
    os.utime(changed, (time.time(), time.time() + 100))
    second, _ = run()
    assert (second.new, second.files) == (1, 8)  # the changed file only: the bad names are not emitted again
    third, rows = run()  # nothing changed: the changed file's old row must not come back
    assert (third.new, third.files) == (0, 8)
    assert next(r for r in rows if r["path"] == str(changed))["mtime"] == os.stat(changed).st_mtime

    (lib / names[1]).unlink()
    fourth, rows = run()
    assert (fourth.new, fourth.files) == (0, 7) and str(lib / names[1]) not in {r["path"] for r in rows}
    kept = label_library(str(lib), str(out), cfg(), model_dir=model, keep_deleted=True, progress=False)
    assert (kept.new, kept.files) == (0, 8) and str(lib / names[1]) in pq.read_table(out).column("path").to_pylist()

    parts = list_parts(parts_dir_of(str(out)))
    Path(parts[0]).write_bytes(b"")  # zero bytes (power loss before the data reached the disk)
    blob = Path(parts[1]).read_bytes()
    Path(parts[1]).write_bytes(blob[: len(blob) // 2])  # cut short
    fifth, rows = run()
    assert sorted(fifth.set_aside) == sorted(Path(p).name for p in parts[:2])
    assert (Path(parts_dir_of(str(out))) / "broken" / Path(parts[0]).name).exists()  # kept, not deleted
    assert fifth.files == 7 and fifth.new >= 1  # their files were labelled again
    assert {r["path"] for r in rows} == {*(str(lib / n) for n in names if n != names[1]), *bad_names}


def test_resume_ignores_links_and_strays_rebuilds_a_lost_run_file_and_sets_aside_other_models(
        ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue #19 through a real run: a link named like a part, stray files and a part of another model in
    OUT.parts, then a deleted run.json; each rerun keeps exactly one row per file of this model, touching none."""
    lib = tmp_path / "lib"
    for i in range(3):
        write_tone_track(lib / f"t{i}.wav", 3.5, seed=i)
    model = random_model(tmp_path / "model")
    out = tmp_path / "labels.parquet"
    first = label_library(str(lib), str(out), cfg(files_per_part=2), model_dir=model, progress=False)
    assert (first.files, first.new) == (3, 3)
    parts = Path(parts_dir_of(str(out)))
    victim = tmp_path / "thesis.docx"
    victim.write_bytes(b"PK\x03\x04 three years of work")
    (parts / "part-999999-deadbeef.parquet").symlink_to(victim)
    (parts / "notes.txt").write_text("mine\n")
    (parts / "part-x.parquet").write_bytes(b"PAR1")
    foreign = pq.read_table(list_parts(str(parts))[0]).to_pylist()
    for r in foreign:
        r["model"], r["genre"] = "another-model", "jazz"
    pq.write_table(pa.Table.from_pylist(foreign, schema=output_schema(GENRES)), parts / "part-000500-0000beef.parquet")
    capsys.readouterr()

    again = label_library(str(lib), str(out), cfg(), model_dir=model, progress=False)
    err = capsys.readouterr().err
    table = pq.read_table(out)
    assert sorted(table.column("path").to_pylist()) == sorted(str(lib / f"t{i}.wav") for i in range(3))
    assert set(table.column("model").to_pylist()) == {first.model}  # the other model's rows never merged
    assert (again.files, again.new) == (3, 0)  # run.json rebuilt from the agreeing parts: nothing relabelled
    for word in ("part-999999-deadbeef.parquet is a symbolic link", "notes.txt", "part-x.parquet",
                 "part-000500-0000beef.parquet: made with model another-model: set aside in other-runs/"):
        assert word in err, (word, err)
    assert (parts / "other-runs" / "part-000500-0000beef.parquet").exists()

    (parts / "run.json").unlink()  # lost: the parts left all agree with this run, so it is rebuilt
    third = label_library(str(lib), str(out), cfg(), model_dir=model, progress=False)
    assert "run.json is missing: rebuilt from the" in capsys.readouterr().err
    assert (third.files, third.new) == (3, 0) and pq.read_table(out).num_rows == 3
    assert victim.read_bytes() == b"PK\x03\x04 three years of work"
    assert (parts / "part-999999-deadbeef.parquet").is_symlink() and (parts / "notes.txt").read_text() == "mine\n"


# -------------------------------------------------------------------------------------- output formats
def test_output_formats_hold_the_same_rows(ray_local: None, tmp_path: Path) -> None:
    """Parquet from a run; CSV and JSON Lines from the same parts (the run's last step, for each format)."""
    lib = tmp_path / "lib"
    for i in range(3):
        write_tone_track(lib / f"s{i}.wav", 3.5 + i, seed=i)
    (lib / "bad.wav").write_bytes(b"RIFF nonsense")
    model = random_model(tmp_path / "model")
    out = tmp_path / "labels.parquet"
    result = label_library(str(lib), str(out), cfg(files_per_part=2), model_dir=model, progress=False)
    parts = parts_dir_of(str(out))
    assert [pq.read_metadata(p).num_rows for p in list_parts(parts)] == [2, 2]  # files_per_part rows per part
    assert (result.files, result.errors) == (4, 1)
    schema = output_schema(GENRES)
    for fmt in ("csv", "jsonl"):
        tally = consolidate(parts, str(tmp_path / f"labels.{fmt}"), fmt, schema,
                            min_confidence=cfg().min_confidence)  # what the run applied to its Parquet output
        assert (tally.files, tally.errors) == (4, 1)
    tables = {fmt: read_labels(str(tmp_path / f"labels.{fmt}")).sort_by("path") for fmt in ("parquet", "csv", "jsonl")}
    cols = ["path", "genre", "top_genre", "confidence", *[f"p_{g}" for g in GENRES], "duration_s", "segments_used",
            "error", "model", "size", "mtime"]
    first = (tmp_path / "labels.jsonl").read_text().splitlines()[0]
    assert list(json.loads(first)) == cols
    ref = tables["parquet"].to_pylist()
    for fmt, table in tables.items():
        assert table.column_names == cols, fmt
        for a, b in zip(ref, table.to_pylist(), strict=True):
            for k in cols:
                if isinstance(a[k], float):
                    assert b[k] == pytest.approx(a[k], rel=1e-6), (fmt, k)
                else:
                    assert b[k] == a[k], (fmt, k)
    assert [format_of(f"x.{e}") for e in ("parquet", "csv", "jsonl", "json", "txt")] == [
        "parquet", "csv", "jsonl", "jsonl", None]

    other = random_model(tmp_path / "other", seed=1)  # resuming with another model is refused, before any work
    with pytest.raises(ResumeMismatchError, match="--no-resume"):
        label_library(str(lib), str(out), cfg(), model_dir=other, progress=False)


# --------------------------------------------------------------------------------------------- no model
def test_no_model_says_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYGENRE_HOME", str(tmp_path / "empty-workspace"))
    write_tone_track(tmp_path / "lib" / "a.wav", 3.5)
    res = CliRunner().invoke(app, ["label", str(tmp_path / "lib"), "--out", str(tmp_path / "l.parquet")])
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "no model" in text and "raygenre train --model cnn" in text and "raygenre tune" in text
    with pytest.raises(NoModelError):
        label_library(str(tmp_path / "lib"), str(tmp_path / "l.parquet"), cfg(), model_dir=str(tmp_path / "nope"))
