"""MFCC features: segmenting a signal and computing librosa-identical MFCCs with torchaudio, in batches.

The reference is ``librosa.feature.mfcc(y, sr=22050, n_mfcc=13, n_fft=2048, hop_length=512)`` as the
tutorial used it: power mel spectrogram (128 slaney mels, slaney norm, centred frames, zero padding),
``power_to_db`` with ``top_db=80`` *per signal*, then an orthonormal DCT-II. torchaudio's ``MFCC`` with the
settings below matches it to ~1e-6 relative, provided each signal gets its own channel axis: a ``(B, 1, T)``
batch clamps ``top_db`` per signal, while a ``(B, T)`` batch would share one clamp across the batch.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torchaudio

from raygenre.config import FeatureParams
from raygenre.data.audio import AudioError

# Finite samples can still give NaN/inf: the power spectrum of samples around 1e17 or more overflows float32
# (a float WAV of about 1e20 gave all-NaN MFCC), and one such segment makes a whole split's statistics NaN.
NON_FINITE_MFCC = "audio gives non-finite MFCC (samples out of range?)"


class MfccExtractor:
    """Callable turning a batch of equal-length signals into MFCC matrices.

    ``extractor(signals)``: ``signals`` float32 (B, T) at ``params.sample_rate`` -> float32
    (B, frames, n_mfcc) with frames = 1 + T // hop_length (the tutorial's ``mfcc.T`` layout).
    """

    def __init__(self, params: FeatureParams, device: str | torch.device = "cpu") -> None:
        self.params = params
        self.device = torch.device(device)
        self.transform = torchaudio.transforms.MFCC(
            sample_rate=params.sample_rate,
            n_mfcc=params.n_mfcc,
            norm="ortho",
            log_mels=False,  # power_to_db (10*log10, top_db=80), exactly like librosa
            melkwargs=dict(
                n_fft=params.n_fft,
                hop_length=params.hop_length,
                n_mels=params.n_mels,
                center=True,
                pad_mode="constant",
                mel_scale="slaney",
                norm="slaney",
            ),
        ).to(self.device)

    @torch.no_grad()
    def __call__(self, signals: np.ndarray | torch.Tensor) -> np.ndarray:
        x = torch.as_tensor(signals, dtype=torch.float32, device=self.device)
        if x.ndim == 1:
            x = x[None]
        out = self.transform(x[:, None, :])  # (B, 1, n_mfcc, frames): one top_db clamp per signal
        return out[:, 0].transpose(1, 2).contiguous().cpu().numpy()  # (B, frames, n_mfcc)


@functools.lru_cache(maxsize=4)
def extractor(params: FeatureParams) -> MfccExtractor:
    """The MFCC transform for ``params``, built once per process (Ray tasks reuse their worker process)."""
    return MfccExtractor(params)


def frames_for(samples: int, params: FeatureParams) -> int:
    """MFCC frames of a ``samples``-long signal with centred frames (librosa's ``1 + n // hop``)."""
    return 1 + samples // params.hop_length


def cut_segments(y: np.ndarray, params: FeatureParams, segments: int) -> tuple[list[np.ndarray], list[int], int]:
    """Cut a track into ``segments`` back-to-back segments from its start, as the tutorial does.

    Returns (kept signals, their segment indices, dropped count). A segment is dropped, as in the tutorial,
    when it would give fewer MFCC frames than a full segment (the track is shorter than ``segments`` full
    segments).
    """
    n = params.segment_samples
    kept: list[np.ndarray] = []
    index: list[int] = []
    for d in range(segments):
        piece = y[d * n : (d + 1) * n]
        if piece.size and frames_for(piece.size, params) == params.frames:
            kept.append(piece)
            index.append(d)
    return kept, index, segments - len(kept)


def mfcc_of_segments(pieces: list[np.ndarray], extractor: MfccExtractor) -> np.ndarray:
    """MFCC of segments of possibly unequal length (all giving ``params.frames`` frames): (N, frames, n_mfcc).

    Full-length segments go through in one batch; the rare shorter-but-still-full-frame ones one by one,
    because zero-padding them would change their spectrum. Raises ``AudioError`` (``NON_FINITE_MFCC``) when any
    value is NaN or infinite: featurize and label both get their features here, and neither may keep them.
    """
    p = extractor.params
    out = np.empty((len(pieces), p.frames, p.n_mfcc), dtype=np.float32)
    full = [i for i, s in enumerate(pieces) if s.size == p.segment_samples]
    if full:
        out[full] = extractor(np.stack([pieces[i] for i in full]))
    for i, s in enumerate(pieces):
        if s.size != p.segment_samples:
            out[i] = extractor(s)[0]
    if not np.isfinite(out).all():
        raise AudioError(NON_FINITE_MFCC)
    return out


def window_starts(duration_s: float, params: FeatureParams, count: int) -> list[float]:
    """Start times (s) of ``count`` segments spread evenly across a track of ``duration_s`` seconds.

    Used by labeling: the windows' centres are evenly spaced, so an hour-long mix is sampled from start to
    end. Returns fewer starts (possibly none) when the track holds fewer full segments.
    """
    seg = params.segment_seconds
    fits = int(duration_s // seg)
    if fits <= 0:
        return []
    if fits <= count:
        return [i * seg for i in range(fits)]
    span = duration_s - seg
    return [round(span * (i + 0.5) / count, 6) for i in range(count)]
