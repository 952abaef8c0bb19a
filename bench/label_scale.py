"""`raygenre label` bookkeeping at library scale: first run, a resume with nothing changed, and the floor.

Generates N short WAV files (0.5 s, too short for a 3 s segment: each gets an error row after reading its
header, so what is timed is the scan, resume and output bookkeeping, not the model) in nested folders of 100,
then times (a) the first `raygenre label` run, (b) a resume with nothing changed, (c) a resume after 1 % of
the files changed (mtime), each as a CLI subprocess with the driver's peak RSS (VmHWM, polled), against the
floor: a plain os.scandir + stat walk of the same library, measured in the same run, and (b) against (b) on
the smallest library. SYNTHETIC files. Usage: python bench/label_scale.py [--files 1000,10000]
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


def one_size(files: int, model: str | None) -> dict[str, tuple[float, int]]:
    """(seconds, driver MiB) of the floor, the first run, a no-op resume and a resume after 1 % changed."""
    raygenre = str(Path(sys.executable).with_name("raygenre"))
    with tempfile.TemporaryDirectory(prefix="label-scale-") as tmp:
        lib, out = Path(tmp) / "library", Path(tmp) / "labels.parquet"
        make_library(lib, files)
        env = {**os.environ, "RAYGENRE_PROGRESS": "0"}
        cmd = [raygenre, "label", str(lib), "--out", str(out), *(["--model", model] if model else [])]
        res = {"first": timed(cmd, env), "noop": timed(cmd, env)}
        changed = sorted(lib.rglob("*.wav"))[:: 100]  # 1 %: their mtime moves, so they are labelled again
        for f in changed:
            st = f.stat()
            os.utime(f, (st.st_atime, st.st_mtime + 10))
        res["changed"] = timed(cmd, env)
        floors = []
        for _ in range(3):
            t0 = time.perf_counter()
            assert walk(str(lib)) == files
            floors.append(time.perf_counter() - t0)
        res["floor"] = (min(floors), 0)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", default="1000,10000", help="library sizes, comma-separated (the first is the "
                                                          "baseline of the growth ratio)")
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    sizes = [int(n) for n in args.files.split(",")]
    runs = {n: one_size(n, args.model) for n in sizes}
    base = runs[sizes[0]]
    print("label_scale: SYNTHETIC 0.5 s files in nested folders (each an error row: bookkeeping is measured)")
    print("| files | floor (walk) s | first run s (MiB) | no-op resume s (MiB) | no-op - floor | "
          f"no-op vs {sizes[0]} files | 1 % changed s (MiB) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, r in runs.items():
        print(f"| {n:,} | {r['floor'][0]:.3f} | {r['first'][0]:.1f} ({r['first'][1]}) | {r['noop'][0]:.2f} "
              f"({r['noop'][1]}) | {r['noop'][0] - r['floor'][0]:.2f} s | **{r['noop'][0] / base['noop'][0]:.2f}x** | "
              f"{r['changed'][0]:.1f} ({r['changed'][1]}) |")
    print("Targets (#21): a no-op resume of 10,000 files under 10 s and at most 1.5x that of 1,000 files.")


if __name__ == "__main__":
    main()
