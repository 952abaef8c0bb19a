"""How long `raygenre --help` takes, warm: the median of a few runs, next to `python -c pass` in the same run.

    .venv/bin/python bench/cli_help.py [--runs 7]

The target (issue #15): under 1 s warm. The CLI imports neither Ray nor torch until a command runs
(tests/test_imports.py checks that); this measures what is left: Python, typer/rich, the packaged configs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def timed(argv: list[str], runs: int) -> list[float]:
    """Wall-clock seconds of ``runs`` runs of ``argv`` (output discarded), after one untimed warm-up run."""
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    help_s = statistics.median(timed([sys.executable, "-m", "raygenre", "--help"], args.runs))
    bare_s = statistics.median(timed([sys.executable, "-c", "pass"], args.runs))
    print(f"raygenre --help: {help_s:.3f} s median of {args.runs} (warm); python -c pass: {bare_s:.3f} s; "
          f"ratio {help_s / bare_s:.1f}x; target < 1 s: {'met' if help_s < 1.0 else 'MISSED'}")


if __name__ == "__main__":
    main()
