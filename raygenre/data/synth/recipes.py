"""Genre recipes: per-genre ranges (tempo, swing, drum patterns, timbres, harmony, mix), the hard difficulty's
trait borrowing between genres, and chord numerals. Pure data and small draws; see the package docstring."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from raygenre.data.gtzan import GENRES

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


