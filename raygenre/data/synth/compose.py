"""The built-in SYNTHETIC dataset: procedural audio in the exact GTZAN layout. It is NOT real music.

The real GTZAN cannot be downloaded everywhere (and is not ours to ship), so the demo, the tests and the
benchmarks run on audio generated here:

* ``synthesize`` writes ``genres_original/<genre>/<genre>.000NN.wav`` (22050 Hz mono PCM_16, like the Kaggle
  copy), ``SYNTHETIC.md`` (what this is) and ``synth.json`` (the config; written last, it marks completion).
  With ``faults`` on it reproduces GTZAN's real faults: an undecodable ``jazz.00054.wav``, a truncated file
  and lengths that vary around the nominal one.
* ``make_library`` writes a user-like music collection (nested artist/album folders, stereo, mixed sample
  rates and formats, a few broken files) for ``raygenre label``, with the ground truth in ``library.json``.

Every genre is a ``Recipe``: ranges for tempo, swing, drum patterns, timbres, harmony, distortion, noise and
dynamics. Each track draws its own values from its genre's ranges, and the ranges overlap between genres,
so the genres are learnable but not trivially separable (a logistic regression on MFCC statistics gets
roughly 55-85 %, far from 100 %).

Determinism: each file's random generator is seeded from ``(seed, genre, index)`` (or ``(seed, file)``),
never from process order, so any number of worker processes writes byte-identical files.

Speed: a track is a few rendered *phrases* (one pass of its chord progression: drums, bass, chords, lead as
separate stems) overlap-added along the timeline, then a per-sample master chain (dynamics, hiss, tone
filter) applied chunk by chunk. Everything per sample is vectorised numpy; Python loops run per note.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import multiprocessing
import os
import re
import struct
import time
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy.signal import lfilter
from tqdm.auto import tqdm

from raygenre import __version__
from raygenre.config import SynthConfig, to_dict
from raygenre.data.gtzan import GENRES
from raygenre.workspace import progress_bars_wanted

SYNTH_VERSION = 1  # bump whenever the generated audio changes, so complete old datasets are regenerated
MARKER = "synth.json"
LIBRARY_MARKER = "library.json"
NOTE = "SYNTHETIC.md"
CORRUPT_INDEX = 54  # jazz.00054.wav: the Kaggle copy's undecodable file
TRUNCATED_KEEP_S = 2.0  # audio left in the truncated file: less than one 3 s segment, so it is "too short"
DURATION_JITTER = 0.02  # with faults on, lengths vary by up to +-2 % (GTZAN: 29.93-30.65 s)
CHUNK_S = 10.0  # master-chain chunk length, seconds: bounds memory for hour-long library files
TABLE = 2048  # wavetable length (power of two: the phase wraps with a bit mask)
STEPS = 16  # sixteenth-note steps per 4/4 bar

# ============================================================================================ genre recipes
Range = tuple[float, float]

# Drum/rhythm patterns are 16 characters, one per sixteenth step of a 4/4 bar; each character is the
# probability that a track's pattern has a hit there (drawn once per track, so tracks of a genre differ).
STEP_PROB = {"x": 0.95, "o": 0.6, "-": 0.25, ".": 0.03}


@dataclass(frozen=True)
class Recipe:
    """One genre's ranges. Each track draws every value uniformly from its range (``Range`` = (lo, hi))."""

    tempo: Range  # beats per minute
    swing: Range  # delay of off-beat eighths, in sixteenth steps (0 straight, 0.67 triplet shuffle)
    jitter: Range  # timing humanisation, standard deviation in ms
    drums: float  # probability that the track has a drum kit at all
    kick: str  # 16-step patterns (see STEP_PROB)
    snare: str
    hat: str
    kick_decay: Range  # s; long = boomy 808, short = tight click
    snare_tone: Range  # Hz of the snare's body (high = rim shot / cross-stick)
    hat_decay: Range  # s; long = open hi-hat or ride
    ride: float  # probability the cymbal is a metallic ride (jazz) rather than a noise hi-hat
    crash: float  # probability of a crash cymbal at each phrase start
    bass: str  # 16-step bass onsets
    bass_style: str  # root | boom (root/fifth) | octave (disco) | walk (jazz)
    bass_rolloff: Range  # harmonic amplitude ~ k**-rolloff: high = round sub bass, low = buzzy
    comp: str  # 16-step chord hits
    comp_len: Range  # chord length in steps (0.5 = staccato skank, 16 = whole bar)
    comp_rolloff: Range
    comp_odd: float  # probability of an odd-harmonics-only (hollow, square/clarinet-like) chord timbre
    comp_attack: Range  # s
    comp_decay: Range  # s, exponential decay time constant
    comp_sustain: Range  # level the decay settles to (0 plucked/piano, ~0.8 strings/organ)
    strum: Range  # ms between the chord's notes (guitar strum)
    drive: Range  # distortion gain before tanh on the chords (1 = clean, 20 = metal)
    lead: float  # probability of a lead melody (voice, sax, guitar, violin...)
    lead_rate: Range  # lead notes per beat
    lead_rolloff: Range
    vibrato: Range  # lead vibrato depth, semitones
    scales: tuple[str, ...]
    progressions: tuple[str, ...]  # roman numerals, one chord per bar (e.g. "I V vi IV")
    levels: tuple[Range, Range, Range, Range]  # dB of drums, bass, chords, lead in the mix
    noise: Range  # hiss relative to the music, dB
    tone: Range  # recording bandwidth: one-pole low-pass cutoff, Hz
    echo: Range  # room/echo wet level (0 dry)
    dynamics: Range  # depth of the slow loudness swings, dB


SCALES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "harmonic_minor": (0, 2, 3, 5, 7, 8, 11),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "phrygian": (0, 1, 3, 5, 7, 8, 10),
    "major_pent": (0, 2, 4, 7, 9),
    "minor_pent": (0, 3, 5, 7, 10),
    "blues": (0, 3, 5, 6, 7, 10),
}

