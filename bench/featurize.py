"""Featurization throughput: the tutorial's loop vs `raygenre featurize` (cold, warm) vs a no-Ray floor.

All three process the same synthetic GTZAN-size dataset (1,000 tracks x 30 s by default; synthetic audio,
NOT real music) in one run; the score is audio-seconds processed per wall-second, and the ratios between
the ways are what matter (targets on a 2-core machine: warm >= 4x the tutorial loop and >= 2/3 of the floor).

    python bench/featurize.py [--tracks-per-genre 100] [--tutorial-tracks N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT_DIR, results_block, timed  # noqa: E402

from raygenre.config import FeaturizeConfig, SynthConfig, load_config  # noqa: E402
from raygenre.data.gtzan import discover  # noqa: E402

CFG = load_config(FeaturizeConfig)
P = CFG.features


def tutorial_loop(paths: list[str]) -> int:
    """The tutorial: librosa.load each file, per-segment librosa.feature.mfcc; returns kept segments."""
    import librosa

    n = P.segment_samples
    kept = 0
    for path in paths:
        signal, sr = librosa.load(path, sr=P.sample_rate)
        for d in range(CFG.segments):
            mfcc = librosa.feature.mfcc(y=signal[d * n:(d + 1) * n], sr=sr, n_mfcc=P.n_mfcc, n_fft=P.n_fft,
                                        hop_length=P.hop_length).T
            kept += len(mfcc) == P.frames
    return kept


def _floor_chunk(paths: list[str]) -> int:
    """Decode + torchaudio MFCC, batched per track, one thread: the work featurize must do, nothing else."""
    import torch

    from raygenre.data.audio import load
    from raygenre.data.mfcc import MfccExtractor, cut_segments, mfcc_of_segments

    torch.set_num_threads(1)
    ex = MfccExtractor(P)
    kept = 0
    for path in paths:
        pieces, _, _ = cut_segments(load(path, P.sample_rate), P, CFG.segments)
        kept += len(mfcc_of_segments(pieces, ex))
    return kept


def floor(paths: list[str], workers: int) -> int:
    chunks = [paths[i::workers * 8] for i in range(workers * 8)]
    with ProcessPoolExecutor(workers) as pool:
        return sum(pool.map(_floor_chunk, chunks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracks-per-genre", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--tutorial-tracks", type=int, default=0,
                    help="run the (slow) tutorial loop on this many tracks only (0 = all); rates are per audio-second")
    args = ap.parse_args()

    from raygenre.data.synth.dataset import synthesize

    data = OUT_DIR / f"gtzan-synth-{args.tracks_per_genre}x{args.seconds:g}s"
    synthesize(data, load_config(SynthConfig, overrides={"tracks_per_genre": args.tracks_per_genre,
                                                     "seconds": args.seconds}))
    tracks, _ = discover(data)
    paths = [t.path for t in tracks]
    audio_s = len(paths) * args.seconds
    print(f"dataset: {len(paths)} synthetic tracks x {args.seconds:g} s = {audio_s / 3600:.2f} audio-hours ({data})")
    rates: dict[str, float] = {}

    sub = paths[: args.tutorial_tracks] if args.tutorial_tracks else paths
    tutorial_loop(paths[-1:])  # untimed: imports and librosa's one-off JIT compiles, as the floor is warmed too
    with timed() as t:
        tutorial_loop(sub)
    rates["tutorial"] = len(sub) * args.seconds / t[0]
    print(f"(a) tutorial loop, {len(sub)} tracks: {t[0]:.1f} s -> {rates['tutorial']:.0f} audio-s/s")

    workers = os.cpu_count() or 2
    with timed() as t:
        floor(paths, workers)
    rates["floor"] = audio_s / t[0]
    print(f"(c) floor, decode + MFCC on {workers} processes: {t[0]:.1f} s -> {rates['floor']:.0f} audio-s/s")

    out = OUT_DIR / "featurize-out"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "RAY_ADDRESS": ""}
    with timed() as t:
        subprocess.run([sys.executable, "-m", "raygenre.cli", "featurize", str(data), "--out", str(out)],
                       check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rates["cold"] = audio_s / t[0]
    print(f"(b) raygenre featurize, cold (process + Ray start-up): {t[0]:.1f} s -> {rates['cold']:.0f} audio-s/s")

    from raygenre.data.featurize import featurize
    from raygenre.runtime import ensure_ray

    ensure_ray()
    featurize(str(data), str(OUT_DIR / "featurize-warmup"), CFG, overwrite=True)  # warm the worker pool
    with timed() as t:
        featurize(str(data), str(out), CFG, overwrite=True)
    rates["warm"] = audio_s / t[0]
    print(f"(b) raygenre featurize, warm (Ray running): {t[0]:.1f} s -> {rates['warm']:.0f} audio-s/s")

    lines = [
        f"Synthetic GTZAN-size set: {len(paths)} tracks x {args.seconds:g} s (synthetic audio, not real music).",
        "",
        "| way | audio-s per wall-s |",
        "| --- | ---: |",
        f"| (a) tutorial loop (librosa.load + per-segment librosa MFCC; {len(sub)} tracks) | {rates['tutorial']:.0f} |",
        f"| (b) raygenre featurize, cold (incl. process + Ray start-up) | {rates['cold']:.0f} |",
        f"| (b) raygenre featurize, warm | {rates['warm']:.0f} |",
        f"| (c) floor: decode + torchaudio MFCC, {workers} processes, no Ray, no Parquet | {rates['floor']:.0f} |",
        "",
        f"- warm / tutorial = **{rates['warm'] / rates['tutorial']:.2f}x** (target >= 4x)",
        f"- cold / tutorial = {rates['cold'] / rates['tutorial']:.2f}x",
        f"- warm / floor = **{rates['warm'] / rates['floor']:.2f}** (target >= 0.67)",
    ]
    print()
    print(results_block("Featurize (bench/featurize.py)", lines))


if __name__ == "__main__":
    main()
