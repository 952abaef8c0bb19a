"""What a confidence threshold buys: accuracy of the files kept vs the fraction kept (SYNTHETIC hard set).

A library of the hard SYNTHETIC genres (``make_library``: not real music; the generator's genre is the truth)
is labelled once per model with ``--min-confidence 0``; then every threshold is applied to the rows, for two
scores of a file:

- ``confidence``: the top mean probability (what ``label.min_confidence`` thresholds);
- ``margin``: the top probability minus the second.

Printed per model: the accuracy of all files (the baseline measured in the same run), then, for each kept
fraction, the accuracy of the files kept under each score and its ratio to the baseline; then the confidence
thresholds themselves (what a user sets) with the fraction they keep and its accuracy.

    python bench/confidence.py [--files 300] [--models DIR ...]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from common import OUT_DIR, machine

from raygenre import workspace
from raygenre.config import load_config
from raygenre.data.synth.library import make_library
from raygenre.label.pipeline import label_library

KEPT = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
THRESHOLDS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def scores(table_path: Path, root: Path, truth: dict[str, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(correct (N,) bool, confidence (N,), margin (N,)) of the error-free rows of a label table."""
    rows = [r for r in pq.read_table(table_path).to_pylist() if r["error"] is None]
    genres = sorted(k[2:] for k in rows[0] if k.startswith("p_"))
    probs = np.array([[r[f"p_{g}"] for g in genres] for r in rows])
    top2 = np.sort(probs, axis=1)[:, -2:]
    correct = np.array([r["top_genre"] == truth[os.path.relpath(r["path"], root)] for r in rows])
    return correct, top2[:, 1], top2[:, 1] - top2[:, 0]


def kept_accuracy(correct: np.ndarray, score: np.ndarray, fraction: float) -> float:
    """Accuracy of the ``fraction`` of files with the highest ``score``."""
    k = max(1, round(fraction * len(correct)))
    return float(correct[np.argsort(-score, kind="stable")[:k]].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=300, help="synthetic files in the library (default 300)")
    ap.add_argument("--models", nargs="*", help="model folders (default: the ann, cnn and lstm of the "
                    "workspace's latest tune run, e.g. `make demo`'s)")
    args = ap.parse_args()
    runs = sorted((workspace.home() / "runs").glob("tune-*/models"))
    models = [Path(m) for m in args.models] if args.models else \
        [runs[-1] / n for n in ("ann", "cnn", "lstm")] if runs else []
    models = [m for m in models if (m / "model.json").exists()]
    if not models:
        raise SystemExit("no model found: run `make demo` (or `raygenre tune`) first, or pass --models DIR ...")
    lib = OUT_DIR / f"confidence-lib-{args.files}"
    made = make_library(lib, args.files, seed=7, min_seconds=30.0, max_seconds=60.0, formats=("wav", "flac"),
                        bad_files=False, progress=False)
    print(f"# bench/confidence.py: {machine()}")
    print(f"# {len(made.genres)} SYNTHETIC files (hard synthetic genres, not real music), 30-60 s each\n")
    cfg = load_config("label")
    for model in models:
        out = OUT_DIR / f"confidence-{model.name}-{args.files}.parquet"
        label_library(str(lib), str(out), cfg, model_dir=str(model), progress=False)
        correct, conf, margin = scores(out, lib, made.genres)
        base = float(correct.mean())
        print(f"## {model.name}: accuracy of all {len(correct)} files (baseline) {base:.1%}")
        print("| kept | accuracy by confidence | x baseline | accuracy by margin | x baseline |")
        print("|---:|---:|---:|---:|---:|")
        for f in KEPT:
            a, b = kept_accuracy(correct, conf, f), kept_accuracy(correct, margin, f)
            print(f"| {f:.0%} | {a:.1%} | {a / base:.2f}x | {b:.1%} | {b / base:.2f}x |")
        print("\n| --min-confidence | kept | accuracy of the kept | x baseline |")
        print("|---:|---:|---:|---:|")
        for t in THRESHOLDS:
            keep = conf >= t
            acc = float(correct[keep].mean()) if keep.any() else float("nan")
            print(f"| {t:g} | {keep.mean():.1%} | {acc:.1%} | {acc / base:.2f}x |")
        print()


if __name__ == "__main__":
    main()