# fmt: off
RECIPES: dict[str, Recipe] = {
    "blues": Recipe(
        tempo=(60, 125), swing=(0.35, 0.67), jitter=(3, 12), drums=0.85,
        kick="x.....o.x.....o.", snare="....x.......x...", hat="x.-.x.-.x.-.x.-.",
        kick_decay=(0.12, 0.3), snare_tone=(160, 240), hat_decay=(0.04, 0.2), ride=0.3, crash=0.1,
        bass="x...x...x...x...", bass_style="boom", bass_rolloff=(1.2, 2.2),
        comp="x..-x..-x..-x..-", comp_len=(1.5, 4), comp_rolloff=(0.8, 1.6), comp_odd=0.2,
        comp_attack=(0.002, 0.01), comp_decay=(0.2, 0.8), comp_sustain=(0.0, 0.3), strum=(4, 20),
        drive=(1.0, 3.0), lead=0.85, lead_rate=(0.5, 2.0), lead_rolloff=(0.8, 1.6), vibrato=(0.1, 0.5),
        scales=("blues", "minor_pent", "mixolydian"),
        progressions=("I7 I7 I7 I7 IV7 IV7 I7 I7 V7 IV7 I7 V7", "I7 IV7 I7 I7 IV7 IV7 I7 I7 V7 IV7 I7 I7",
                      "i7 i7 iv7 iv7 i7 i7 v7 iv7"),
        levels=((-8, -2), (-6, 0), (-4, 0), (-4, 2)), noise=(-45, -22), tone=(2500, 8000),
        echo=(0.05, 0.3), dynamics=(2, 6)),
    "classical": Recipe(
        tempo=(50, 130), swing=(0, 0), jitter=(5, 25), drums=0.1,
        kick="x.......-.......", snare="................", hat="................",
        kick_decay=(0.3, 0.6), snare_tone=(120, 180), hat_decay=(0.3, 1.0), ride=0.0, crash=0.2,
        bass="x.......o.......", bass_style="root", bass_rolloff=(1.4, 2.4),
        comp="x.......-.......", comp_len=(6, 16), comp_rolloff=(1.0, 2.2), comp_odd=0.3,
        comp_attack=(0.03, 0.3), comp_decay=(0.6, 3.0), comp_sustain=(0.3, 0.9), strum=(0, 30),
        drive=(1.0, 1.0), lead=0.9, lead_rate=(0.5, 3.0), lead_rolloff=(1.0, 2.2), vibrato=(0.1, 0.35),
        scales=("major", "minor", "harmonic_minor"),
        progressions=("I IV V I", "i iv V i", "I vi ii V", "I V vi iii IV I IV V", "i VI iv V"),
        levels=((-20, -10), (-8, -2), (-3, 0), (-4, 2)), noise=(-55, -28), tone=(3000, 10000),
        echo=(0.2, 0.5), dynamics=(5, 14)),
    "country": Recipe(
        tempo=(85, 160), swing=(0, 0.25), jitter=(2, 8), drums=0.9,
        kick="x.......x.......", snare="....x.......x...", hat="x.x.x.x.x.x.x.x.",
        kick_decay=(0.1, 0.25), snare_tone=(170, 260), hat_decay=(0.03, 0.12), ride=0.1, crash=0.2,
        bass="x.......x.......", bass_style="boom", bass_rolloff=(1.2, 2.2),
        comp="x.-.x.-.x.-.x.-.", comp_len=(1, 3), comp_rolloff=(0.5, 1.2), comp_odd=0.1,
        comp_attack=(0.001, 0.006), comp_decay=(0.12, 0.5), comp_sustain=(0.0, 0.2), strum=(5, 25),
        drive=(1.0, 1.5), lead=0.85, lead_rate=(1.0, 3.0), lead_rolloff=(0.5, 1.3), vibrato=(0.05, 0.3),
        scales=("major", "major_pent", "mixolydian"),
        progressions=("I IV V I", "I I IV IV V V I I", "I V IV I", "I IV I V"),
        levels=((-8, -2), (-6, 0), (-3, 0), (-4, 2)), noise=(-55, -30), tone=(3500, 11000),
        echo=(0.05, 0.25), dynamics=(2, 5)),
    "disco": Recipe(
        tempo=(108, 134), swing=(0, 0.1), jitter=(0, 4), drums=1.0,
        kick="x...x...x...x...", snare="....x.......x...", hat="-.x.-.x.-.x.-.x.",
        kick_decay=(0.12, 0.3), snare_tone=(170, 260), hat_decay=(0.1, 0.35), ride=0.0, crash=0.15,
        bass="x.x.x.x.x.x.x.x.", bass_style="octave", bass_rolloff=(1.0, 2.0),
        comp="..x...x...x...x.", comp_len=(0.5, 2), comp_rolloff=(0.6, 1.4), comp_odd=0.3,
        comp_attack=(0.002, 0.02), comp_decay=(0.1, 0.5), comp_sustain=(0.0, 0.6), strum=(0, 10),
        drive=(1.0, 1.6), lead=0.75, lead_rate=(0.5, 2.0), lead_rolloff=(0.8, 1.8), vibrato=(0.05, 0.4),
        scales=("minor", "dorian", "major"),
        progressions=("i7 iv7", "i7 i7 iv7 v7", "ii7 V7", "Imaj7 IVmaj7", "vi7 ii7 V7 Imaj7"),
        levels=((-4, 2), (-4, 2), (-6, 0), (-4, 2)), noise=(-60, -35), tone=(5000, 11000),
        echo=(0.05, 0.2), dynamics=(1, 3)),
    "hiphop": Recipe(
        tempo=(75, 102), swing=(0.1, 0.5), jitter=(0, 6), drums=1.0,
        kick="x.....o.-.x.....", snare="....x.......x...", hat="x.x-x.x-x.x-x.x-",
        kick_decay=(0.25, 0.7), snare_tone=(160, 240), hat_decay=(0.02, 0.08), ride=0.0, crash=0.05,
        bass="x.....o...x.....", bass_style="root", bass_rolloff=(2.2, 4.0),
        comp="x.......-.......", comp_len=(3, 12), comp_rolloff=(1.2, 2.4), comp_odd=0.3,
        comp_attack=(0.003, 0.05), comp_decay=(0.3, 1.5), comp_sustain=(0.0, 0.5), strum=(0, 10),
        drive=(1.0, 1.8), lead=0.6, lead_rate=(1.0, 4.0), lead_rolloff=(0.6, 1.4), vibrato=(0.0, 0.2),
        scales=("minor", "minor_pent", "dorian"),
        progressions=("i i VI VI", "i iv", "i VI iv v", "i7 i7 iv7 iv7", "i bVII bVI bVII"),
        levels=((-2, 3), (-4, 2), (-10, -3), (-4, 2)), noise=(-48, -26), tone=(2500, 9000),
        echo=(0.0, 0.15), dynamics=(1, 3)),
    "jazz": Recipe(
        tempo=(80, 210), swing=(0.4, 0.67), jitter=(4, 14), drums=0.8,
        kick="x.......-.......", snare="-...-.-.-...-.-.", hat="x...x.x.x...x.x.",
        kick_decay=(0.12, 0.3), snare_tone=(150, 220), hat_decay=(0.2, 0.8), ride=0.9, crash=0.05,
        bass="x...x...x...x...", bass_style="walk", bass_rolloff=(1.6, 2.8),
        comp="o.....o.-...o...", comp_len=(1, 6), comp_rolloff=(1.0, 2.0), comp_odd=0.2,
        comp_attack=(0.002, 0.02), comp_decay=(0.25, 1.2), comp_sustain=(0.0, 0.3), strum=(0, 8),
        drive=(1.0, 1.2), lead=0.85, lead_rate=(1.0, 4.0), lead_rolloff=(0.6, 1.4), vibrato=(0.1, 0.4),
        scales=("dorian", "mixolydian", "major", "blues"),
        progressions=("ii7 V7 Imaj7 Imaj7", "Imaj7 vi7 ii7 V7", "ii7 V7 Imaj7 VI7", "iii7 VI7 ii7 V7"),
        levels=((-14, -6), (-6, 0), (-6, -1), (-4, 2)), noise=(-50, -25), tone=(2500, 9000),
        echo=(0.1, 0.4), dynamics=(3, 9)),
    "metal": Recipe(
        tempo=(95, 210), swing=(0, 0), jitter=(0, 5), drums=1.0,
        kick="xoxoxoxoxoxoxoxo", snare="....x.......x...", hat="x.x.x.x.x.x.x.x.",
        kick_decay=(0.06, 0.15), snare_tone=(170, 260), hat_decay=(0.08, 0.4), ride=0.2, crash=0.5,
        bass="x.x.x.x.x.x.x.x.", bass_style="root", bass_rolloff=(0.8, 1.6),
        comp="x.x.x.x.x.x.x.x.", comp_len=(1, 2.5), comp_rolloff=(0.4, 1.0), comp_odd=0.2,
        comp_attack=(0.001, 0.005), comp_decay=(0.2, 1.0), comp_sustain=(0.2, 0.7), strum=(0, 6),
        drive=(4.0, 25.0), lead=0.6, lead_rate=(1.5, 4.0), lead_rolloff=(0.5, 1.1), vibrato=(0.1, 0.6),
        scales=("minor", "harmonic_minor", "phrygian"),
        progressions=("i5 i5 bVI5 bVII5", "i5 bII5 i5 bVII5", "i5 iv5 bVI5 v5", "i5 i5 i5 bVII5"),
        levels=((-6, 0), (-6, 0), (-2, 2), (-6, 0)), noise=(-55, -35), tone=(4000, 11000),
        echo=(0.0, 0.15), dynamics=(0.5, 2)),
    "pop": Recipe(
        tempo=(88, 132), swing=(0, 0.12), jitter=(0, 4), drums=0.95,
        kick="x.......x.o.....", snare="....x.......x...", hat="x.x.x.x.x.x.x.x.",
        kick_decay=(0.12, 0.35), snare_tone=(170, 260), hat_decay=(0.03, 0.12), ride=0.0, crash=0.3,
        bass="x..x..x.x..x..x.", bass_style="root", bass_rolloff=(1.2, 2.6),
        comp="x.-.x.-.x.-.x.-.", comp_len=(2, 8), comp_rolloff=(0.8, 1.8), comp_odd=0.3,
        comp_attack=(0.002, 0.08), comp_decay=(0.2, 1.5), comp_sustain=(0.1, 0.8), strum=(0, 15),
        drive=(1.0, 1.8), lead=0.9, lead_rate=(1.0, 2.5), lead_rolloff=(0.9, 1.8), vibrato=(0.1, 0.4),
        scales=("major", "major_pent", "minor"),
        progressions=("I V vi IV", "vi IV I V", "I vi IV V", "IV I V vi", "I IV vi V"),
        levels=((-6, 0), (-6, 0), (-6, 0), (-2, 3)), noise=(-62, -40), tone=(5000, 11000),
        echo=(0.05, 0.25), dynamics=(1, 3)),
    "reggae": Recipe(
        tempo=(60, 95), swing=(0, 0.3), jitter=(2, 8), drums=0.95,
        kick="........x.......", snare="........x.......", hat="x.x.x.x.x.x.x.x.",
        kick_decay=(0.15, 0.35), snare_tone=(250, 420), hat_decay=(0.03, 0.12), ride=0.1, crash=0.05,
        bass="x..o..x...o.x...", bass_style="root", bass_rolloff=(1.8, 3.5),
        comp="..x...x...x...x.", comp_len=(0.3, 1.0), comp_rolloff=(0.6, 1.4), comp_odd=0.4,
        comp_attack=(0.001, 0.006), comp_decay=(0.05, 0.25), comp_sustain=(0.0, 0.3), strum=(0, 6),
        drive=(1.0, 1.5), lead=0.75, lead_rate=(0.5, 1.5), lead_rolloff=(0.9, 1.8), vibrato=(0.05, 0.35),
        scales=("major", "minor", "dorian", "major_pent"),
        progressions=("I IV", "i iv", "I V IV I", "ii V", "I I IV V"),
        levels=((-8, -2), (-2, 3), (-6, 0), (-4, 2)), noise=(-50, -28), tone=(2500, 9000),
        echo=(0.1, 0.4), dynamics=(1, 4)),
    "rock": Recipe(
        tempo=(95, 165), swing=(0, 0.12), jitter=(1, 6), drums=1.0,
        kick="x.....o.x.o.....", snare="....x.......x...", hat="x.x.x.x.x.x.x.x.",
        kick_decay=(0.1, 0.25), snare_tone=(170, 260), hat_decay=(0.05, 0.3), ride=0.15, crash=0.4,
        bass="x.x.x.x.x.x.x.x.", bass_style="root", bass_rolloff=(1.0, 2.0),
        comp="x.x.x.x.x.x.x.x.", comp_len=(1.5, 4), comp_rolloff=(0.5, 1.2), comp_odd=0.2,
        comp_attack=(0.001, 0.01), comp_decay=(0.2, 1.0), comp_sustain=(0.1, 0.6), strum=(2, 15),
        drive=(1.8, 9.0), lead=0.8, lead_rate=(1.0, 3.0), lead_rolloff=(0.6, 1.4), vibrato=(0.1, 0.5),
        scales=("minor_pent", "major", "mixolydian"),
        progressions=("I IV V IV", "I bVII IV I", "I5 IV5 V5 IV5", "vi IV I V", "i5 bVII5 bVI5 bVII5"),
        levels=((-6, 0), (-6, 0), (-3, 2), (-4, 2)), noise=(-52, -32), tone=(3500, 10000),
        echo=(0.05, 0.2), dynamics=(1, 4)),
}
# fmt: on
assert set(RECIPES) == set(GENRES)

