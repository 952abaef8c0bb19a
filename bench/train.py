"""Training epoch time: `raygenre train` (Ray Train, default workers: auto) vs a plain single-process PyTorch loop.

Both train the same model on the same feature table (the built-in synthetic GTZAN, featurized on first use:
synthetic audio, NOT real music), with the same global batch (segments per optimizer step), optimizer and L2
term, one epoch = one pass over the train split + one over the val split. The plain loop holds the split as
in-memory tensors and uses every core through torch's threads; Ray Train's workers map the same rows from the
split files (raygenre.data.splits), each takes its share of a fresh permutation of the split every epoch, syncs
gradients over gloo when there are several, recomputes BatchNorm statistics (cnn: one forward pass over 1,024
train segments, which the plain loop does not do) and writes a checkpoint every epoch. The score is the
steady-state epoch (median of epochs 2..N, wall time between two reports as the driver sees them: checkpointing
included); start-up (Ray, the worker group, the first epoch's warm-up) is reported separately. Target: the
default cnn run at most 1.15x the plain loop (#20; before: 1.3x with 2 workers).

    python bench/train.py [--models ann,cnn,lstm] [--epochs 4] [--workers auto|N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT_DIR, results_block, timed  # noqa: E402

from raygenre.config import TrainConfig, load_config  # noqa: E402
from raygenre.data.table import read_mfcc_table  # noqa: E402
from raygenre.model.networks import build_model, resolve_hparams  # noqa: E402

Split = tuple[torch.Tensor, torch.Tensor]  # mfcc float32 (N, frames, n_mfcc), label int64 (N,)


def split_tensors(features: str) -> dict[str, Split]:
    """The train and val splits of the table as in-memory tensors, read once with plain pyarrow."""
    table, mfcc = read_mfcc_table(features)
    split = np.asarray(table.column("split").to_pylist())
    labels = table.column("label").to_numpy().astype(np.int64)
    return {s: (torch.from_numpy(np.ascontiguousarray(mfcc[split == s])), torch.from_numpy(labels[split == s]))
            for s in ("train", "val")}


def plain_epochs(splits: dict[str, Split], model_name: str, epochs: int, batch: int, lr: float,
                 seed: int) -> list[float]:
    """The baseline: one process, in-memory tensors, torch's default threads. Returns seconds per epoch."""
    (xtr, ytr), (xva, yva) = splits["train"], splits["val"]
    mean, std = xtr.mean(dim=(0, 1)), xtr.std(dim=(0, 1)) + 1e-8  # train statistics, as raygenre does
    xtr, xva = (xtr - mean) / std, (xva - mean) / std
    hidden, wd = resolve_hparams(model_name, None, None)
    torch.manual_seed(seed)
    model = build_model(model_name, xtr.shape[1], xtr.shape[2], int(ytr.max()) + 1, hidden=hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        for idx in torch.randperm(len(ytr), generator=gen).split(batch):
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            if wd:
                loss = loss + wd * model.l2_penalty()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for i in range(0, len(yva), batch):
                F.cross_entropy(model(xva[i:i + batch]), yva[i:i + batch])
        times.append(time.perf_counter() - t0)
    return times


def ray_epochs(features: str, model_name: str, epochs: int, workers: int | None, batch: int, lr: float,
               seed: int) -> tuple[list[float], list[float], float]:
    """`raygenre train` as the CLI runs it. Returns (wall s between reports, worker compute s per epoch, total s).

    The first entry of the wall list is from the call to the first report (start-up + epoch 1).
    """
    from raygenre.training.train import train

    cfg = load_config(TrainConfig, overrides={"model": model_name, "epochs": epochs, "workers": workers,
                                          "batch_size": batch, "lr": lr, "seed": seed, "patience": epochs + 1})
    stamps: list[float] = []
    t0 = time.perf_counter()
    result = train(features, cfg, str(OUT_DIR / f"train-{model_name}"), storage_path=str(OUT_DIR / "runs"),
                   progress_callback=lambda _m: stamps.append(time.perf_counter()))
    total = time.perf_counter() - t0
    walls = np.diff([t0, *stamps]).tolist()
    return walls, [row["seconds"] for row in result.history], total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="ann,cnn,lstm")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per run (>= 3: the first is warm-up)")
    ap.add_argument("--workers", default="auto", help="Ray Train workers (default: auto, the train default)")
    ap.add_argument("--features", default=None, help="feature table (default: the built-in synthetic one)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    workers = None if args.workers == "auto" else int(args.workers)
    if args.epochs < 3:
        ap.error("--epochs must be at least 3 (epoch 1 is warm-up; the median needs two more)")

    from raygenre.data.builtin import ensure_features
    from raygenre.data.table import read_manifest
    from raygenre.runtime import ensure_ray

    base = load_config(TrainConfig)
    with timed() as t_ray:
        ensure_ray()
    features = args.features or ensure_features()
    manifest = read_manifest(features)
    counts = {s: sum(manifest["counts"]["segments"].get(s, {}).values()) for s in ("train", "val")}
    synthetic = " (SYNTHETIC audio, not real music)" if manifest.get("synthetic") else ""
    print(f"features: {features}{synthetic}; segments: {counts}; Ray start-up {t_ray[0]:.1f} s")

    splits = split_tensors(features)
    rows = []
    for name in args.models.split(","):
        plain = plain_epochs(splits, name, args.epochs, base.batch_size, base.lr, args.seed)
        walls, compute, total = ray_epochs(features, name, args.epochs, workers, base.batch_size, base.lr,
                                           args.seed)
        p, r, c = statistics.median(plain[1:]), statistics.median(walls[1:]), statistics.median(compute[1:])
        startup = total - sum(walls[1:]) - r  # everything that is not a steady-state epoch
        rows.append((name, p, r, c, startup))
        print(f"{name}: plain {p:.2f} s/epoch; Ray Train {r:.2f} s/epoch wall ({c:.2f} s in the loop), "
              f"ratio {r / p:.2f}x; start-up + warm-up {startup:.1f} s")

    lines = [
        f"Built-in feature table{synthetic}: {counts['train']} train + {counts['val']} val segments; "
        f"global batch {base.batch_size} per step, {args.epochs} epochs, median of epochs 2..{args.epochs}.",
        "",
        f"| model | plain loop, 1 process (s/epoch) | Ray Train, workers {args.workers} (s/epoch, wall) | "
        "of which in the loop | ratio | start-up + first-epoch overhead (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *[f"| {n} | {p:.2f} | {r:.2f} | {c:.2f} | **{r / p:.2f}x** | {s:.1f} |" for n, p, r, c, s in rows],
        "",
        "Target: cnn ratio <= 1.15x with the default workers (auto).",
    ]
    print()
    print(results_block("Train (bench/train.py)", lines))


if __name__ == "__main__":
    main()
