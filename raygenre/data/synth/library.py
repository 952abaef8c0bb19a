"""``make_library``: a user-like SYNTHETIC music collection for ``raygenre label`` (nested folders, stereo,
mixed rates and formats, a few broken files), with the ground truth in ``library.json``."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from raygenre import __version__
from raygenre.data.gtzan import GENRES
from raygenre.data.synth.compose import CHUNK_S, Song, compose, to_pcm16
from raygenre.data.synth.dataset import (
    NOTE,
    SYNTH_VERSION,
    corrupt_wav_bytes,
    read_marker,
    run_pool,
    temp_name,
    write_atomic,
)

LIBRARY_MARKER = "library.json"
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
    tmp = temp_name(path)
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
        write_atomic(path, b"")
        return 0.0
    if job.kind == "not_audio":
        write_atomic(path, b"Track list\n\n1. Intro\n2. Outro\n\nThis is a text file with an audio name.\n" * 20)
        return 0.0
    if job.kind == "corrupt":
        write_atomic(path, corrupt_wav_bytes(200_000))
        return 0.0
    total = max(1, int(round(job.seconds * job.sr)))
    song = compose(job.genre, rng, total, job.sr, job.channels)
    _write_audio(path, song, total, job.sr, job.channels, job.fmt)
    if job.kind == "truncated":  # keep the header (claims the full length) and the first 30 % of the frames
        data = path.read_bytes()
        write_atomic(path, data[: max(len(data) * 3 // 10, 256)])
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

Generated by `raygenre.data.synth.library.make_library` (raygenre {__version__}) with seed **{params['seed']}**
for trying and benchmarking `raygenre label`: {params['n_files']} files of
{params['min_seconds']:g}-{params['max_seconds']:g} s in nested `Artist NN/Album NN/NN - Title.ext` folders,
formats {', '.join(params['formats'])}, sample rates
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
    old = read_marker(root / LIBRARY_MARKER)
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
    earlier = {e.get("path", "") for m in (old, read_marker(planned)) if m
               for e in m.get("files", []) + m.get("bad", [])}
    (root / LIBRARY_MARKER).unlink(missing_ok=True)
    _remove_paths(root, earlier - {j.path for j in layout})
    planned.write_text(json.dumps({"files": [{"path": j.path} for j in layout]}))
    jobs = [dataclasses.replace(j, path=str(root / j.path)) for j in layout]
    # Longest first, MP3/OGG (slow encoders) weighted up, so the pool does not end on one long file.
    cost = {"mp3": 8.0, "ogg": 4.0, "flac": 1.2, "wav": 1.0}
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i].seconds * jobs[i].sr * cost[jobs[i].fmt])
    lengths = run_pool(_write_library_file, [jobs[i] for i in order], workers, progress, "library", "file")
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
    tmp = temp_name(root / LIBRARY_MARKER)
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, root / LIBRARY_MARKER)
    planned.unlink(missing_ok=True)
    return LibraryResult(root=root, genres={j.path: j.genre for j, _ in good}, bad={j.path: j.kind for j in bad},
                         seconds=time.monotonic() - t0, audio_seconds=sum(s for _, s in good), skipped=False)