# ============================================================================================ difficulty
DIFFICULTIES = ("easy", "hard")
# ``hard``: genres overlap the way real ones do. Each track borrows each group of its traits from a random
# genre with this probability (a "blues" track may get disco's drums, jazz's harmony and metal's amp), so
# tempos, instruments, keys and mixes are shared across genres and the variation inside a genre is larger
# than the gap between some genres. Calibrated against a plain single-process CNN loop (lr 1e-3, 12 epochs,
# 60/20/20 track split of 10 genres x 60 tracks x 30 s): test tracks easy 0.83, hard 0.59-0.64 at 0.15, 0.53 at
# 0.25, 0.30 at 0.5 (+10 dB). 0.08 keeps the small tables of tests/test_learning.py (10 x 60 tracks x 6 s) in the
# 50-85 % band of real GTZAN (cnn 0.49-0.56 over four seeds) while the old trainer falls to ~0.2 there.
HARD_BORROW = 0.08
HARD_NOISE_DB = 6.0  # hard tracks also carry louder hiss and mixing noise (added to the recipe's range)
TRAIT_GROUPS: tuple[tuple[str, ...], ...] = (
    ("tempo", "swing", "jitter"),
    ("drums", "kick", "snare", "hat", "ride", "crash"),
    ("kick_decay", "snare_tone", "hat_decay"),
    ("bass", "bass_style", "bass_rolloff"),
    ("comp", "comp_len", "strum"),
    ("comp_rolloff", "comp_odd", "comp_attack", "comp_decay", "comp_sustain", "drive"),
    ("lead", "lead_rate", "lead_rolloff", "vibrato"),
    ("scales", "progressions"),
    ("levels", "noise", "tone", "echo", "dynamics"),
)
assert sorted(f for g in TRAIT_GROUPS for f in g) == sorted(f.name for f in dataclasses.fields(Recipe))


