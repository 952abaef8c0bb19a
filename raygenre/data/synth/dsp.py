"""Sound primitives, vectorised numpy: wavetables, note and drum rendering, one-pole filters, saturation, echo.

Signals are float32/float64 mono arrays at the caller's sample rate (Hz); lengths are in samples."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

TABLE = 2048  # wavetable length (power of two: the phase wraps with a bit mask)
# ============================================================================================= primitives
MAX_NOTE_S = 4.0  # longer notes are cut here (their envelope has settled long before)


@dataclass(frozen=True)
class Instrument:
    """A tonal voice: one wavetable period plus an attack/decay/sustain/release envelope and vibrato."""

    table: np.ndarray  # float32 (TABLE,), one period, peak 1
    attack: float  # s, linear rise
    decay: float  # s, exponential decay time constant towards ``sustain``
    sustain: float  # 0..1
    release: float  # s, linear fall after the note's length
    vibrato: float  # depth, semitones
    vib_rate: float  # Hz


def one_pole_gain(freqs: np.ndarray, cutoff_hz: float) -> np.ndarray:
    """Magnitude response of a first-order low-pass at ``cutoff_hz`` (Hz in, linear gain out)."""
    return 1.0 / np.sqrt(1.0 + (np.asarray(freqs) / cutoff_hz) ** 2)


def wavetable(rng: np.random.Generator, rolloff: float, odd_only: bool, tone_hz: float, ref_hz: float,
              partials: int = 24) -> np.ndarray:
    """One period of a harmonic tone: partial k has amplitude k**-rolloff, jittered per track.

    Returns float32 (TABLE,) with peak 1. ``odd_only`` keeps odd partials (hollow square/clarinet colour).
    The recording's bandwidth is baked in here rather than filtered per sample (much cheaper): partial k is
    attenuated as a one-pole low-pass at ``tone_hz`` would attenuate it on a note of ``ref_hz`` (the
    instrument's typical pitch). The jitter gives every track of a genre its own timbre.
    """
    k = np.arange(1, partials + 1)
    amps = k ** (-rolloff) * rng.uniform(0.5, 1.5, partials) * one_pole_gain(k * ref_hz, tone_hz)
    if odd_only:
        amps[1::2] *= 0.05
    phases = rng.uniform(0, 2 * np.pi, partials)
    x = np.arange(TABLE) / TABLE
    table = (amps[:, None] * np.sin(2 * np.pi * k[:, None] * x[None, :] + phases[:, None])).sum(axis=0)
    return (table / np.abs(table).max()).astype(np.float32)


def render_notes(out: np.ndarray, onsets: np.ndarray, lengths: np.ndarray, freqs: np.ndarray,
                 amps: np.ndarray, inst: Instrument, sr: int) -> None:
    """Add notes to the mono float32 buffer ``out`` in place (one vectorised wavetable read per note).

    ``onsets``/``lengths`` are in samples (int), ``freqs`` in Hz, ``amps`` linear. A note sounds for its
    length (at most ``MAX_NOTE_S``) plus the instrument's release; notes may overlap (chords, ringing
    strings). Notes starting outside ``out`` are skipped, tails are cut at its end. The envelope and vibrato
    curves are computed once per call, so pass all of a stem's notes at once.
    """
    if len(onsets) == 0:
        return
    rel = max(1, int(inst.release * sr))
    lengths = np.minimum(lengths, int(MAX_NOTE_S * sr))
    longest = int(min(lengths.max() + rel, out.size))
    t = np.arange(longest, dtype=np.float32) / np.float32(sr)
    env = np.minimum(t / np.float32(max(inst.attack, 1e-4)), np.float32(1.0))
    env *= np.float32(inst.sustain) + np.float32(1 - inst.sustain) * np.exp(-t / np.float32(inst.decay))
    # Vibrato as a time warp: the phase f * warp(t) has instantaneous frequency f (1 + d sin(2 pi r t)).
    d = 2 ** (inst.vibrato / 12) - 1
    warp = t
    if d > 0:
        w = np.float32(2 * np.pi * inst.vib_rate)
        warp = t + np.float32(d / (2 * np.pi * inst.vib_rate)) * (1 - np.cos(w * t))
    fall = np.linspace(1.0, 0.0, rel, dtype=np.float32)
    # Scratch buffers reused by every note: fresh large temporaries per note cost page faults.
    phase, idx, seg = np.empty_like(t), np.empty(longest, dtype=np.int32), np.empty_like(t)
    for s, n_len, f, a in zip(onsets.tolist(), lengths.tolist(), freqs.tolist(), amps.tolist(), strict=True):
        n = min(n_len + rel, out.size - s, longest)
        if n <= 0 or s < 0:
            continue
        np.multiply(warp[:n], np.float32(f * TABLE), out=phase[:n])
        np.copyto(idx[:n], phase[:n], casting="unsafe")  # float -> int truncation: table position
        np.bitwise_and(idx[:n], TABLE - 1, out=idx[:n])  # the phase wraps around the table
        np.take(inst.table, idx[:n], out=seg[:n])
        np.multiply(seg[:n], env[:n], out=seg[:n])
        if n > n_len:
            seg[n_len:n] *= fall[: n - n_len]
        seg[:n] *= np.float32(a)
        out[s : s + n] += seg[:n]


def place_hits(out: np.ndarray, onsets: np.ndarray, amps: np.ndarray, shot: np.ndarray) -> None:
    """Add a drum one-shot ``shot`` (float32) at each onset (samples) with linear gain ``amps``, in place."""
    for s, a in zip(onsets.tolist(), amps.tolist(), strict=True):
        n = min(shot.size, out.size - s)
        if n > 0 and s >= 0:
            out[s : s + n] += np.float32(a) * shot[:n]


def _t(seconds: float, sr: int) -> np.ndarray:
    """Sample times (s), float32 (n,), of a one-shot ``seconds`` long."""
    return np.arange(max(1, int(seconds * sr)), dtype=np.float32) / np.float32(sr)


def lowpass(x: np.ndarray, cutoff_hz: float, sr: int) -> np.ndarray:
    """First-order low-pass along the last axis (scipy ``lfilter``; used on short signals only). float32."""
    a = math.exp(-2 * math.pi * min(cutoff_hz, 0.45 * sr) / sr)
    return lfilter([1 - a], [1, -a], x, axis=-1).astype(np.float32)


def kick(rng: np.random.Generator, sr: int, decay: float) -> np.ndarray:
    """Bass drum: a sine sweeping down from ~150 Hz to ~50 Hz, exponential decay, a noise click. float32."""
    t = _t(decay * 4, sr)
    f_hi, f_lo = rng.uniform(110, 190), rng.uniform(40, 65)
    freq = f_lo + (f_hi - f_lo) * np.exp(-t / np.float32(rng.uniform(0.015, 0.05)))
    body = np.sin(np.cumsum(freq) * np.float32(2 * np.pi / sr)) * np.exp(-t / np.float32(decay))
    click = rng.standard_normal(t.size, dtype=np.float32) * np.exp(-t / np.float32(0.003))
    return (body + np.float32(rng.uniform(0.05, 0.4)) * click).astype(np.float32)


def snare(rng: np.random.Generator, sr: int, tone_hz: float) -> np.ndarray:
    """Snare: a short tonal body plus bright noise (the wires). float32."""
    decay = rng.uniform(0.06, 0.2)
    t = _t(decay * 4, sr)
    body = np.sin(np.float32(2 * np.pi * tone_hz) * t) * np.exp(-t / np.float32(0.04))
    noise = np.diff(rng.standard_normal(t.size + 1, dtype=np.float32))  # first difference: high-pass
    wires = noise * np.exp(-t / np.float32(decay))
    mix = rng.uniform(0.3, 0.8)
    return (np.float32(1 - mix) * body + np.float32(mix * 0.6) * wires).astype(np.float32)


def cymbal(rng: np.random.Generator, sr: int, decay: float, ride: bool) -> np.ndarray:
    """Hi-hat (high-passed noise) or ride (inharmonic square partials + noise: metallic). float32."""
    t = _t(decay * 4, sr)
    noise = np.diff(rng.standard_normal(t.size + 2, dtype=np.float32), n=2) * np.float32(0.3)
    if ride:
        f0 = rng.uniform(300, 600)
        metal = np.zeros_like(t)
        for ratio in (1.0, 1.342, 1.709, 2.051, 2.537, 3.105):  # a cymbal's inharmonic partials
            metal += ((t * np.float32(f0 * ratio)) % 1 < 0.5).astype(np.float32)  # square wave
        noise = np.float32(0.3) * noise + np.diff(metal, prepend=metal[:1]) / np.float32(6)
    return (noise * np.exp(-t / np.float32(decay))).astype(np.float32)


def soft_clip(x: np.ndarray, drive: float) -> np.ndarray:
    """tanh distortion of a signal scaled to peak 1, then a speaker-cabinet smoothing. float32.

    ``drive`` 1 is nearly clean, 20 a square-ish fuzz. The [1, 2, 1]/4 filter, applied twice, tames the
    buzz above ~5 kHz like a guitar cabinet does.
    """
    peak = float(np.abs(x).max()) or 1.0
    y = np.tanh(x * np.float32(drive / peak)) / np.float32(math.tanh(drive))
    for _ in range(2):
        y[1:-1] = np.float32(0.5) * y[1:-1] + np.float32(0.25) * (y[:-2] + y[2:])
    return y.astype(np.float32, copy=False)


def echo(x: np.ndarray, rng: np.random.Generator, wet: float, sr: int) -> np.ndarray:
    """A cheap room: six decaying delayed copies (20-150 ms apart) added to ``x`` (channels, n). float32."""
    if wet <= 0:
        return x
    out = x.copy()
    delays = np.sort(rng.uniform(0.02, 0.15, 6)).cumsum()
    for i, dly in enumerate(delays):
        d = int(dly * sr)
        if d < x.shape[-1]:
            out[..., d:] += np.float32(wet * 0.7**i) * x[..., :-d]
    return out


