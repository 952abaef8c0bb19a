"""``synthesize``: the built-in SYNTHETIC dataset in GTZAN layout (``synth.json`` written last marks it
complete), with GTZAN's faults on request; also the file helpers the library writer shares."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import re
import struct
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from raygenre import __version__
from raygenre.config import SynthConfig, to_dict
from raygenre.data.gtzan import GENRES
from raygenre.data.synth.compose import render_track, to_pcm16
from raygenre.data.synth.recipes import DIFFICULTIES
from raygenre.workspace import progress_bars_wanted

DURATION_JITTER = 0.02  # with faults on, lengths vary by up to +-2 % (GTZAN: 29.93-30.65 s)
TRUNCATED_KEEP_S = 2.0  # audio left in the truncated file: less than one 3 s segment, so it is "too short"
CORRUPT_INDEX = 54  # jazz.00054.wav: the Kaggle copy's undecodable file
NOTE = "SYNTHETIC.md"
MARKER = "synth.json"
SYNTH_VERSION = 1  # bump whenever the generated audio changes, so complete old datasets are regenerated
# ===================================================================================== files and faults
def temp_name(path: Path) -> Path:
    """A hidden temporary name beside ``path`` (dataset scanners skip dot files)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a temporary name, then ``os.replace``)."""
    tmp = temp_name(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def corrupt_wav_bytes(size: int) -> bytes:
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
        write_atomic(path, corrupt_wav_bytes(44 + 2 * job.samples))
        return 0
    rng = np.random.default_rng([job.seed, job.genre_idx, job.index])
    y = render_track(GENRES[job.genre_idx], rng, job.samples, job.sr, difficulty=job.difficulty)
    if job.fault == "truncated":
        keep = min(int(TRUNCATED_KEEP_S * job.sr), job.samples // 2)
        write_atomic(path, _truncate_wav(_wav_bytes(y, job.sr), keep, 2))
        return keep
    tmp = temp_name(path)
    sf.write(tmp, to_pcm16(y), job.sr, format="WAV", subtype="PCM_16")
    os.replace(tmp, path)
    return job.samples


def run_pool(fn: Any, jobs: Sequence[Any], workers: int | None, progress: bool, desc: str, unit: str,
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


def read_marker(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


HARD_NOTE = (" (each track borrows groups of traits - rhythm, drums, bass, chords, lead, harmony, mix - from "
             "random other genres, with louder noise: genres overlap the way real ones do)")


def _note(cfg: SynthConfig) -> str:
    return f"""# SYNTHETIC dataset: procedural audio, NOT real music

Generated by `raygenre.data.synth.dataset.synthesize` (`raygenre synth`; raygenre {__version__}, generator version
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
    old = read_marker(root / MARKER)
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
    run_pool(_write_track, jobs, workers, progress, "synth", "track", chunksize=4)
    tmp = temp_name(root / MARKER)
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


