"""``raygenre.data.audio``: decoding windows of real files, and the files that decode but must not pass as audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import write_lying_header, write_nan_track, write_tone_track

from raygenre.data.audio import AudioError, info, load, load_windows

SR = 22050


def test_windows_are_the_stretches_of_the_file(tmp_path: Path) -> None:
    data = write_tone_track(tmp_path / "a.flac", 10.0, sr=44100, channels=2, fmt="FLAC")
    hdr = info(tmp_path / "a.flac")
    assert (hdr.sample_rate, hdr.channels, hdr.frames, hdr.seekable) == (44100, 2, 441000, True)
    first, late, past = load_windows(tmp_path / "a.flac", 44100, [0.0, 9.0, 12.0], 3.0)
    np.testing.assert_allclose(first, data[: 3 * 44100].mean(axis=1), atol=1e-4)
    assert late.size == 44100 and past.size == 0  # past the end: shorter, then empty
    assert load(tmp_path / "a.flac", SR, duration_s=3.0).size == 3 * SR  # resampled to 22.05 kHz


@pytest.mark.parametrize(("make", "words"), [
    (lambda p: write_nan_track(p, 4.0), "non-finite samples"),
    (write_lying_header, "implausible sample rate 1 Hz"),
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_text("not audio at all\n" * 20), "not audio"),
])
def test_files_that_must_not_pass_as_audio(tmp_path: Path, make, words: str) -> None:
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError, match=words):
        load(path, SR)


def test_inf_samples_and_a_rate_above_any_converter(tmp_path: Path) -> None:
    y = np.zeros(SR, dtype=np.float32)
    y[100] = np.inf
    sf.write(tmp_path / "inf.wav", y, SR, subtype="FLOAT")
    with pytest.raises(AudioError, match="1 non-finite samples"):
        load(tmp_path / "inf.wav", SR)
    sf.write(tmp_path / "fast.wav", np.zeros(1000, dtype=np.float32), 2_000_000, subtype="PCM_16")
    with pytest.raises(AudioError, match="implausible sample rate 2000000 Hz"):
        info(tmp_path / "fast.wav")
    with pytest.raises(AudioError, match="file not found"):
        info(tmp_path / "missing.wav")