def track_recipe(genre: str, rng: np.random.Generator, difficulty: str = "easy") -> Recipe:
    """The recipe one track draws from: its genre's (``easy``), or a per-track blend of genres (``hard``).

    ``hard`` draws from ``rng`` (so the track's other draws move too); ``easy`` draws nothing, so easy
    datasets stay byte-identical to those of earlier versions.
    """
    if difficulty == "easy":
        return RECIPES[genre]
    if difficulty != "hard":
        raise ValueError(f"unknown difficulty {difficulty!r}: use one of {', '.join(DIFFICULTIES)}")
    own = RECIPES[genre]
    traits: dict[str, Any] = {}
    for group in TRAIT_GROUPS:
        donor = RECIPES[GENRES[int(rng.integers(0, len(GENRES)))]] if rng.random() < HARD_BORROW else own
        traits.update({name: getattr(donor, name) for name in group})
    lo, hi = traits["noise"]
    traits["noise"] = (lo + HARD_NOISE_DB, hi + HARD_NOISE_DB)
    return Recipe(**traits)


# ============================================================================================== harmony
_NUMERAL = re.compile(r"^(b?)(VII|VI|V|IV|III|II|I|vii|vi|v|iv|iii|ii|i)(maj7|7|5|o)?$")
_DEGREE = {"I": 0, "II": 2, "III": 4, "IV": 5, "V": 7, "VI": 9, "VII": 11}


def chord(numeral: str) -> tuple[int, tuple[int, ...]]:
    """Parse one roman numeral into (root semitones above the key, chord intervals in semitones).

    Upper case = major, lower case = minor, ``b`` = flat root; suffix ``7`` (dominant, or minor 7th for
    lower case), ``maj7``, ``5`` (power chord), ``o`` (diminished).
    """
    m = _NUMERAL.match(numeral)
    if not m:
        raise ValueError(f"not a chord numeral: {numeral!r}")
    flat, roman, suffix = m.groups()
    root = (_DEGREE[roman.upper()] - (1 if flat else 0)) % 12
    minor = roman.islower()
    third = 3 if minor else 4
    if suffix == "5":
        return root, (0, 7, 12)
    if suffix == "o":
        return root, (0, 3, 6)
    if suffix == "maj7":
        return root, (0, third, 7, 11)
    if suffix == "7":
        return root, (0, third, 7, 10)
    return root, (0, third, 7)


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


