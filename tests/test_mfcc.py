"""``raygenre.data.mfcc``: segmenting like the tutorial, window placement, and MFCC parity with librosa."""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
from conftest import write_tone_track

from raygenre.config import FeaturizeConfig, load_config
from raygenre.data.mfcc import MfccExtractor, cut_segments, extractor, mfcc_of_segments, window_starts

FEATURES = load_config(FeaturizeConfig).features


def test_cut_segments_drops_short_ones_like_the_tutorial() -> None:
    n = FEATURES.segment_samples
    y = np.zeros(int(n * 2.5), dtype=np.float32)
    pieces, index, dropped = cut_segments(y, FEATURES, 3)
    assert index == [0, 1] and dropped == 1 and all(p.size == n for p in pieces)
    # a slice a few samples short still yields the full 130 frames, so the tutorial keeps it
    y = np.zeros(3 * n - 100, dtype=np.float32)
    pieces, index, dropped = cut_segments(y, FEATURES, 3)
    assert index == [0, 1, 2] and dropped == 0 and pieces[-1].size == n - 100
    assert FEATURES.frames == 130 and FEATURES.segment_samples == 66150


def test_window_starts_spread_across_long_tracks() -> None:
    assert window_starts(2.0, FEATURES, 10) == []
    assert window_starts(7.0, FEATURES, 10) == [0.0, 3.0]
    starts = window_starts(3600.0, FEATURES, 10)
    assert len(starts) == 10 and starts[0] > 100 and starts[-1] + 3 <= 3600 and starts[-1] > 3000


def test_mfcc_parity_with_librosa(tmp_path: Path) -> None:
    """torchaudio MFCC == librosa.feature.mfcc (the tutorial's reference) on harmonic, noisy, enveloped audio."""
    rng = np.random.default_rng(1)
    signals = []
    for k in range(4):  # different loudness per signal: a shared top_db clamp would break this
        data = write_tone_track(tmp_path / f"t{k}.wav", 3.0, seed=k)[:, 0]
        signals.append(data * (10.0 ** -k) + 1e-3 * rng.standard_normal(data.size).astype(np.float32))
    batch = np.stack(signals).astype(np.float32)
    ours = MfccExtractor(FEATURES)(batch)
    assert ours.shape == (4, 130, 13)
    for y, got in zip(batch, ours, strict=True):
        ref = librosa.feature.mfcc(y=y, sr=22050, n_mfcc=13, n_fft=2048, hop_length=512).T
        rel = np.abs(got - ref).max() / np.abs(ref).max()
        assert rel < 1e-4, rel


def test_one_extractor_per_process_and_unequal_segments() -> None:
    """``extractor`` is cached per parameter set (Ray tasks reuse it); a shorter full-frame segment is computed
    alone, equal to its own MFCC (zero-padding it into the batch would change its spectrum)."""
    assert extractor(FEATURES) is extractor(FEATURES)
    rng = np.random.default_rng(0)
    n = FEATURES.segment_samples
    pieces = [rng.standard_normal(n).astype(np.float32), rng.standard_normal(n - 100).astype(np.float32)]
    out = mfcc_of_segments(pieces, extractor(FEATURES))
    assert out.shape == (2, 130, 13) and out.dtype == np.float32
    np.testing.assert_allclose(out[1], extractor(FEATURES)(pieces[1])[0], rtol=1e-5, atol=1e-4)
