"""GPU against CPU, measured in one run: train, tune and label on the built-in table (SYNTHETIC audio, not real music).

Sections (each prints a ratio against a baseline measured in the same run):

1. **train**: the loop (``train_local``: one process, the split resident on the GPU when it fits) on CPU vs one
   GPU at the tutorial's batch of 32, and one GPU at ``min_gpu_batch`` (the GPU default): steady-state seconds
   per epoch (median of epochs 2..N). Then ``raygenre train --gpu`` on Ray Train with 1 worker, and with 2 when
   the machine has two GPUs (2 GPUs vs 1).
2. **tune**: cnn trials finished per minute with one trial per GPU (``--gpus-per-trial 1``) vs two
   (``0.5``: fractional GPUs hold one worker per trial).
3. **label**: files per second of ``raygenre label --gpu`` vs ``--cpu`` on a synthetic library.
4. ``--batch-rule`` (runs on CPU too, where it is slow): best validation accuracy on the hard synthetic set of
   batch 32 at lr 1e-3 (the CPU default) vs batch 256 with no lr change, Adam's square-root rule (what
   ``gpu_batch`` does) and SGD's linear rule.

    python bench/gpu.py [--epochs 6] [--label-files 200] [--tune-samples 4] [--batch-rule] [--only train,tune,label]

Needs a CUDA device for sections 1-3 (without one it says so and exits 1). Not yet run on a GPU: no device has
been lent to a session of this project so far; ``bench/RESULTS.md`` says so until it has.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from common import OUT_DIR, results_block  # noqa: E402

from raygenre.config import LabelConfig, TrainConfig, TuneConfig, load_config  # noqa: E402


def _steady(history: list[dict[str, Any]]) -> float:
    """Median seconds per epoch after the first (warm-up: kernels compiled, split copied to the device)."""
    return statistics.median(row["seconds"] for row in history[1:])


def loop_epochs(features: str, device: str, batch: int, lr: float, epochs: int, model: str = "cnn",
                patience: int | None = None) -> dict[str, Any]:
    """``train_local`` (the loop every trainer runs) on ``device``: its final state (history, best_val_acc)."""
    from raygenre.training.train import prepare, train_local

    cfg = load_config(TrainConfig, overrides={"model": model, "epochs": epochs, "workers": 1, "batch_size": batch,
                                              "lr": lr, "patience": patience if patience is not None else epochs + 1,
                                              "min_epochs": 0 if patience is not None else epochs})
    return train_local(prepare(features, cfg), device=device)


def section_train(features: str, epochs: int, lines: list[str]) -> None:
    base = load_config(TrainConfig)
    rule = dataclasses.replace(base, gpu=True, workers=1)
    from raygenre.training.train import gpu_batch

    big = gpu_batch(rule)
    cpu = _steady(loop_epochs(features, "cpu", base.batch_size, base.lr, epochs)["history"])
    gpu32 = _steady(loop_epochs(features, "cuda", base.batch_size, base.lr, epochs)["history"])
    gpubig = _steady(loop_epochs(features, "cuda", big.batch_size, big.lr, epochs)["history"])
    lines += ["| run | s/epoch | vs CPU loop |", "| --- | ---: | ---: |",
              f"| loop, CPU ({torch.get_num_threads()} threads), batch {base.batch_size} | {cpu:.2f} | 1.00x |",
              f"| loop, 1 GPU, batch {base.batch_size} | {gpu32:.2f} | **{cpu / gpu32:.2f}x faster** |",
              f"| loop, 1 GPU, batch {big.batch_size} (min_gpu_batch), lr {big.lr:.2g} | {gpubig:.2f} | "
              f"**{cpu / gpubig:.2f}x faster** |"]
    from raygenre.training.train import train

    walls: dict[int, float] = {}
    for workers in (1, 2) if torch.cuda.device_count() >= 2 else (1,):
        cfg = dataclasses.replace(base, model="cnn", epochs=epochs, workers=workers, gpu=True, patience=epochs + 1,
                                  min_epochs=epochs)
        result = train(features, cfg, str(OUT_DIR / f"gpu-train-{workers}"), storage_path=str(OUT_DIR / "runs"))
        walls[workers] = _steady(result.history)
        lines.append(f"| raygenre train --gpu, {workers} worker(s) | {walls[workers]:.2f} | "
                     f"**{cpu / walls[workers]:.2f}x faster** |")
    if 2 in walls:
        lines.append(f"\n2 GPUs vs 1 (Ray Train, same global batch rule): **{walls[1] / walls[2]:.2f}x faster**")


def section_tune(features: str, samples: int, epochs: int, lines: list[str]) -> None:
    from raygenre.training.tune import tune_models

    base = load_config(TuneConfig)
    rates = {}
    for per_trial in (1.0, 0.5):
        cfg = dataclasses.replace(base, models=["cnn"], num_samples=samples, max_epochs=epochs, grace_period=epochs,
                                  gpus_per_trial=per_trial, workers_per_trial=1)
        t0 = time.perf_counter()
        result = tune_models(features, cfg, str(OUT_DIR / f"gpu-tune-{per_trial:g}"), set_default=False, verbose=0)
        rates[per_trial] = len(result.trials) / ((time.perf_counter() - t0) / 60)
    lines += ["", f"| tune (cnn, {samples} trials, {epochs} epochs) | trials/min | vs 1 trial per GPU |",
              "| --- | ---: | ---: |",
              f"| --gpus-per-trial 1 | {rates[1.0]:.2f} | 1.00x |",
              f"| --gpus-per-trial 0.5 | {rates[0.5]:.2f} | **{rates[0.5] / rates[1.0]:.2f}x** |"]


def section_label(files: int, lines: list[str]) -> None:
    from label import model_dir  # bench/label.py: an untrained seeded cnn artifact (speed needs no weights)

    from raygenre.data.synth.library import make_library
    from raygenre.label.pipeline import label_library

    lib = OUT_DIR / f"gpu-lib-{files}"
    make_library(lib, files, seed=3, min_seconds=30.0, max_seconds=90.0, formats=("wav", "flac"),
                 bad_files=False, progress=False)
    base = load_config(LabelConfig)
    rates = {}
    for gpu in (False, True):
        result = label_library(str(lib), str(OUT_DIR / f"gpu-labels-{gpu}.parquet"), dataclasses.replace(base, gpu=gpu),
                               model_dir=model_dir(), resume=False, progress=False)
        rates[gpu] = result.files / result.seconds
    lines += ["", f"| label ({files} SYNTHETIC files, 30-90 s) | files/s | vs CPU |", "| --- | ---: | ---: |",
              f"| --cpu | {rates[False]:.1f} | 1.00x |",
              f"| --gpu | {rates[True]:.1f} | **{rates[True] / rates[False]:.2f}x** |"]


def section_batch_rule(features: str, device: str, epochs: int, lines: list[str]) -> None:
    base = load_config(TrainConfig)
    k = 256 / base.batch_size
    runs = [(f"batch {base.batch_size}, lr {base.lr:g} (CPU default)", base.batch_size, base.lr),
            ("batch 256, lr unchanged", 256, base.lr),
            ("batch 256, lr x sqrt(8) (square-root rule: gpu_batch)", 256, base.lr * math.sqrt(k)),
            ("batch 256, lr x 8 (linear rule)", 256, base.lr * k)]
    lines += ["", f"Batch rule, cnn, hard SYNTHETIC built-in table, on {device}, up to {epochs} epochs with the "
              f"default early stopping:", "",
              "| run | best val accuracy | best epoch | vs batch 32 |", "| --- | ---: | ---: | ---: |"]
    ref = None
    for name, batch, lr in runs:
        state = loop_epochs(features, device, batch, lr, epochs, patience=base.patience)
        acc = state["best_val_acc"]
        ref = ref or acc
        lines.append(f"| {name} | {acc:.1%} | {state['best_epoch']} | {acc / ref:.2f}x |")
        print(lines[-1], flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=6, help="epochs per timed training run (>= 3)")
    ap.add_argument("--tune-samples", type=int, default=4)
    ap.add_argument("--label-files", type=int, default=200)
    ap.add_argument("--only", default="train,tune,label", help="sections to run (comma-separated)")
    ap.add_argument("--batch-rule", action="store_true", help="also (or, without CUDA, only) compare batch rules")
    ap.add_argument("--rule-epochs", type=int, default=30)
    args = ap.parse_args()
    if not torch.cuda.is_available() and not args.batch_rule:
        print("bench/gpu.py: no CUDA device here, so there is nothing to measure; run it on a machine with a GPU "
              "(--batch-rule alone runs on CPU)")
        raise SystemExit(1)
    from raygenre.data.builtin import ensure_features

    features = ensure_features()
    lines = [f"{torch.cuda.device_count()} CUDA device(s)"
             f"{': ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else ''}", ""]
    if torch.cuda.is_available():
        only = set(args.only.split(","))
        if "train" in only:
            section_train(features, args.epochs, lines)
        if "tune" in only:
            section_tune(features, args.tune_samples, 3, lines)
        if "label" in only:
            section_label(args.label_files, lines)
    if args.batch_rule:
        section_batch_rule(features, "cuda" if torch.cuda.is_available() else "cpu", args.rule_epochs, lines)
    print(results_block("GPU (bench/gpu.py)", lines))


if __name__ == "__main__":
    main()
