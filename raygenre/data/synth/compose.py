"""From a recipe to audio: a track's ``Plan`` (values drawn from its genre's ranges), rendered phrases (drum,
bass, chord and lead stems) overlap-added along the timeline, then the master chain chunk by chunk (``Song``)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from raygenre.data.synth.dsp import (
    Instrument,
    cymbal,
    echo,
    kick,
    lowpass,
    place_hits,
    render_notes,
    snare,
    soft_clip,
    wavetable,
)
from raygenre.data.synth.recipes import SCALES, STEP_PROB, STEPS, Range, Recipe, chord, track_recipe

CHUNK_S = 10.0  # master-chain chunk length, seconds: bounds memory for hour-long library files
# ============================================================================================ track plans
def _draw(rng: np.random.Generator, r: Range) -> float:
    """One value drawn uniformly from ``r`` (a degenerate range gives its value without a draw)."""
    return float(rng.uniform(r[0], r[1])) if r[1] > r[0] else float(r[0])


def _pattern(rng: np.random.Generator, spec: str) -> np.ndarray:
    """A concrete 16-step bool pattern drawn from a probability pattern string."""
    probs = np.array([STEP_PROB[c] for c in spec])
    return rng.random(STEPS) < probs


def _db(x: float) -> float:
    """Decibels -> linear amplitude."""
    return float(10 ** (x / 20))


def _midi_hz(m: np.ndarray | float) -> np.ndarray:
    """MIDI note numbers -> frequencies in Hz (A4 = 69 = 440 Hz), float64 of the same shape."""
    return 440.0 * 2 ** ((np.asarray(m, dtype=np.float64) - 69) / 12)


@dataclass
class Plan:
    """Everything one track draws from its genre's recipe, before rendering."""

    recipe: Recipe
    sr: int
    channels: int
    bpm: float
    swing: float  # in steps
    jitter: float  # s
    key: int  # semitone of the tonic, 0 = C
    chords: list[tuple[int, tuple[int, ...]]]  # one per bar
    scale: tuple[int, ...]
    drums: bool
    kick: np.ndarray  # 16-step bool patterns
    snare: np.ndarray
    hat: np.ndarray
    bass: np.ndarray
    comp: np.ndarray
    shots: dict[str, np.ndarray]
    bass_inst: Instrument
    comp_inst: Instrument
    lead_inst: Instrument | None
    comp_len: float  # steps
    strum: float  # s
    drive: float
    levels: np.ndarray  # linear gains of drums, bass, chords, lead
    pans: np.ndarray  # (4,) -1 left .. 1 right
    echo: float
    noise: float  # linear, relative to the music's RMS
    tone_hz: float
    dynamics: float  # dB
    level_dbfs: float  # target RMS of the track, dBFS
    legato: float  # bass note length as a fraction of the gap to the next note

    @property
    def step_s(self) -> float:
        """Length of a sixteenth-note step, seconds."""
        return 60.0 / self.bpm / 4

    @property
    def bar_samples(self) -> int:
        """Length of a 4/4 bar, samples."""
        return int(round(self.step_s * STEPS * self.sr))