# ===================================================================================== files and faults
def _tmp(path: Path) -> Path:
    """A hidden temporary name beside ``path`` (dataset scanners skip dot files)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a temporary name, then ``os.replace``)."""
    tmp = _tmp(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _corrupt_bytes(size: int) -> bytes:
    """A ``RIFF``/``WAVE`` header followed by garbage and no ``fmt``/``data`` chunk: nothing can decode it.

    The garbage is the same for every seed (a fixed generator), so its failure mode was checked once:
    libsndfile reports "No 'data' chunk marker" and librosa's ffmpeg fallback fails too.
    """
    garbage = np.random.default_rng(0xBAD).integers(0, 256, max(size - 12, 64), dtype=np.uint8).tobytes()
    garbage = garbage.replace(b"data", b"dat\0").replace(b"fmt ", b"fmt\0")  # no chunk marker by chance
    return b"RIFF" + struct.pack("<I", len(garbage) + 4) + b"WAVE" + garbage


def _wav_bytes(y: np.ndarray, sr: int) -> bytes:
    """A mono float signal as the bytes of a PCM_16 WAV file."""
    buf = io.BytesIO()
    sf.write(buf, to_pcm16(y), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _truncate_wav(data: bytes, keep_frames: int, frame_bytes: int) -> bytes:
    """Cut a WAV's data after ``keep_frames`` frames; the header still claims the full length."""
    start = data.index(b"data") + 8
    return data[: start + keep_frames * frame_bytes]


@dataclass(frozen=True)
class _TrackJob:
    """One GTZAN-layout file to write (picklable: it travels to a worker process)."""

    path: str
    genre_idx: int
    index: int
    seed: int
    samples: int  # nominal length, frames
    sr: int
    fault: str  # "" | "corrupt" | "truncated"
    difficulty: str  # easy | hard (see track_recipe)


def _write_track(job: _TrackJob) -> int:
    """Worker: synthesize and write one track atomically; return the frames written."""
    path = Path(job.path)
    if job.fault == "corrupt":
        _write_bytes(path, _corrupt_bytes(44 + 2 * job.samples))
        return 0
    rng = np.random.default_rng([job.seed, job.genre_idx, job.index])
    y = render_track(GENRES[job.genre_idx], rng, job.samples, job.sr, difficulty=job.difficulty)
    if job.fault == "truncated":
        keep = min(int(TRUNCATED_KEEP_S * job.sr), job.samples // 2)
        _write_bytes(path, _truncate_wav(_wav_bytes(y, job.sr), keep, 2))
        return keep
    tmp = _tmp(path)
    sf.write(tmp, to_pcm16(y), job.sr, format="WAV", subtype="PCM_16")
    os.replace(tmp, path)
    return job.samples


def _run_pool(fn: Any, jobs: Sequence[Any], workers: int | None, progress: bool, desc: str, unit: str,
              chunksize: int = 1) -> list[Any]:
    """``[fn(j) for j in jobs]`` in a process pool (in-process when one worker suffices), with a tqdm bar.

    The pool forks where it can (Linux): ``spawn``/``forkserver`` re-import the caller's ``__main__``, which
    breaks scripts read from stdin and re-runs unguarded scripts. The workers only use numpy, scipy and
    libsndfile, never a lock that a parent's threads (Ray, torch) could hold at fork time.
    """
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    bar = tqdm(total=len(jobs), desc=desc, unit=unit, disable=not (progress and progress_bars_wanted()), leave=False)
    try:
        if workers <= 1:
            out = []
            for j in jobs:
                out.append(fn(j))
                bar.update()
            return out
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            out = []
            for r in pool.map(fn, jobs, chunksize=chunksize):
                out.append(r)
                bar.update()
            return out
    finally:
        bar.close()


# ============================================================================================ synthesize
@dataclass(frozen=True)
class SynthResult:
    """What ``synthesize`` did."""

    root: Path  # the dataset folder (holds genres_original/, SYNTHETIC.md, synth.json)
    tracks: int  # files in the dataset, faulty ones included
    seconds: float  # wall-clock time of this call
    skipped: bool  # True when a complete dataset with the same config was already there
    faults: dict[str, list[str]]  # {"corrupt": [...], "truncated": [...]}, paths relative to root


def _fault_plan(cfg: SynthConfig) -> dict[str, list[str]]:
    """Which files are broken (relative paths). Deterministic from the config alone."""
    if not cfg.faults or cfg.tracks_per_genre <= 0:
        return {"corrupt": [], "truncated": []}
    corrupt_idx = CORRUPT_INDEX if cfg.tracks_per_genre > CORRUPT_INDEX else cfg.tracks_per_genre - 1
    rng = np.random.default_rng([cfg.seed, 0x7A0C])
    others = [g for g in GENRES if g != "jazz"]
    genre = others[int(rng.integers(0, len(others)))]
    index = int(rng.integers(0, cfg.tracks_per_genre))
    return {"corrupt": [f"genres_original/jazz/jazz.{corrupt_idx:05d}.wav"],
            "truncated": [f"genres_original/{genre}/{genre}.{index:05d}.wav"]}


def _samples_for(cfg: SynthConfig, genre_idx: int, index: int) -> int:
    """A track's length in frames: exactly ``seconds``, or within +-2 % of it when faults are on.

    Drawn from its own generator, so switching faults on changes the lengths but not the music.
    """
    seconds = cfg.seconds
    if cfg.faults:
        seconds *= 1 + np.random.default_rng([cfg.seed, genre_idx, index, 1]).uniform(-DURATION_JITTER,
                                                                                      DURATION_JITTER)
    return max(1, int(round(seconds * cfg.sample_rate)))


def _marker(cfg: SynthConfig, faults: dict[str, list[str]]) -> dict[str, Any]:
    return {"generator": "raygenre.synth", "synth_version": SYNTH_VERSION, "raygenre_version": __version__,
            "synthetic": True, "config": to_dict(cfg), "genres": list(GENRES),
            "tracks": cfg.tracks_per_genre * len(GENRES), "faults": faults}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


HARD_NOTE = (" (each track borrows groups of traits - rhythm, drums, bass, chords, lead, harmony, mix - from "
             "random other genres, with louder noise: genres overlap the way real ones do)")


def _note(cfg: SynthConfig) -> str:
    return f"""# SYNTHETIC dataset: procedural audio, NOT real music

Generated by `raygenre.synth.synthesize` (`raygenre synth`; raygenre {__version__}, generator version
{SYNTH_VERSION}) with seed **{cfg.seed}**: {cfg.tracks_per_genre} tracks per genre of {cfg.seconds:g} s,
{cfg.sample_rate} Hz mono 16-bit WAV, in the layout of the Kaggle GTZAN copy
(`genres_original/<genre>/<genre>.000NN.wav`).

Each genre is a recipe of ranges (tempo, swing, drum patterns, chord progressions, instrument timbres as
harmonic wavetables, distortion, echo, hiss, recording bandwidth, dynamics); every track draws its own
values, and the ranges overlap, so the genres are learnable but not trivially separable. Difficulty:
**{cfg.difficulty}**{HARD_NOTE if cfg.difficulty == "hard" else ""}. Nothing here was
recorded or sampled: models trained on it say nothing about real music. Use the real GTZAN (or your own
`<genre>/<files>` tree) for results that mean something.

Faults (GTZAN's real ones) included: {"yes: see `synth.json` -> faults" if cfg.faults else "no"}.
The same seed and config give byte-identical files. `synth.json` (written last) records the config.
"""


def synthesize(out_dir: str | Path, cfg: SynthConfig, workers: int | None = None,
               progress: bool = True) -> SynthResult:
    """Write the synthetic GTZAN-layout dataset into ``out_dir``; a no-op when it is already complete.

    Files: ``genres_original/<genre>/<genre>.000NN.wav`` for the ten ``GENRES`` (``cfg.sample_rate`` Hz mono
    PCM_16, ``cfg.seconds`` long), ``SYNTHETIC.md`` and ``synth.json`` (config, version, faults; written
    last). ``workers`` processes (default: all CPUs) write tracks in parallel; output is byte-identical
    for any ``workers``. Refuses (``FileExistsError``) to write into a ``genres_original`` that holds
    audio but is not a synthetic dataset, so a real GTZAN copy is never mixed with or overwritten by this.
    """
    t0 = time.monotonic()
    root = Path(out_dir)
    faults = _fault_plan(cfg)
    marker = _marker(cfg, faults)
    old = _read_json(root / MARKER)
    total = cfg.tracks_per_genre * len(GENRES)
    if old is not None and {k: old.get(k) for k in ("config", "synth_version")} == {
            "config": marker["config"], "synth_version": SYNTH_VERSION}:
        return SynthResult(root=root, tracks=total, seconds=time.monotonic() - t0, skipped=True,
                           faults=old.get("faults", faults))
    if cfg.tracks_per_genre < 0 or cfg.seconds <= 0 or cfg.sample_rate <= 0:
        raise ValueError(f"invalid synth config: {cfg}")
    if cfg.difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown difficulty {cfg.difficulty!r}: use one of {', '.join(DIFFICULTIES)}")
    genre_root = root / "genres_original"
    if genre_root.is_dir() and not (root / NOTE).exists() and any(genre_root.rglob("*.wav")):
        raise FileExistsError(f"{genre_root} already holds audio that is not a raygenre synthetic dataset; "
                              f"choose an empty folder")
    (root / MARKER).unlink(missing_ok=True)  # from here on the folder is incomplete until the new marker
    fault_of = {p: kind for kind, paths in faults.items() for p in paths}
    jobs: list[_TrackJob] = []
    expected: set[Path] = set()
    for gi, genre in enumerate(GENRES):
        (genre_root / genre).mkdir(parents=True, exist_ok=True)
        for i in range(cfg.tracks_per_genre):
            rel = f"genres_original/{genre}/{genre}.{i:05d}.wav"
            expected.add(root / rel)
            jobs.append(_TrackJob(path=str(root / rel), genre_idx=gi, index=i, seed=cfg.seed,
                                  samples=_samples_for(cfg, gi, i), sr=cfg.sample_rate, fault=fault_of.get(rel, ""),
                                  difficulty=cfg.difficulty))
    _remove_stale(genre_root, expected)
    (root / NOTE).write_text(_note(cfg))
    # Longest-first would not help: all tracks cost about the same. Chunks amortise the pickling.
    _run_pool(_write_track, jobs, workers, progress, "synth", "track", chunksize=4)
    tmp = _tmp(root / MARKER)
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    os.replace(tmp, root / MARKER)
    return SynthResult(root=root, tracks=total, seconds=time.monotonic() - t0, skipped=False, faults=faults)


def _remove_stale(genre_root: Path, expected: set[Path]) -> None:
    """Delete our own earlier output that the new config does not produce (e.g. fewer tracks per genre)."""
    pattern = re.compile(r"^(" + "|".join(GENRES) + r")\.\d{5}\.wav$")
    if not genre_root.is_dir():
        return
    for f in genre_root.glob("*/*"):
        if f.is_file() and (pattern.match(f.name) and f not in expected or f.name.endswith(".tmp")):
            f.unlink()


# ============================================================================================== library
FORMATS: dict[str, tuple[str, str]] = {  # extension -> (libsndfile format, subtype)
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "ogg": ("OGG", "VORBIS"),
}
_WORDS = ("Blue", "Night", "River", "Golden", "Electric", "Silent", "Morning", "Fire", "Paper", "Moon", "Road",
          "Summer", "Glass", "Heart", "Wild", "City", "Rain", "Echo", "Velvet", "Shadow", "Sun", "Stone",
          "Dream", "Ocean", "Highway", "Little", "Broken", "Southern", "Neon", "Midnight")


@dataclass(frozen=True)
class LibraryResult:
    """What ``make_library`` wrote. Paths are relative to ``root`` (POSIX separators)."""

    root: Path
    genres: dict[str, str]  # good file -> its genre (the ground truth)
    bad: dict[str, str]  # broken file -> kind: empty | not_audio | corrupt | truncated | too_short
    seconds: float  # wall-clock time of this call
    audio_seconds: float  # total length of the good files
    skipped: bool  # True when a complete library with the same parameters was already there

    @property
    def files(self) -> list[str]:
        """Every file of the library, good and bad, sorted."""
        return sorted([*self.genres, *self.bad])


@dataclass(frozen=True)
class _LibJob:
    """One library file to write (picklable: it travels to a worker process)."""

    path: str  # relative to the library root in the layout, absolute in the jobs
    file_idx: int  # position in the layout: seeds the file's generator with (seed, file_idx)
    seed: int
    genre: str
    fmt: str  # extension: wav | flac | mp3 | ogg
    sr: int  # Hz
    channels: int
    seconds: float  # length of the audio
    kind: str  # "" for a good file, else the bad kind


def _write_audio(path: Path, song: Song, total: int, sr: int, channels: int, fmt: str) -> None:
    """Stream a song to ``path`` chunk by chunk (memory stays at one chunk), atomically."""
    major, subtype = FORMATS[fmt]
    tmp = _tmp(path)
    # libsndfile's Vorbis encoder crashes on very large writes: feed it small blocks.
    block = 32768 if fmt == "ogg" else int(CHUNK_S * sr)
    with sf.SoundFile(tmp, "w", sr, channels, format=major, subtype=subtype) as f:
        for chunk in song.chunks(total, int(CHUNK_S * sr)):
            for i in range(0, chunk.shape[0], block):
                f.write(chunk[i : i + block] if fmt in ("ogg", "mp3") else to_pcm16(chunk[i : i + block]))
    if fmt == "ogg":
        _fix_ogg_serial(tmp, serial=zlib.crc32(path.name.encode()))
    os.replace(tmp, path)


def _ogg_crc(data: bytes) -> int:
    """Ogg's page CRC (polynomial 0x04C11DB7, not reflected, init 0, no final xor), via zlib's C CRC-32.

    zlib computes the reflected CRC with inverted init/output; feeding it bit-reversed bytes, cancelling the
    inversions with the CRC of as many zero bytes, and bit-reversing the result gives the unreflected one.
    """
    rev = data.translate(_BITREV)
    raw = zlib.crc32(rev) ^ zlib.crc32(bytes(len(data)))
    return int(f"{raw:032b}"[::-1], 2)


_BITREV = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def _fix_ogg_serial(path: Path, serial: int) -> None:
    """Replace the Ogg stream serial number (libsndfile draws it from the clock) and fix each page's CRC.

    Without this two runs would write different bytes for the same audio.
    """
    data = bytearray(path.read_bytes())
    pos = 0
    while pos + 27 <= len(data) and data[pos : pos + 4] == b"OggS":
        nseg = data[pos + 26]
        size = 27 + nseg + sum(data[pos + 27 : pos + 27 + nseg])
        data[pos + 14 : pos + 18] = struct.pack("<I", serial & 0xFFFFFFFF)
        data[pos + 22 : pos + 26] = b"\0\0\0\0"
        data[pos + 22 : pos + 26] = struct.pack("<I", _ogg_crc(bytes(data[pos : pos + size])))
        pos += size
    path.write_bytes(bytes(data))


def _write_library_file(job: _LibJob) -> float:
    """Worker: write one library file (good or deliberately broken); return its audio length in seconds."""
    path = Path(job.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([job.seed, 0x11B, job.file_idx])
    if job.kind == "empty":
        _write_bytes(path, b"")
        return 0.0
    if job.kind == "not_audio":
        _write_bytes(path, b"Track list\n\n1. Intro\n2. Outro\n\nThis is a text file with an audio name.\n" * 20)
        return 0.0
    if job.kind == "corrupt":
        _write_bytes(path, _corrupt_bytes(200_000))
        return 0.0
    total = max(1, int(round(job.seconds * job.sr)))
    song = compose(job.genre, rng, total, job.sr, job.channels)
    _write_audio(path, song, total, job.sr, job.channels, job.fmt)
    if job.kind == "truncated":  # keep the header (claims the full length) and the first 30 % of the frames
        data = path.read_bytes()
        _write_bytes(path, data[: max(len(data) * 3 // 10, 256)])
    return job.seconds


def _library_layout(n_files: int, seed: int, min_seconds: float, max_seconds: float, formats: Sequence[str],
                    sample_rates: Sequence[int], stereo: bool, bad_files: bool) -> list[_LibJob]:
    """Decide every file of the library (path, genre, format, rate, length); deterministic from ``seed``."""
    rng = np.random.default_rng([seed, 0x11A])
    bad_kinds = [("empty", "mp3"), ("not_audio", "flac"), ("corrupt", "wav"), ("truncated", "flac"),
                 ("too_short", "wav")] if bad_files else []
    count = n_files + len(bad_kinds)
    bad_at = dict(zip(rng.choice(count, len(bad_kinds), replace=False).tolist(), bad_kinds, strict=True))
    # Formats and rates are dealt round-robin in shuffled order: every one of them appears when there are
    # enough files, in equal shares (benchmarks compare like with like).
    fmt_of, sr_of = rng.permutation(count) % len(formats), rng.permutation(count) % len(sample_rates)
    jobs: list[_LibJob] = []
    artist, album, track, album_size = 0, 0, 0, 0
    for i in range(count):
        if track >= album_size:  # next album (sometimes by the next artist)
            if album == 0 or rng.random() < 0.5:
                artist, album = artist + 1, 1
            else:
                album += 1
            track, album_size = 0, int(rng.integers(3, 13))
        track += 1
        title = " ".join(rng.choice(_WORDS, int(rng.integers(1, 4)), replace=False).tolist())
        kind, fmt = bad_at.get(i, ("", formats[fmt_of[i]]))
        seconds = 1.0 if kind == "too_short" else float(rng.uniform(min_seconds, max_seconds))
        rel = f"Artist {artist:02d}/Album {album:02d}/{track:02d} - {title}.{fmt}"
        jobs.append(_LibJob(path=rel, file_idx=i, seed=seed, genre=str(rng.choice(GENRES)), fmt=fmt,
                            sr=int(sample_rates[sr_of[i]]), channels=2 if stereo else 1,
                            seconds=seconds, kind=kind))
    return jobs


PLAN = ".library-plan.json"  # the files an unfinished make_library run intended (hidden: scanners skip it)


def _library_note(params: dict[str, Any]) -> str:
    """The library's SYNTHETIC.md: what it is, how it was made."""
    return f"""# SYNTHETIC music library: procedural audio, NOT real music

Generated by `raygenre.synth.make_library` (raygenre {__version__}) with seed **{params['seed']}** for trying
and benchmarking `raygenre label`: {params['n_files']} files of {params['min_seconds']:g}-{params['max_seconds']:g} s
in nested `Artist NN/Album NN/NN - Title.ext` folders, formats {', '.join(params['formats'])}, sample rates
{', '.join(str(r) for r in params['sample_rates'])} Hz, {'stereo' if params['stereo'] else 'mono'}, from the
same genre recipes as the synthetic GTZAN dataset{'; plus five deliberately broken files' if params['bad_files']
else ''}. `library.json` (written last) lists every file's genre (the ground truth) and every broken file.
"""


def _remove_paths(root: Path, rels: set[str]) -> None:
    """Delete the files ``rels`` (relative to ``root``) and the folders they leave empty."""
    for rel in sorted(rels):
        path = root / rel
        if rel and path.is_file() and root.resolve() in path.resolve().parents:
            path.unlink()
            for parent in path.parents:
                if parent == root or any(parent.iterdir()):
                    break
                parent.rmdir()


def make_library(out_dir: str | Path, n_files: int, seed: int, *, min_seconds: float = 120.0,
                 max_seconds: float = 360.0, formats: Sequence[str] = ("wav", "flac", "mp3", "ogg"),
                 sample_rates: Sequence[int] = (44100, 22050, 48000), stereo: bool = True,
                 bad_files: bool = True, progress: bool = True, workers: int | None = None) -> LibraryResult:
    """Write a user-like music library for ``raygenre label`` into ``out_dir``; a no-op when already complete.

    ``n_files`` good files of ``min_seconds``..``max_seconds`` (uniform), each of a random genre, in
    ``Artist NN/Album NN/NN - Title.ext``, written in a random one of ``formats`` (wav, flac, mp3, ogg) at a
    random one of ``sample_rates``, stereo unless ``stereo=False``. ``bad_files`` adds five broken files
    (an empty .mp3, a text file named .flac, a corrupt .wav, a truncated .flac, a 1 s .wav) among them.
    ``library.json`` (written last) holds the parameters, each good file's genre and each bad file's kind.
    Parallel over files (longest first) and deterministic: same arguments, same bytes.
    """
    t0 = time.monotonic()
    root = Path(out_dir)
    bad_fmt = [f for f in formats if f not in FORMATS]
    if bad_fmt:
        raise ValueError(f"unsupported format(s) {bad_fmt}; choose from {sorted(FORMATS)}")
    if not 0 < min_seconds <= max_seconds:
        raise ValueError(f"need 0 < min_seconds <= max_seconds, got {min_seconds}, {max_seconds}")
    params = {"n_files": n_files, "seed": seed, "min_seconds": min_seconds, "max_seconds": max_seconds,
              "formats": list(formats), "sample_rates": list(sample_rates), "stereo": stereo,
              "bad_files": bad_files, "synth_version": SYNTH_VERSION}
    old = _read_json(root / LIBRARY_MARKER)
    if old is not None and old.get("params") == params:
        return LibraryResult(root=root, genres={f["path"]: f["genre"] for f in old["files"]},
                             bad={b["path"]: b["kind"] for b in old["bad"]}, seconds=time.monotonic() - t0,
                             audio_seconds=sum(f["seconds"] for f in old["files"]), skipped=True)
    if root.is_dir() and any(root.iterdir()) and not (root / NOTE).exists():
        raise FileExistsError(f"{root} is not empty and is not a raygenre synthetic library; choose an empty "
                              f"folder (this would mix synthetic files into a real collection)")
    layout = _library_layout(n_files, seed, min_seconds, max_seconds, formats, sample_rates, stereo, bad_files)
    root.mkdir(parents=True, exist_ok=True)
    (root / NOTE).write_text(_library_note(params))
    # Files of an earlier library (complete, or interrupted: its plan) that this one does not have go.
    planned = root / PLAN
    earlier = {e.get("path", "") for m in (old, _read_json(planned)) if m
               for e in m.get("files", []) + m.get("bad", [])}
    (root / LIBRARY_MARKER).unlink(missing_ok=True)
    _remove_paths(root, earlier - {j.path for j in layout})
    planned.write_text(json.dumps({"files": [{"path": j.path} for j in layout]}))
    jobs = [dataclasses.replace(j, path=str(root / j.path)) for j in layout]
    # Longest first, MP3/OGG (slow encoders) weighted up, so the pool does not end on one long file.
    cost = {"mp3": 8.0, "ogg": 4.0, "flac": 1.2, "wav": 1.0}
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i].seconds * jobs[i].sr * cost[jobs[i].fmt])
    lengths = _run_pool(_write_library_file, [jobs[i] for i in order], workers, progress, "library", "file")
    seconds_of = {order[k]: s for k, s in enumerate(lengths)}
    good = [(j, seconds_of[i]) for i, j in enumerate(layout) if not j.kind]
    bad = [j for j in layout if j.kind]
    reasons = {"empty": "0 bytes", "not_audio": "a text file with an audio extension",
               "corrupt": "RIFF header followed by garbage",
               "truncated": "header claims more audio than the file holds",
               "too_short": "1 s of audio, shorter than one segment"}
    manifest = {
        "generator": "raygenre.synth.make_library", "raygenre_version": __version__, "synthetic": True,
        "params": params,
        "files": [{"path": j.path, "genre": j.genre, "format": j.fmt, "sample_rate": j.sr, "channels": j.channels,
                   "seconds": round(s, 3)} for j, s in good],
        "bad": [{"path": j.path, "kind": j.kind, "format": j.fmt, "reason": reasons[j.kind]} for j in bad],
    }
    tmp = _tmp(root / LIBRARY_MARKER)
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, root / LIBRARY_MARKER)
    planned.unlink(missing_ok=True)
    return LibraryResult(root=root, genres={j.path: j.genre for j, _ in good}, bad={j.path: j.kind for j in bad},
                         seconds=time.monotonic() - t0, audio_seconds=sum(s for _, s in good), skipped=False)


__all__ = ["GENRES", "RECIPES", "LibraryResult", "Recipe", "SynthResult", "make_library", "render_track",
           "synthesize"]
