"""Audio decoding: any file -> float32 mono at a target rate, reading only what is asked for.

``soundfile`` (libsndfile: WAV, AU, AIFF, FLAC, OGG/Vorbis, Opus, MP3) decodes first and seeks, so a
3-second window of an hour-long FLAC costs a 3-second read. What libsndfile cannot open (M4A/AAC, odd
WAV variants) falls back to librosa/audioread, which uses ffmpeg. Resampling uses soxr (librosa's default
``soxr_hq``), downmixing the channel mean (as ``librosa.to_mono``).

Every failure is an ``AudioError`` whose ``reason`` is a short sentence a user can act on. Two kinds of file
decode "fine" and would poison what comes after, so they are errors here too: a header whose sample rate is
outside any real recording's range (a 100-byte WAV claiming 1 Hz read as a 100-second track), and samples that
are not finite (a float WAV with NaN: one such segment made a whole model's statistics NaN).
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr


class AudioError(Exception):
    """A file that cannot be used as audio. ``reason`` says why, in words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says, before decoding."""

    sample_rate: int  # Hz
    channels: int
    frames: int  # samples per channel (may be approximate for MP3)
    seekable: bool  # True when windows can be read without decoding from the start

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


MIN_SAMPLE_RATE = 1000  # Hz; below this no music recording exists (telephone audio is 8000)
MAX_SAMPLE_RATE = 768_000  # Hz; the highest rate professional converters record at


def _check_rate(sample_rate: int) -> None:
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"implausible sample rate {sample_rate} Hz in the header (audio is recorded at "
                         f"{MIN_SAMPLE_RATE:,}-{MAX_SAMPLE_RATE:,} Hz): a damaged or wrong header")


def _check_finite(x: np.ndarray) -> None:
    if not np.isfinite(x).all():
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise AudioError(f"{bad} non-finite samples (NaN or infinity) in the decoded audio: damaged float data")


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise AudioError("file not found")
    if not os.access(path, os.R_OK):
        raise AudioError("permission denied: the file is not readable by this user")
    if os.path.getsize(path) == 0:
        raise AudioError("empty file (0 bytes)")


def _to_mono(x: np.ndarray) -> np.ndarray:
    """(frames, channels) or (frames,) -> (frames,) float32 channel mean."""
    return x.mean(axis=1, dtype=np.float32) if x.ndim == 2 else x.astype(np.float32, copy=False)


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a mono float32 signal with soxr HQ (librosa's default); identity when rates match."""
    if orig_sr == target_sr or y.size == 0:
        return y
    return soxr.resample(y, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def _fallback_info(path: str, sf_error: str) -> AudioInfo:
    import audioread  # librosa's decoder back end (ffmpeg / gstreamer)

    try:
        with audioread.audio_open(path) as f:
            sr, ch, dur = int(f.samplerate), int(f.channels), float(f.duration)
    except Exception as exc:  # noqa: BLE001 - audioread raises many unrelated types
        raise AudioError(_describe(exc, path, sf_error)) from exc
    if sr <= 0 or dur <= 0:
        raise AudioError(f"corrupt or not audio ({Path(path).suffix.lower()}): no audio stream found")
    _check_rate(sr)
    return AudioInfo(sample_rate=sr, channels=ch, frames=int(dur * sr), seekable=False)


NEEDS_FFMPEG = (".m4a", ".aac", ".mp4", ".wma")


def _describe(exc: Exception, path: str, sf_error: str = "") -> str:
    """One readable sentence for a decode failure (both decoders' view when both failed)."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    ext = Path(path).suffix.lower() or "file without extension"
    if isinstance(exc, PermissionError):
        return "permission denied: the file is not readable by this user"
    if ext in NEEDS_FFMPEG and shutil.which("ffmpeg") is None:
        return f"cannot decode {ext}: it needs ffmpeg, which is not installed (apt-get install ffmpeg)"
    if "NoBackendError" in type(exc).__name__:
        msg = "ffmpeg could not decode it either"
    detail = f"{sf_error}; {msg}" if sf_error else msg
    return f"corrupt or not audio ({ext}): {detail}"


def info(path: str | os.PathLike[str]) -> AudioInfo:
    """Read the header of ``path``. Raises ``AudioError`` for empty, unreadable, or non-audio files."""
    path = os.fspath(path)
    _check_file(path)
    try:
        i = sf.info(path)
        if i.frames <= 0 or i.samplerate <= 0:
            raise AudioError("no audio frames in the file (truncated or empty data chunk)")
        _check_rate(int(i.samplerate))
        return AudioInfo(sample_rate=int(i.samplerate), channels=int(i.channels), frames=int(i.frames),
                         seekable=True)
    except sf.LibsndfileError as exc:
        return _fallback_info(path, f"libsndfile: {exc.error_string}")
    except PermissionError as exc:
        raise AudioError(_describe(exc, path)) from exc


def load(path: str | os.PathLike[str], sr: int, offset_s: float = 0.0,
         duration_s: float | None = None) -> np.ndarray:
    """Decode ``[offset_s, offset_s + duration_s)`` of ``path`` as float32 mono at ``sr`` Hz, shape (samples,).

    ``duration_s=None`` reads to the end. Raises ``AudioError`` when the file cannot be decoded.
    """
    return load_windows(path, sr, [offset_s], duration_s)[0]


def load_windows(path: str | os.PathLike[str], sr: int, starts_s: list[float],
                 duration_s: float | None, header: AudioInfo | None = None) -> list[np.ndarray]:
    """Decode several windows of one file, each float32 mono at ``sr`` Hz: only the windows are read.

    Windows that run past the end of the file come back shorter (possibly empty); the caller decides
    whether a short window is usable. ``header`` skips a second header read when the caller has one.
    """
    path = os.fspath(path)
    hdr = header or info(path)
    if not hdr.seekable:
        return _fallback_windows(path, sr, starts_s, duration_s)
    out: list[np.ndarray] = []
    try:
        with sf.SoundFile(path) as f:
            for start in starts_s:
                first = int(round(start * hdr.sample_rate))
                count = -1 if duration_s is None else int(round(duration_s * hdr.sample_rate))
                if first >= hdr.frames:
                    out.append(np.zeros(0, dtype=np.float32))
                    continue
                f.seek(first)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    x = f.read(frames=count, dtype="float32", always_2d=True)
                _check_finite(x)
                out.append(resample(_to_mono(x), hdr.sample_rate, sr))
    except sf.LibsndfileError as exc:
        raise AudioError(f"corrupt audio data: {exc}") from exc
    except RuntimeError as exc:  # libsndfile read errors mid-stream (damaged frames)
        raise AudioError(f"corrupt audio data: {exc}") from exc
    return out


def _fallback_windows(path: str, sr: int, starts_s: list[float], duration_s: float | None) -> list[np.ndarray]:
    """librosa/audioread (ffmpeg) decode for formats libsndfile cannot read; one call per window."""
    import librosa

    out: list[np.ndarray] = []
    for start in starts_s:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                y, _ = librosa.load(path, sr=sr, mono=True, offset=start, duration=duration_s,
                                    res_type="soxr_hq")
        except Exception as exc:  # noqa: BLE001
            raise AudioError(_describe(exc, path)) from exc
        _check_finite(y)
        out.append(np.asarray(y, dtype=np.float32))
    return out
