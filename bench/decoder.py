"""What the decoder child costs: label's per-file decode + MFCC in the task itself vs through ``raygenre.data.decoder``.

Every file is decoded in a child process (a hang or crash then costs one file, see raygenre/data/decoder.py). This
measures the price of that isolation where it is largest, with no Ray and nothing else running: one process
labels-decodes N files (44.1 kHz stereo, 4 minutes, FLAC and WAV; synthetic noise, NOT music: speed does not
depend on content) with ``decode_timeout_s: 0`` (in-process) and with the default limit (the child), alternating
runs so both see the same page cache. Prints ms per file and the ratio child / in-process.

    python bench/decoder.py [--files 24] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import results_block  # noqa: E402

from raygenre import decoder  # noqa: E402
from raygenre.config import load_config  # noqa: E402
from raygenre.label.predict import decode_file  # noqa: E402

CFG = load_config("label")
P = load_config("featurize").features


def make_files(folder: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        y = (0.1 * rng.standard_normal((240 * 44100, 2))).astype(np.float32)
        path = folder / f"f{i:03d}.{'flac' if i % 2 else 'wav'}"
        sf.write(path, y, 44100, subtype="PCM_16")
        paths.append(str(path))
    return paths


def one_round(paths: list[str], timeout_s: float) -> float:
    t0 = time.perf_counter()
    for path in paths:
        decode_file(path, P, CFG.segments_per_track, timeout_s)
    return (time.perf_counter() - t0) / len(paths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_files(Path(tmp), args.files)
        one_round(paths[:2], 0)  # warm both ways: imports, MFCC transform, the child's start (about 0.3 s, once)
        one_round(paths[:2], CFG.decode_timeout_s)
        inproc, child = [], []
        for _ in range(args.rounds):
            inproc.append(one_round(paths, 0))
            child.append(one_round(paths, CFG.decode_timeout_s))
        decoder.decoder(CFG.decode_timeout_s).kill()
    a, b = statistics.median(inproc), statistics.median(child)
    lines = [f"Label decode + MFCC of {args.files} files (4 min, 44.1 kHz stereo, FLAC/WAV, synthetic noise), "
             f"median of {args.rounds} rounds, one process, no Ray:", "",
             "| decoding | ms per file |", "| --- | ---: |",
             f"| in the task (decode_timeout_s: 0) | {1000 * a:.1f} |",
             f"| in the decoder child (default) | {1000 * b:.1f} |", "",
             f"Ratio child / in-process: **{b / a:.2f}x**."]
    print(results_block("Decoder child (bench/decoder.py)", lines))


if __name__ == "__main__":
    main()