def plan_track(genre: str, rng: np.random.Generator, sr: int, channels: int = 1, difficulty: str = "easy") -> Plan:
    """Draw one track's parameters from its genre's recipe (the per-track randomness lives here).

    The order of the draws is part of the output: reordering them changes every file, so bump
    ``SYNTH_VERSION`` when you do. ``difficulty``: see ``track_recipe``.
    """
    r = track_recipe(genre, rng, difficulty)
    progression = str(rng.choice(r.progressions)).split()
    tone = _draw(rng, r.tone)
    ride = bool(rng.random() < r.ride)
    shots = {
        "kick": kick(rng, sr, _draw(rng, r.kick_decay)),
        "snare": snare(rng, sr, _draw(rng, r.snare_tone)),
        "hat": cymbal(rng, sr, _draw(rng, r.hat_decay), ride),
        "crash": cymbal(rng, sr, rng.uniform(0.8, 1.6), False),
    }
    shots = {name: lowpass(shot, tone, sr) for name, shot in shots.items()}  # the recording's bandwidth
    bass_inst = Instrument(wavetable(rng, _draw(rng, r.bass_rolloff), bool(rng.random() < 0.2), tone, 70.0),
                           attack=rng.uniform(0.002, 0.015), decay=rng.uniform(0.2, 1.0),
                           sustain=rng.uniform(0.2, 0.8), release=rng.uniform(0.02, 0.12), vibrato=0.0,
                           vib_rate=5.0)
    comp_inst = Instrument(wavetable(rng, _draw(rng, r.comp_rolloff), bool(rng.random() < r.comp_odd), tone, 260.0),
                           attack=_draw(rng, r.comp_attack), decay=_draw(rng, r.comp_decay),
                           sustain=_draw(rng, r.comp_sustain), release=rng.uniform(0.03, 0.3),
                           vibrato=0.0, vib_rate=5.0)
    lead_inst = None
    if rng.random() < r.lead:
        lead_inst = Instrument(wavetable(rng, _draw(rng, r.lead_rolloff), bool(rng.random() < 0.25), tone, 520.0,
                                         partials=16),
                               attack=rng.uniform(0.005, 0.08), decay=rng.uniform(0.2, 1.5),
                               sustain=rng.uniform(0.3, 0.9), release=rng.uniform(0.03, 0.2),
                               vibrato=_draw(rng, r.vibrato), vib_rate=rng.uniform(4.0, 6.5))
    levels = np.array([_db(_draw(rng, lv)) for lv in r.levels], dtype=np.float32)
    return Plan(
        recipe=r, sr=sr, channels=channels, bpm=_draw(rng, r.tempo), swing=_draw(rng, r.swing),
        jitter=_draw(rng, r.jitter) / 1000, key=int(rng.integers(0, 12)),
        chords=[chord(n) for n in progression], scale=SCALES[str(rng.choice(r.scales))],
        drums=bool(rng.random() < r.drums),
        kick=_pattern(rng, r.kick), snare=_pattern(rng, r.snare), hat=_pattern(rng, r.hat),
        bass=_pattern(rng, r.bass) | (np.arange(STEPS) == 0),  # the bass always lands on the downbeat
        comp=_pattern(rng, r.comp), shots=shots,
        bass_inst=bass_inst, comp_inst=comp_inst, lead_inst=lead_inst,
        comp_len=_draw(rng, r.comp_len), strum=_draw(rng, r.strum) / 1000, drive=_draw(rng, r.drive),
        levels=levels, pans=np.array([0.0, 0.0, rng.uniform(-0.6, 0.6), rng.uniform(-0.4, 0.4)]),
        echo=_draw(rng, r.echo), noise=_db(_draw(rng, r.noise)), tone_hz=tone,
        dynamics=_draw(rng, r.dynamics), level_dbfs=rng.uniform(-22.0, -13.0), legato=rng.uniform(0.5, 0.95),
    )


def _step_times(plan: Plan, bars: int, rng: np.random.Generator) -> np.ndarray:
    """Onset time (s) of every sixteenth step of ``bars`` bars: swing delays the off-beats, jitter humanises."""
    k = np.arange(bars * STEPS)
    pos = k.astype(np.float64)
    pos += plan.swing * ((k % 4) == 2)  # off-beat eighths
    pos += 0.5 * plan.swing * ((k % 2) == 1)  # off-beat sixteenths follow at half the delay
    return pos * plan.step_s + rng.normal(0, plan.jitter, k.size)


def _samples(times: np.ndarray, sr: int) -> np.ndarray:
    """Times in seconds -> sample indices (int64, clamped at 0: jitter may push the first step early)."""
    return np.maximum(0, np.round(times * sr)).astype(np.int64)


