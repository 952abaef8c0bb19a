"""Featurization: discovery of every layout, labels, segmenting, MFCC parity, splits, rejects, atomic output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import librosa
import numpy as np
import pytest
from conftest import REPO, shared_dir, write_lying_header, write_nan_track, write_tone_track

from raygenre.config import FeaturizeConfig, load_config
from raygenre.data.featurize import featurize, tracks_per_task
from raygenre.data.gtzan import DatasetError, Track, assign_splits, discover
from raygenre.data.table import FeatureMismatchError, check_features, read_manifest, read_mfcc_table, table_path

FEATURES = load_config(FeaturizeConfig).features


def small_cfg(**split):
    """Two 3 s segments per track keeps tests fast; the split override is merged in."""
    return load_config(FeaturizeConfig, overrides={"segments": 2, "split": split or None})


def make_dataset(root: Path, genres=("rock", "blues", "jazz"), per_genre=4, seconds=6.2, ext="wav",
                 layout="genres_original") -> Path:
    base = root / layout if layout else root
    for gi, g in enumerate(genres):
        for i in range(per_genre):
            fmt = "AU" if ext == "au" else None
            write_tone_track(base / g / f"{g}.{i:05d}.{ext}", seconds, seed=gi * 100 + i, fmt=fmt)
    return root


# ------------------------------------------------------------------------------------------------ discovery
@pytest.mark.parametrize("layout,ext", [("genres_original", "wav"), ("genres", "au"), ("", "wav"),
                                        ("Data/genres_original", "wav")])
def test_discover_layouts(tmp_path: Path, layout: str, ext: str) -> None:
    make_dataset(tmp_path, per_genre=2, seconds=0.5, ext=ext, layout=layout)
    (tmp_path / (layout or ".") / "rock" / "notes.txt").write_text("not audio, ignored by extension")
    hidden = tmp_path / (layout or ".") / "rock" / ".hidden"
    hidden.mkdir()
    write_tone_track(hidden / "x.wav", 0.5)
    tracks, genres = discover(tmp_path)
    assert genres == ["blues", "jazz", "rock"]  # sorted names, never filesystem order
    assert len(tracks) == 6
    prefix = f"{layout}/" if layout else ""
    assert tracks[0].track_id == f"{prefix}blues/blues.00000"
    assert all(Path(t.path).suffix == f".{ext}" for t in tracks)


def test_discover_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a folder"):
        discover(tmp_path / "missing")
    with pytest.raises(DatasetError, match="local folder or a shared mount"):
        discover("s3://bucket/gtzan")
    (tmp_path / "rock").mkdir()
    with pytest.raises(DatasetError, match="No audio files"):
        discover(tmp_path)


# ----------------------------------------------------------------------------------------------- segmenting
def test_tracks_per_task() -> None:
    assert tracks_per_task(1000, 64, 2.0) == 64  # GTZAN on 2 CPUs: 16 tasks, the most per task
    assert tracks_per_task(1000, 64, 64.0) == 4  # a big cluster: 250 tasks, about 4 per CPU
    assert tracks_per_task(40, 64, 2.0) == 5
    assert tracks_per_task(1, 64, 2.0) == 1 and tracks_per_task(0, 64, 0.5) == 1


# (segmenting, window placement and MFCC parity: tests/test_mfcc.py)


def test_stratified_split_is_per_track_and_seeded() -> None:
    tracks = [Track(path=f"/x/{g}{i}", track_id=f"{g}/{g}.{i:05d}", genre=g) for g in "abc" for i in range(20)]
    cfg = load_config(FeaturizeConfig).split
    split_of, excluded = assign_splits(tracks, cfg)
    assert excluded == 0 and set(split_of) == {t.track_id for t in tracks}
    for g in "abc":
        got = [split_of[t.track_id] for t in tracks if t.genre == g]
        assert (got.count("train"), got.count("val"), got.count("test")) == (14, 3, 3)
    assert assign_splits(tracks, cfg)[0] == split_of
    other = load_config(FeaturizeConfig, overrides={"split": {"seed": 7}}).split
    assert assign_splits(tracks, other)[0] != split_of


def test_split_lists_use_public_gtzan_lists(tmp_path: Path) -> None:
    lists = shared_dir() / "gtzan"
    assert (lists / "train_filtered.txt").is_file(), f"missing {lists}; set RAYGENRE_SHARED_DIR"
    tracks = [Track(path="", track_id=f"genres/{g}/{g}.{i:05d}", genre=g) for g in ("blues", "jazz")
              for i in range(100)]
    cfg = load_config(FeaturizeConfig, overrides={"split": {"method": "lists", "lists_dir": str(lists)}}).split
    split_of, excluded = assign_splits(tracks, cfg)
    listed = {}
    for split, name in (("train", "train_filtered.txt"), ("val", "valid_filtered.txt"), ("test", "test_filtered.txt")):
        for line in (lists / name).read_text().split():
            if line.split("/")[0] in ("blues", "jazz"):
                listed[line.rsplit(".", 1)[0]] = split
    assert {f"{k.split('/')[1]}/{k.split('/')[2]}": v for k, v in split_of.items()} == listed
    assert excluded == 200 - len(listed) > 0


# ------------------------------------------------------------------------------------------ the whole table
@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> tuple[Path, Path, dict]:
    root = make_dataset(tmp_path_factory.mktemp("ds"), per_genre=5)
    g = root / "genres_original"
    (g / "jazz" / "jazz.00054.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(400))  # corrupt
    (g / "rock" / "rock.00090.wav").write_bytes(b"")  # empty
    write_tone_track(g / "blues" / "blues.00091.wav", 1.0)  # too short for one segment
    (g / "blues" / "blues.00092.flac").write_text("this is a text file with an audio extension\n")
    full = (g / "rock" / "rock.00000.wav").read_bytes()
    (g / "rock" / "rock.00093.wav").write_bytes(full[: len(full) // 20])  # truncated: header says 6 s
    write_tone_track(g / "jazz" / "jazz.00094.wav", 4.0)  # one full segment + one dropped
    write_nan_track(g / "jazz" / "jazz.00095.wav", 6.2)  # decodes, but NaN samples would poison the statistics
    write_lying_header(g / "rock" / "rock.00096.wav")  # 100 samples "at 1 Hz"
    out = tmp_path_factory.mktemp("out") / "features"
    result = featurize(str(root), str(out), small_cfg())
    return root, out, result.manifest


def test_table_rows_labels_and_manifest(table) -> None:
    root, out, manifest = table
    # features.json (written last) names the one committed attempt that holds the table
    assert sorted(os.listdir(out)) == ["attempts", "features.json"]
    assert read_manifest(str(out)) == json.loads((out / "features.json").read_text())
    assert os.listdir(out / "attempts") == [manifest["attempt"].split("/")[1]]
    assert table_path(str(out)) == str(out / manifest["attempt"] / "segments")
    assert manifest["genres"] == ["blues", "jazz", "rock"] and manifest["frames"] == 130
    assert manifest["features"] == {"sample_rate": 22050, "n_mfcc": 13, "n_fft": 2048, "hop_length": 512,
                                    "n_mels": 128, "segment_seconds": 3.0}
    meta, mfcc = read_mfcc_table(str(out))  # plain pyarrow, no Ray
    assert mfcc.shape == (meta.num_rows, 130, 13) and mfcc.dtype == np.float32
    rows = meta.to_pylist()
    for r in rows:
        assert manifest["genres"][r["label"]] == r["genre"]
    # 15 good 6.2 s tracks x 2 segments + the 4 s track's one segment (its second is dropped)
    assert manifest["counts"]["segments_total"] == len(rows) == 31
    assert manifest["counts"]["dropped_segments"] == 1
    assert manifest["counts"]["tracks_total"] == 16
    assert sum(sum(v.values()) for v in manifest["counts"]["segments"].values()) == 31
    # the stored features are the librosa reference for the right slice of the right file
    r0 = rows[3]
    y, _ = librosa.load(root / f"{r0['track_id']}.wav", sr=22050)
    s = r0["segment"] * 66150
    ref = librosa.feature.mfcc(y=y[s: s + 66150], sr=22050, n_mfcc=13, n_fft=2048, hop_length=512).T
    assert np.abs(mfcc[3] - ref).max() / np.abs(ref).max() < 1e-4


def test_written_blocks_mix_genres(table) -> None:
    """The tracks are shuffled (seeded) before decoding: in discovery order each block held one genre."""
    import pyarrow.parquet as pq

    files = sorted(Path(table_path(str(table[1]))).glob("*.parquet"))
    mixed = [f for f in files if len(set(pq.read_table(f, columns=["genre"]).column("genre").to_pylist())) > 1]
    assert len(files) >= 4 and len(mixed) >= len(files) // 2, (len(files), len(mixed))


def test_summary_is_one_row_per_track() -> None:
    """What the driver gathers for the manifest: per track, never per segment."""
    import pyarrow as pa

    from raygenre.data.featurize import summarize_batch

    batch = pa.table({"track_id": ["a", "a", "a", "b", "c"], "genre": ["rock"] * 3 + ["jazz", "jazz"],
                      "split": ["train"] * 3 + ["val", "test"], "error": [None, None, None, "too short", None],
                      "dropped": pa.array([1, 0, 0, 0, 0], type=pa.int32())})
    out = summarize_batch(batch).to_pydict()
    assert out["track_id"] == ["a", "b", "c"] and out["segments"] == [3, 0, 1]
    assert out["dropped"] == [1, 0, 0] and out["error"] == [None, "too short", None]
    # a block with no reject: Arrow's all-null column (numpy would have made it NaN, counted as a reject)
    clean = summarize_batch(batch.slice(0, 3).set_column(3, "error", pa.nulls(3))).to_pydict()
    assert clean["segments"] == [3] and clean["error"] == [None]
    assert out["genre"] == ["rock", "jazz", "jazz"] and out["split"] == ["train", "val", "test"]


def test_no_track_in_two_splits(table) -> None:
    meta, _ = read_mfcc_table(str(table[1]))
    splits_of: dict[str, set[str]] = {}
    for r in meta.to_pylist():
        splits_of.setdefault(r["track_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits_of.values())
    assert {s for v in splits_of.values() for s in v} == {"train", "val", "test"}


def test_rejects_are_recorded_with_reasons(table) -> None:
    manifest = table[2]
    reasons = {r["track_id"].rsplit("/", 1)[1]: r["reason"] for r in manifest["rejects"]}
    assert set(reasons) == {"jazz.00054", "rock.00090", "blues.00091", "blues.00092", "rock.00093", "jazz.00095",
                            "rock.00096"}
    assert "corrupt" in reasons["jazz.00054"]
    assert "empty" in reasons["rock.00090"]
    assert "too short" in reasons["blues.00091"] and "too short" in reasons["rock.00093"]
    assert "not audio" in reasons["blues.00092"]
    assert "non-finite samples" in reasons["jazz.00095"]
    assert "implausible sample rate 1 Hz" in reasons["rock.00096"]
    assert manifest["counts"]["rejected_tracks"] == 7
    _, mfcc = read_mfcc_table(str(table[1]))
    assert np.isfinite(mfcc).all()


def test_table_reads_with_ray_data(table, ray_local) -> None:
    import ray

    ds = ray.data.read_parquet(table_path(str(table[1])))
    batch = ds.take_batch(4, batch_format="numpy")
    assert batch["mfcc"].shape == (4, 130, 13) and batch["mfcc"].dtype == np.float32
    # and without Ray at all: plain pyarrow sees a list column whose field metadata carries the shape
    code = ("import json, sys, pyarrow.parquet as pq; t = pq.read_table(sys.argv[1]); "
            "f = t.schema.field('mfcc'); assert 'ray' not in sys.modules; "
            "print(json.dumps([t.num_rows, f.metadata[b'ARROW:extension:metadata'].decode()]))")
    out = subprocess.run([sys.executable, "-c", code, table_path(str(table[1]))], capture_output=True, text=True)
    rows, shape = json.loads(out.stdout)
    assert rows == table[2]["counts"]["segments_total"] and json.loads(shape) == [130, 13]


def test_rerun_is_skipped_and_mismatch_is_refused(table) -> None:
    root, out, manifest = table
    again = featurize(str(root), str(out), small_cfg())
    assert again.skipped and again.manifest == manifest
    with pytest.raises(FileExistsError, match="already holds a raygenre feature table.*--overwrite"):
        featurize(str(root), str(out), small_cfg(seed=5))  # other parameters: replacing needs overwrite
    assert read_manifest(str(out)) == manifest
    other = load_config(FeaturizeConfig, overrides={"features": {"n_mfcc": 20}}).features
    with pytest.raises(FeatureMismatchError, match="n_mfcc: table has 13, this model needs 20"):
        check_features(manifest, other)
    check_features(manifest, FEATURES)


def test_nothing_usable_is_an_error(tmp_path: Path, ray_local) -> None:
    (tmp_path / "rock").mkdir()
    (tmp_path / "rock" / "a.wav").write_bytes(b"")
    with pytest.raises(DatasetError, match="no usable audio"):
        featurize(str(tmp_path), str(tmp_path / "out"), small_cfg())
    assert not (tmp_path / "out").exists()


def test_file_uri_output(tmp_path: Path, ray_local) -> None:
    root = make_dataset(tmp_path / "ds", genres=("a", "b"), per_genre=3)
    out = f"file://{tmp_path}/uri-out"
    result = featurize(str(root), out, small_cfg())
    assert result.manifest["counts"]["segments_total"] == 12
    assert (tmp_path / "uri-out" / "features.json").is_file()
    assert read_mfcc_table(out)[1].shape == (12, 130, 13)


def test_interrupted_run_leaves_no_finished_table_and_rerun_completes(tmp_path: Path) -> None:
    """Kill a real `raygenre featurize` while it writes; nothing at OUT looks finished; a rerun completes."""
    root = make_dataset(tmp_path / "ds", per_genre=6)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "raygenre.cli", "featurize", str(root), "--out", str(out), "--segments", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if any(out.glob("attempts/*/segments/*.parquet")):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "featurize ended before it could be interrupted"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the process group we started: the driver and its local Ray
        proc.wait()
    assert not (out / "features.json").exists()
    with pytest.raises(FileNotFoundError, match="not a finished feature table"):
        read_mfcc_table(str(out))
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((out / "features.json").read_text())
    assert manifest["counts"]["segments_total"] == 36
    assert os.listdir(out / "attempts") == [manifest["attempt"].split("/")[1]]  # the killed attempt is gone
    assert sorted(os.listdir(out)) == ["attempts", "features.json"]  # and so is its lease
    assert sorted(os.listdir(tmp_path)) == ["ds", "out"]


def test_cli_featurize_help_and_run(tmp_path: Path) -> None:
    help_text = subprocess.run([sys.executable, "-m", "raygenre.cli", "featurize", "--help"],
                               capture_output=True, text=True, cwd=REPO).stdout
    for option in ("--out", "--segments", "--segment-seconds", "--split", "--split-lists", "--address"):
        assert option in help_text
    bad = subprocess.run([sys.executable, "-m", "raygenre.cli", "featurize", str(tmp_path / "nope"),
                          "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert bad.returncode == 2 and "is not a folder" in bad.stderr


def test_a_long_file_decodes_only_what_its_segments_need(tmp_path: Path) -> None:
    """A 5-minute 44.1 kHz stereo FLAC: featurize reads its first 30 s, not the whole file (memory bound)."""
    import tracemalloc

    from raygenre.data.featurize import featurize_batch

    path = tmp_path / "long.flac"
    write_tone_track(path, 300.0, sr=44100, channels=2, fmt="FLAC")
    params = small_cfg().features
    batch = {"path": np.array([str(path)], dtype=object), "track_id": np.array(["long"], dtype=object),
             "genre": np.array(["rock"], dtype=object), "label": np.array([0]),
             "split": np.array(["train"], dtype=object)}
    tracemalloc.start()
    out = featurize_batch(batch, params, 10)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert list(out["segment"]) == list(range(10)) and out["error"][0] is None
    assert peak < 40 * 2**20, peak  # the whole file would be 106 MB as float32 before downmixing


def test_a_track_that_hangs_or_crashes_its_decoder_is_rejected_alone(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """featurize decodes in the decoder child (raygenre.data.decoder): a hang costs one track, after the limit."""
    from raygenre.data import decoder
    from raygenre.data.featurize import featurize_batch

    names = ["ok-1", "x-HANG", "ok-2", "x-CRASH", "ok-3"]
    for i, name in enumerate(names):
        write_tone_track(tmp_path / f"{name}.wav", 6.2, seed=i)
    monkeypatch.setenv(decoder.FAULTS_ENV, "hang=HANG,crash=CRASH")
    decoder.decoder.cache_clear()  # a child started before would not know the faults
    batch = {"path": np.array([str(tmp_path / f"{n}.wav") for n in names], dtype=object),
             "track_id": np.array(names, dtype=object), "genre": np.array(["rock"] * 5, dtype=object),
             "label": np.zeros(5, dtype=np.int32), "split": np.array(["train"] * 5, dtype=object)}
    try:
        out = featurize_batch(batch, small_cfg().features, 2, timeout_s=3.0)
    finally:
        decoder.decoder(3.0, "featurize.decode_timeout_s").kill()
        decoder.decoder.cache_clear()
    errors = {t: e for t, e in zip(out["track_id"], out["error"], strict=True) if e is not None}
    assert "decoding took longer than 3 s (featurize.decode_timeout_s)" in errors.pop("x-HANG")
    assert "the decoder crashed on this file (killed by SIGSEGV)" in errors.pop("x-CRASH")
    assert errors == {}
    kept = [t for t, s in zip(out["track_id"], out["segment"], strict=True) if s >= 0]
    assert kept == ["ok-1", "ok-1", "ok-2", "ok-2", "ok-3", "ok-3"]  # the rest of the batch, every segment
