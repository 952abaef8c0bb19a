"""The workspace (``$RAYGENRE_HOME``, default ``~/.raygenre``): the built-in dataset, its features, models; and
the other settings raygenre reads from the environment (``RAYGENRE_PROGRESS``).

Layout::

    $RAYGENRE_HOME/datasets/synthetic-gtzan/    the built-in synthetic dataset (NOT real music)
    $RAYGENRE_HOME/features/synthetic-gtzan/    its Parquet MFCC table + features.json
    $RAYGENRE_HOME/runs/<command>-<time>/       train / tune runs
    $RAYGENRE_HOME/models/best/                 the default model used by `raygenre label`
    $RAYGENRE_HOME/cache/splits/<table key>/    memory-mapped train/val splits (rebuilt when missing)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

SYNTHETIC_NOTICE = "synthetic data: procedural audio, NOT real music; numbers from it say nothing about real genres"


def home() -> Path:
    """``$RAYGENRE_HOME`` or ``~/.raygenre``."""
    return Path(os.environ.get("RAYGENRE_HOME") or Path.home() / ".raygenre").expanduser()


def builtin_dataset_dir() -> Path:
    return home() / "datasets" / "synthetic-gtzan"


def builtin_features_dir() -> Path:
    return home() / "features" / "synthetic-gtzan"


def default_model_dir() -> Path:
    """Where `raygenre tune` (and `train --set-default`) put the model `raygenre label` uses by default."""
    return home() / "models" / "best"


def split_cache_dir() -> Path:
    """Memory-mapped train/val splits, one folder per feature table (``raygenre.data.splits``): about the
    size of the table's train+val MFCC on every node that trains, rebuilt when missing."""
    return home() / "cache" / "splits"


def new_run_dir(command: str) -> Path:
    """A fresh, time-stamped run folder under the workspace."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = home() / "runs" / f"{command}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = home() / "runs" / f"{command}-{stamp}-{n}"
    return path


def progress_bars_wanted() -> bool:
    """Ray Data's live bars: on a terminal by default; ``RAYGENRE_PROGRESS=0|1`` forces them off or on.

    Off when stderr is not a terminal, because redrawn bars turn CI logs and ``ray job logs`` into noise.
    """
    forced = os.environ.get("RAYGENRE_PROGRESS", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return sys.stderr.isatty()