def render_phrase(plan: Plan, rng: np.random.Generator, bars: int) -> tuple[np.ndarray, int]:
    """Render ``bars`` bars of the progression as four mono stems: (4, n + tail) float32 and n (samples).

    Stems: drums, bass, chords, lead. Each phrase re-draws the melody, ghost notes and accents, so
    repeated phrases are not identical copies.
    """
    sr, bar = plan.sr, plan.bar_samples
    n = bars * bar
    tail = int(2.0 * sr)  # room for ringing notes and cymbals past the phrase end
    stems = np.zeros((4, n + tail), dtype=np.float32)
    times = _step_times(plan, bars, rng)
    onsets = _samples(times, sr)
    steps = np.arange(bars * STEPS)
    accent = np.where(steps % 4 == 0, 1.0, 0.75) * rng.uniform(0.8, 1.0, steps.size)

    if plan.drums:
        for name, pat in (("kick", plan.kick), ("snare", plan.snare), ("hat", plan.hat)):
            hit = np.tile(pat, bars) & (rng.random(steps.size) < 0.97)  # an occasional dropped hit
            place_hits(stems[0], onsets[hit], accent[hit], plan.shots[name])
        if rng.random() < plan.recipe.crash:
            place_hits(stems[0], onsets[:1], np.array([0.7]), plan.shots["crash"])

    chord_roots = [(plan.key + root) % 12 for root, _ in plan.chords[:bars]]
    # Bass: one note per pattern step; pitch depends on the style (root, root/fifth, octaves, walking).
    b_steps = np.flatnonzero(np.tile(plan.bass, bars))
    if b_steps.size:
        bar_of = b_steps // STEPS
        roots = np.array([36 + chord_roots[b] for b in bar_of], dtype=np.float64)  # around C2
        style = plan.recipe.bass_style
        order = np.arange(b_steps.size)
        if style == "boom":
            roots = roots + np.where(order % 2 == 1, 7, 0)
        elif style == "octave":
            roots = roots + np.where(order % 2 == 1, 12, 0)
        elif style == "walk":
            scale = np.array(plan.scale)
            walk = scale[rng.integers(0, scale.size, b_steps.size)]
            roots = roots + np.where(b_steps % STEPS == 0, 0, walk)
        else:
            roots = roots + np.where(rng.random(b_steps.size) < 0.15, 7, 0)
        gaps = np.diff(np.append(onsets[b_steps], n))
        lengths = np.maximum(1, (gaps * plan.legato)).astype(np.int64)
        render_notes(stems[1], onsets[b_steps], lengths, _midi_hz(roots), accent[b_steps], plan.bass_inst, sr)

    # Chords: every hit plays all chord tones (a strum spreads them), voiced around C4.
    c_steps = np.flatnonzero(np.tile(plan.comp, bars))
    if c_steps.size:
        step_n = plan.step_s * sr
        starts, freqs, amps = [], [], []
        for s in c_steps.tolist():
            root, intervals = plan.chords[s // STEPS]
            tones = 48 + (plan.key + root) % 12 + np.array(intervals)
            starts.append(onsets[s] + np.round(np.arange(tones.size) * plan.strum * sr).astype(np.int64))
            freqs.append(_midi_hz(tones))
            amps.append(np.full(tones.size, accent[s] / math.sqrt(tones.size)))
        c_on = np.concatenate(starts)
        render_notes(stems[2], c_on, np.full(c_on.size, int(plan.comp_len * step_n)), np.concatenate(freqs),
                     np.concatenate(amps), plan.comp_inst, sr)
    if plan.drive > 1.05:
        stems[2] = soft_clip(stems[2], plan.drive)

    # Lead: a random walk on the scale, denser on eighth-note positions; some bars rest.
    if plan.lead_inst is not None:
        rate = _draw(rng, plan.recipe.lead_rate) / 4  # notes per sixteenth step
        weight = np.where(steps % 2 == 0, 1.5, 0.5)
        resting = np.repeat(rng.random(bars) < 0.25, STEPS)
        l_steps = np.flatnonzero((rng.random(steps.size) < rate * weight) & ~resting)
        if l_steps.size:
            scale = np.array(plan.scale)
            degree = np.clip(np.cumsum(rng.choice([-2, -1, -1, 0, 1, 1, 2], l_steps.size)) + scale.size, 0,
                             3 * scale.size - 1)
            midi = 60 + plan.key + 12 * (degree // scale.size) + scale[degree % scale.size]
            gaps = np.diff(np.append(onsets[l_steps], n))
            lengths = np.maximum(1, gaps * rng.uniform(0.6, 1.0, l_steps.size)).astype(np.int64)
            amps = rng.uniform(0.6, 1.0, l_steps.size)
            render_notes(stems[3], onsets[l_steps], lengths, _midi_hz(midi), amps, plan.lead_inst, sr)
            if plan.drive > 3:  # metal/rock solos go through the same amp
                stems[3] = soft_clip(stems[3], plan.drive / 2)

    # Balance: each stem to unit RMS, then the recipe's levels.
    rms = np.sqrt(np.mean(stems[:, :n] ** 2, axis=1)) + 1e-9
    stems *= (plan.levels / rms.astype(np.float32))[:, None] * (rms > 1e-6)[:, None]
    return stems, n


def mix_stems(plan: Plan, stems: np.ndarray, rng: np.random.Generator, mute_drums: bool = False) -> np.ndarray:
    """Stems (4, n) -> (channels, n) float32 with constant-power panning and the room echo."""
    if plan.channels == 1:
        gains = np.ones((1, 4))
    else:
        angle = (plan.pans + 1) * np.pi / 4
        gains = np.stack([np.cos(angle), np.sin(angle)]) * math.sqrt(2)
    out = np.zeros((plan.channels, stems.shape[1]), dtype=np.float32)
    for ch in range(plan.channels):
        for k in range(1 if mute_drums else 0, 4):  # explicit sums: faster than a (c, 4) @ (4, n) matmul
            out[ch] += np.float32(gains[ch, k]) * stems[k]
    return echo(out, rng, plan.echo, plan.sr)


NOISE_LEN = 1 << 16  # hiss is a loop of this many samples (~3 s): generating fresh noise per sample is slow


@dataclass
class Song:
    """A track laid out in time: rendered phrases, where each one starts, and the master-chain settings."""

    plan: Plan
    phrases: list[np.ndarray]  # each (channels, n_i + tail) float32
    starts: list[tuple[int, int]]  # (start sample, phrase index), may start before 0
    gain: float  # to the target RMS
    hiss: np.ndarray  # (channels, NOISE_LEN) float32, band-limited noise at its final level
    ctrl_t: np.ndarray  # dynamics control points, samples
    ctrl_g: np.ndarray  # linear gain at each control point

    def chunks(self, total: int, chunk: int) -> Iterator[np.ndarray]:
        """Yield the track as float32 (frames, channels) blocks of ``chunk`` frames (the last may be shorter).

        Blocks are independent of ``chunk``: streaming a long file gives the same samples as one block.
        """
        channels = self.plan.channels
        for c0 in range(0, total, chunk):
            c = min(chunk, total - c0)
            buf = np.zeros((channels, c), dtype=np.float32)
            for start, idx in self.starts:
                ph = self.phrases[idx]
                lo, hi = max(start, c0), min(start + ph.shape[1], c0 + c)
                if lo < hi:
                    buf[:, lo - c0 : hi - c0] += ph[:, lo - start : hi - start]
            # Slow loudness swings, interpolated on a coarse grid (every 256 samples) to stay cheap.
            first = c0 - c0 % 256
            coarse = np.arange(first, c0 + c + 256, 256)
            g = np.repeat(np.interp(coarse, self.ctrl_t, self.ctrl_g).astype(np.float32), 256)
            buf *= g[c0 - first : c0 - first + c] * np.float32(self.gain)
            for ch in range(channels):
                buf[ch] += np.resize(np.roll(self.hiss[ch], -(c0 % NOISE_LEN)), c)
            np.clip(buf, -1.0, 1.0, out=buf)
            yield np.ascontiguousarray(buf.T)


def compose(genre: str, rng: np.random.Generator, total: int, sr: int, channels: int = 1,
            difficulty: str = "easy") -> Song:
    """Plan a ``total``-sample track of ``genre`` and render its phrases (A, B, and a drum-less break).

    The track starts at a random point of its first phrase, like a GTZAN excerpt from mid-song.
    """
    plan = plan_track(genre, rng, sr, channels, difficulty)
    bar = plan.bar_samples
    offset = int(rng.integers(0, bar * len(plan.chords)))
    needed_bars = math.ceil((offset + total) / bar)
    bars = min(len(plan.chords), needed_bars)
    stems_a, n = render_phrase(plan, rng, bars)
    phrases = [mix_stems(plan, stems_a, rng)]
    if needed_bars > bars:  # the song repeats its progression: a second take with a new melody
        # Only as many bars as the track uses: a 30 s excerpt often ends early in its second pass.
        stems_b, _ = render_phrase(plan, rng, min(bars, needed_bars - bars))
        phrases.append(mix_stems(plan, stems_b, rng))
        if plan.drums:
            phrases.append(mix_stems(plan, stems_b, rng, mute_drums=True))  # the break
    form = np.array([0, 1, 0, 1] if len(phrases) > 1 else [0])
    starts: list[tuple[int, int]] = []
    for i, s in enumerate(range(-offset, total, n)):
        idx = int(form[i % form.size])
        if idx == 1 and len(phrases) > 2 and rng.random() < 0.15:
            idx = 2
        starts.append((s, idx))
    rms = float(np.sqrt(np.mean(np.square(phrases[0][:, :n], dtype=np.float64)))) + 1e-9
    gain = _db(plan.level_dbfs) / rms
    step = int(rng.uniform(1.0, 4.0) * sr)
    ctrl_t = np.arange(-step, total + 2 * step, step)
    ctrl_g = np.power(10, -rng.uniform(0, plan.dynamics, ctrl_t.size) / 20)
    hiss = lowpass(rng.standard_normal((channels, NOISE_LEN), dtype=np.float32), plan.tone_hz, sr)
    hiss *= np.float32(plan.noise * _db(plan.level_dbfs)) / (np.float32(hiss.std()) + np.float32(1e-9))
    return Song(plan=plan, phrases=phrases, starts=starts, gain=gain, hiss=hiss, ctrl_t=ctrl_t, ctrl_g=ctrl_g)


def render_track(genre: str, rng: np.random.Generator, total: int, sr: int, channels: int = 1,
                 difficulty: str = "easy") -> np.ndarray:
    """A whole track in memory: float32 (total,) for mono, (total, channels) otherwise."""
    song = compose(genre, rng, total, sr, channels, difficulty)
    y = np.concatenate(list(song.chunks(total, max(1, int(CHUNK_S * sr)))), axis=0)
    return np.ascontiguousarray(y[:, 0] if channels == 1 else y)


def to_pcm16(y: np.ndarray) -> np.ndarray:
    """float in [-1, 1] -> int16, rounded (deterministic, no dithering)."""
    return np.round(np.clip(y, -1.0, 1.0) * 32767).astype(np.int16)


