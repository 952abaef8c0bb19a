"""``raygenre.data.decoder``: decoding in a child process, where a hang or a crash costs one file and nothing else."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_nan_track, write_tone_track

from raygenre.data import decoder
from raygenre.data.audio import AudioError, info, load

SR = 22050


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): it has ended, its parent has not reaped it yet
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_child_decodes_exactly_what_the_task_would(tmp_path: Path) -> None:
    write_tone_track(tmp_path / "a.flac", 8.0, sr=44100, channels=2, fmt="FLAC")
    dec = decoder.Decoder(30.0)
    try:
        y = dec(load, str(tmp_path / "a.flac"), SR, 1.0, 3.0, deadline=time.monotonic() + 30)
        np.testing.assert_array_equal(y, load(tmp_path / "a.flac", SR, 1.0, 3.0))
        assert dec(info, str(tmp_path / "a.flac"), deadline=time.monotonic() + 30).sample_rate == 44100
        # an AudioError raised in the child arrives as itself, with its reason
        write_nan_track(tmp_path / "nan.wav", 2.0)
        with pytest.raises(AudioError, match="non-finite samples"):
            dec(load, str(tmp_path / "nan.wav"), SR, deadline=time.monotonic() + 30)
        assert dec.proc is not None and dec.proc.poll() is None  # one child, still serving
    finally:
        dec.kill()


def test_a_hung_decoder_costs_one_file_and_its_child_dies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(decoder.FAULTS_ENV, "hang=HANG,crash=CRASH")
    for name in ("ok.wav", "x-HANG.wav", "x-CRASH.wav"):
        write_tone_track(tmp_path / name, 4.0)
    dec = decoder.Decoder(2.0, "label.decode_timeout_s")
    try:
        first = dec(load, str(tmp_path / "ok.wav"), SR, deadline=time.monotonic() + 30)
        hung_child = dec.proc.pid  # type: ignore[union-attr]
        t0 = time.monotonic()
        with pytest.raises(AudioError, match=r"longer than 2 s \(label.decode_timeout_s\)"):
            dec(load, str(tmp_path / "x-HANG.wav"), SR, deadline=time.monotonic() + 2.0)
        assert time.monotonic() - t0 < 10
        assert not _alive(hung_child)  # killed with its process group, not left sleeping
        with pytest.raises(AudioError, match="decoder crashed on this file .killed by SIGSEGV"):
            dec(load, str(tmp_path / "x-CRASH.wav"), SR, deadline=time.monotonic() + 30)
        # the next file gets a fresh child and the same answer as before
        again = dec(load, str(tmp_path / "ok.wav"), SR, deadline=time.monotonic() + 30)
        np.testing.assert_array_equal(again, first)
    finally:
        dec.kill()


def test_zero_timeout_decodes_in_process(tmp_path: Path) -> None:
    write_tone_track(tmp_path / "a.wav", 4.0)
    decoder.decoder.cache_clear()
    y = decoder.run(load, str(tmp_path / "a.wav"), SR, timeout_s=0)
    assert y.size == 4 * SR and decoder.decoder.cache_info().currsize == 0  # no child was started
