"""Finite samples whose MFCC is not: a float WAV of about 1e20 passes the sample check, but its power spectrum
overflows float32 and every MFCC value is NaN. featurize rejects such a track (no rows, a reason in the manifest,
finite train statistics); label gives the file an error row with the reason.

The per-file functions (decode + MFCC + check) are tested without Ray; one featurize and one label run on the
session's Ray check the whole path.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import write_tone_track

from raygenre.config import FeaturizeConfig, load_config
from raygenre.data.audio import AudioError, load
from raygenre.data.featurize import featurize, featurize_batch
from raygenre.data.gtzan import assign_splits, discover
from raygenre.data.mfcc import NON_FINITE_MFCC, cut_segments, extractor, mfcc_of_segments
from raygenre.data.splits import load_stats
from raygenre.data.table import read_mfcc_table, read_split_arrays
from raygenre.label.predict import decode_batch, decode_file

CFG = load_config(FeaturizeConfig, overrides={"segments": 2})
F = CFG.features
REASON = "audio gives non-finite MFCC (samples out of range?)"


def write_huge_track(path: Path, seconds: float, amplitude: float = 1e20, sr: int = 22050) -> None:
    """A float WAV whose samples are all finite but about ``amplitude`` (damaged or mis-scaled float data)."""
    y = (amplitude * np.random.default_rng(0).standard_normal(int(seconds * sr))).astype(np.float32)
    assert np.isfinite(y).all()
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, y, sr, subtype="FLOAT")


def test_the_samples_are_finite_but_the_mfcc_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.wav"
    write_huge_track(path, 6.2)
    y = load(path, F.sample_rate, 0.0, 6.1)  # the sample check lets it through: every sample is finite
    assert np.isfinite(y).all() and np.abs(y).max() > 1e19
    pieces, _, _ = cut_segments(y, F, 2)
    with pytest.raises(AudioError) as err:
        mfcc_of_segments(pieces, extractor(F))
    assert err.value.reason == NON_FINITE_MFCC == REASON
    # loud but representable audio still gives features (the check is on the output, not a loudness limit)
    loud = tmp_path / "loud.wav"
    write_huge_track(loud, 6.2, amplitude=1e15)
    feats = mfcc_of_segments(cut_segments(load(loud, F.sample_rate, 0.0, 6.1), F, 2)[0], extractor(F))
    assert feats.shape == (2, F.frames, F.n_mfcc) and np.isfinite(feats).all()


@pytest.mark.parametrize("timeout_s", [0.0, 60.0])  # in this process, and in the decoder child as runs do
def test_featurize_batch_rejects_the_track(tmp_path: Path, timeout_s: float) -> None:
    good, huge = tmp_path / "good.wav", tmp_path / "huge.wav"
    write_tone_track(good, 6.2)
    write_huge_track(huge, 6.2)
    batch = {"path": np.array([str(huge), str(good)], dtype=object),
             "track_id": np.array(["jazz/huge", "jazz/good"], dtype=object),
             "genre": np.array(["jazz", "jazz"], dtype=object), "label": np.array([0, 0]),
             "split": np.array(["train", "train"], dtype=object)}
    out = featurize_batch(batch, F, 2, timeout_s=timeout_s)
    assert list(out["track_id"]) == ["jazz/huge", "jazz/good", "jazz/good"]
    assert list(out["segment"]) == [-1, 0, 1]  # one placeholder (a reject) for the huge track
    assert list(out["error"]) == [REASON, None, None]
    assert np.isfinite(out["mfcc"]).all()


def test_label_decode_gives_an_error_row(tmp_path: Path) -> None:
    huge = tmp_path / "huge.wav"
    write_huge_track(huge, 7.0)
    with pytest.raises(AudioError) as err:
        decode_file(str(huge), F, 4, timeout_s=60.0)
    assert err.value.reason == REASON
    good = tmp_path / "good.wav"
    write_tone_track(good, 7.0)
    batch = {"path": np.array([str(huge), str(good)], dtype=object), "error": np.array([None, None], dtype=object)}
    out = decode_batch(batch, F, 4, timeout_s=60.0)
    assert list(out["error"]) == [REASON, None]
    assert out["duration_s"][0] == pytest.approx(7.0)  # the header's duration is still reported
    assert list(out["segments_used"]) == [0, 2] and not out["mfcc"][0].any()


# ------------------------------------------------------------------------------------------------ with Ray
def test_featurize_keeps_no_row_and_the_train_statistics_stay_finite(tmp_path: Path, ray_local: None) -> None:
    root = tmp_path / "ds"
    for gi, genre in enumerate(("blues", "jazz", "rock")):
        for i in range(4):
            write_tone_track(root / "genres_original" / genre / f"{genre}.{i:05d}.wav", 6.2, seed=gi * 10 + i)
    tracks, _ = discover(root)
    split_of, _ = assign_splits(tracks, CFG.split)
    victim = next(t for t in tracks if split_of.get(t.track_id) == "train")  # where it would poison the stats
    write_huge_track(Path(victim.path), 6.2)
    out = tmp_path / "features"
    result = featurize(str(root), str(out), CFG)
    assert result.manifest["rejects"] == [{"track_id": victim.track_id, "genre": victim.genre, "reason": REASON}]
    assert result.manifest["counts"]["rejected_tracks"] == 1
    meta, mfcc = read_mfcc_table(str(out))
    assert victim.track_id not in set(meta.column("track_id").to_pylist())
    assert meta.num_rows == 11 * 2 and np.isfinite(mfcc).all()
    x, _ = read_split_arrays(str(out), "train")
    mean, std = load_stats(x)
    assert np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()


def test_label_gives_the_file_an_error_row(tmp_path: Path, ray_local: None) -> None:
    from raygenre.label.parts import read_labels
    from raygenre.label.pipeline import label_library
    from raygenre.model.artifact import save_model
    from raygenre.model.networks import build_model

    lib = tmp_path / "lib"
    write_huge_track(lib / "huge.wav", 7.0)
    write_tone_track(lib / "good.wav", 7.0)
    torch.manual_seed(0)
    genres = ["blues", "jazz", "rock"]
    model = tmp_path / "model"
    save_model(str(model), build_model("cnn", F.frames, F.n_mfcc, len(genres)), name="cnn",
               hparams={"hidden": 64, "dropout": 0.3}, features=F, genres=genres,
               mean=np.r_[-250.0, 80.0, np.zeros(F.n_mfcc - 2)], std=np.full(F.n_mfcc, 40.0), metrics={},
               synthetic=True)
    out = tmp_path / "labels.parquet"
    label_library(str(lib), str(out), dataclasses.replace(load_config("label"), format="parquet"),
                  model_dir=str(model), progress=False)
    rows = {Path(r["path"]).name: r for r in read_labels(str(out)).to_pylist()}
    assert set(rows) == {"huge.wav", "good.wav"}
    huge = rows["huge.wav"]
    assert huge["error"] == REASON and huge["genre"] is None and huge["confidence"] is None
    assert huge["segments_used"] == 0 and huge["duration_s"] == pytest.approx(7.0)
    assert all(huge[f"p_{g}"] is None for g in genres)
    assert rows["good.wav"]["error"] is None and rows["good.wav"]["top_genre"] in genres
