"""`raygenre label` bookkeeping at library scale: first run, a resume with nothing changed, and the floor.

Generates N short WAV files (0.5 s, too short for a 3 s segment: each gets an error row after reading its
header, so what is timed is the scan, resume and output bookkeeping, not the model) in nested folders of 100,
then times (a) the first `raygenre label` run, (b) a resume with nothing changed, each as a CLI subprocess
with the driver's peak RSS (VmHWM, polled), against (c) the floor: a plain os.scandir + stat walk of the same
library, measured in the same run. SYNTHETIC files. Usage: python bench/label_scale.py [--files 10000]
[--model DIR] (default model: the workspace's best; `raygenre tune` or `make demo` makes one).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent


def make_library(root: Path, files: int) -> None:
    """``files`` 0.5 s mono WAVs, 100 per folder, two levels deep."""
    y = (0.1 * np.random.default_rng(0).standard_normal(11025)).astype(np.float32)
    for i in range(files):
        d = root / f"artist{i // 1000:03d}" / f"album{(i // 100) % 10:02d}"
        d.mkdir(parents=True, exist_ok=True)
        sf.write(d / f"{i:06d}.wav", y, 22050, subtype="PCM_16")


def walk(root: str) -> int:
    """The floor: every entry listed and stat'ed once."""
    n, stack = 0, [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    e.stat()
                    n += 1
    return n


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    """(seconds, driver peak RSS in MiB) of one CLI run; raises on a non-zero exit."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.2)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode not in (0, 1):  # 1: some files could not be labelled (here: all, by design)
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    return time.perf_counter() - t0, peak // 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    raygenre = str(Path(sys.executable).with_name("raygenre"))
    with tempfile.TemporaryDirectory(prefix="label-scale-") as tmp:
        lib, out = Path(tmp) / "library", Path(tmp) / "labels.parquet"
        make_library(lib, args.files)
        env = {**os.environ, "RAYGENRE_PROGRESS": "0"}
        cmd = [raygenre, "label", str(lib), "--out", str(out), *(["--model", args.model] if args.model else [])]
        first = timed(cmd, env)
        noop = timed(cmd, env)
        floors = []
        for _ in range(3):
            t0 = time.perf_counter()
            assert walk(str(lib)) == args.files
            floors.append(time.perf_counter() - t0)
        floor = min(floors)
        print(f"label_scale: {args.files} files (SYNTHETIC, 0.5 s each)")
        print(f"  floor (scandir + stat walk):   {floor:8.3f} s")
        print(f"  first run:                     {first[0]:8.1f} s   driver peak {first[1]} MiB")
        print(f"  resume, nothing changed:       {noop[0]:8.1f} s   driver peak {noop[1]} MiB   "
              f"= floor + {noop[0] - floor:.1f} s ({1e3 * (noop[0] - floor) / args.files:.3f} ms per file)")


if __name__ == "__main__":
    main()
