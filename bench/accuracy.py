"""Test accuracy of every model with 1 and 2 Ray Train workers on the HARD synthetic set (README's table).

Not a speed benchmark: it checks, at full size, what tests/test_learning.py checks on a small table, that
data-parallel training learns what one worker learns. Every run uses the default train config
(raygenre/configs/train.yaml); only the model and the worker count change. The data is the built-in synthetic dataset
(difficulty hard, 10 genres x 100 tracks x 30 s, SYNTHETIC audio, NOT real music), featurized on first use.

    python bench/accuracy.py [--models ann,cnn,lstm] [--workers 1,2] [--features DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT_DIR, results_block  # noqa: E402

from raygenre.config import TrainConfig, load_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="ann,cnn,lstm")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--features", default=None, help="feature table (default: the built-in synthetic one)")
    args = ap.parse_args()

    from raygenre.data.builtin import ensure_features
    from raygenre.data.table import read_manifest
    from raygenre.runtime import ensure_ray
    from raygenre.training.train import train

    ensure_ray()
    features = args.features or ensure_features()
    manifest = read_manifest(features)
    synthetic = " (SYNTHETIC audio, not real music)" if manifest.get("synthetic") else ""
    rows = []
    for model in args.models.split(","):
        for workers in (int(w) for w in args.workers.split(",")):
            t0 = time.perf_counter()
            r = train(features, load_config(TrainConfig, overrides={"model": model, "workers": workers}),
                      str(OUT_DIR / f"accuracy-{model}-{workers}"), storage_path=str(OUT_DIR / "runs"))
            rows.append((model, workers, r.test["track_accuracy"], r.test["segment_accuracy"], r.best_epoch,
                         len(r.history), r.eval_check["train_eval_acc"], r.eval_check["train_acc"],
                         time.perf_counter() - t0))
            print(f"{model} x {workers} workers: test tracks {r.test['track_accuracy']:.1%}, segments "
                  f"{r.test['segment_accuracy']:.1%}, best epoch {r.best_epoch}/{len(r.history)}", flush=True)
    lines = [
        f"Feature table {features}{synthetic}; default train config (raygenre/configs/train.yaml); test split.",
        "",
        "| model | workers | test track accuracy | test segment accuracy | best epoch / run | "
        "train split: eval mode / training | minutes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *[f"| {m} | {w} | {t:.1%} | {s:.1%} | {b} / {n} | {e:.1%} / {a:.1%} | {sec / 60:.1f} |"
          for m, w, t, s, b, n, e, a, sec in rows],
    ]
    print()
    print(results_block("Accuracy (bench/accuracy.py)", lines))


if __name__ == "__main__":
    main()
