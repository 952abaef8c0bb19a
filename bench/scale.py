"""How memory and time grow with the data: driver and object-store peaks for train, tune and featurize.

Feature tables of 1x, 10x and 30x the built-in one (SYNTHETIC audio, not real music) are made by replicating
its rows under new track ids (``replicate``: same segments, so every epoch does the same work per row). On
each, one fresh process per measurement (its own local Ray, 2 CPUs here) runs

* ``train``: ``raygenre train --model ann --epochs 1 --workers 1`` (the library call),
* ``tune``: a small search (ann, cnn, lstm; 1 sample each, 1 epoch),

and reports the driver process's peak RSS (``ru_maxrss``: the driver alone, not Ray's own processes), the
object store's peak use (sampled every 0.5 s from the raylet, all nodes) and the epoch wall time. Then
``featurize`` runs on the built-in audio dataset and on a copy of it widened by hard links (new file names:
new tracks) and reports the same peaks. Each row prints its ratio against the 1x run of the same stage,
measured in the same invocation. The goal it shows: driver memory flat in the table size, and at most one
copy of the data in the object store for a whole search (training now maps split files, so none at all).

    python bench/scale.py [--scales 1,10,30] [--tune-scales 1,10] [--featurize-scales 1,4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT_DIR, results_block  # noqa: E402

SCALE_DIR = OUT_DIR / "scale"


def replicate(src: str, out: Path, factor: int) -> Path:
    """``src``'s feature table with every row ``factor`` times, track ids suffixed ``~k`` (cached in ``out``)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from raygenre.data.table import MANIFEST, read_manifest, table_path

    if (out / MANIFEST).exists():
        return out
    manifest = read_manifest(src)
    dst = out / "segments"
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(Path(table_path(src, manifest)).glob("*.parquet")):
        t = pq.read_table(f)
        i = t.schema.get_field_index("track_id")
        for k in range(factor):
            ids = pc.binary_join_element_wise(t.column("track_id"), pa.scalar(f"~{k}"), "")
            pq.write_table(t.set_column(i, "track_id", ids), dst / f"{k:03d}-{f.name}")
    manifest.pop("attempt", None)  # the old layout: OUT/segments beside features.json
    counts = manifest["counts"]
    for key in ("tracks_total", "segments_total"):
        counts[key] *= factor
    for key in ("tracks", "segments"):
        counts[key] = {s: {g: n * factor for g, n in d.items()} for s, d in counts[key].items()}
    manifest["dataset"] = f"{manifest.get('dataset', 'built-in')} x{factor} (replicated rows)"
    (out / MANIFEST).write_text(json.dumps(manifest))
    return out


def widen(dataset: str, out: Path, factor: int) -> Path:
    """The audio dataset with every file ``factor`` times (hard links under new names: new tracks)."""
    if (out / ".done").exists():
        return out
    for f in sorted(Path(dataset).rglob("*.wav")):
        rel = f.relative_to(dataset)
        for k in range(factor):
            link = out / rel.parent / f"{f.stem}~{k}{f.suffix}"
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                os.link(f, link)
    for extra in ("SYNTHETIC.md",):
        if (Path(dataset) / extra).exists() and not (out / extra).exists():
            os.link(Path(dataset) / extra, out / extra)
    (out / ".done").write_text("")
    return out


class StorePeak:
    """Samples the object store's bytes in use (all nodes) every ``every`` seconds in a thread."""

    def __init__(self, every: float = 0.5) -> None:
        self.peak, self.every, self._stop = 0, every, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import ray
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        state = get_state_from_address(ray.get_runtime_context().gcs_address)
        while not self._stop.is_set():
            try:
                used = get_memory_info_reply(state, timeout_seconds=5).store_stats.object_store_bytes_used
                self.peak = max(self.peak, int(used))
            except Exception:  # noqa: BLE001 - a missed sample is not a failed bench
                pass
            self._stop.wait(self.every)

    def __enter__(self) -> StorePeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def child(stage: str, source: str, out: str) -> dict[str, Any]:
    """One measurement in this (fresh) process: run ``stage`` on ``source`` into ``out``."""
    from raygenre.config import FeaturizeConfig, TrainConfig, TuneConfig, load_config
    from raygenre.runtime import ensure_ray

    ensure_ray()
    t0 = time.perf_counter()
    with StorePeak() as store:
        if stage == "train":
            from raygenre.training.train import train

            cfg = load_config(TrainConfig, overrides={"model": "ann", "epochs": 1, "workers": 1})
            res = train(source, cfg, out, storage_path=str(Path(out).parent / "runs"))
            epoch = res.history[0]["seconds"]
        elif stage == "tune":
            from raygenre.training.tune import tune_models

            cfg = load_config(TuneConfig, overrides={"num_samples": 1, "max_epochs": 1})
            res = tune_models(source, cfg, out, set_default=False, verbose=0)
            epoch = float("nan")
        else:
            from raygenre.data.featurize import featurize

            featurize(source, out, load_config(FeaturizeConfig), overwrite=True)
            epoch = float("nan")
    wall = time.perf_counter() - t0
    return {"driver_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "store_mib": store.peak / 2**20, "epoch_s": epoch, "wall_s": wall}


def measure(stage: str, source: Path, out: Path) -> dict[str, Any]:
    """``child`` in a new Python process (a fresh driver and Ray each time); its JSON result."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--child", stage, str(source), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{stage} on {source} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rows_of(stage: str, runs: list[tuple[int, int, dict[str, Any]]]) -> list[str]:
    base = runs[0][2]
    return [f"| {stage} | {f}x | {mb:,} | {r['driver_mib']:,.0f} | **{r['driver_mib'] / base['driver_mib']:.2f}x** | "
            f"{r['store_mib']:,.0f} | {r['epoch_s']:.1f} | {r['wall_s']:.0f} |" for f, mb, r in runs]


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(child(*sys.argv[2:])))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="1,10,30", help="table sizes for train (x the built-in table)")
    ap.add_argument("--tune-scales", default="1,10", help="table sizes for the small tune")
    ap.add_argument("--featurize-scales", default="1,4", help="audio dataset sizes for featurize")
    args = ap.parse_args()

    from raygenre.data.builtin import ensure_dataset, ensure_features

    base = ensure_features(say=lambda _s: None)
    print(f"built-in table (SYNTHETIC audio, not real music): {base}", flush=True)

    def table(f: int) -> tuple[Path, int]:
        path = Path(base) if f == 1 else replicate(base, SCALE_DIR / f"table-x{f}", f)
        size = sum(p.stat().st_size for p in path.rglob("*.parquet")) // 2**20
        return path, size

    lines = ["| stage | size | table MiB | driver peak MiB | vs 1x | object store peak MiB | epoch s | wall s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for stage, scales in (("train", args.scales), ("tune", args.tune_scales)):
        runs = []
        for f in [int(s) for s in scales.split(",")]:
            path, mb = table(f)
            r = measure(stage, path, SCALE_DIR / f"{stage}-x{f}")
            print(f"{stage} x{f} ({mb} MiB table): {r}", flush=True)
            runs.append((f, mb, r))
        lines += rows_of(stage, runs)
    dataset = ensure_dataset(say=lambda _s: None)
    runs = []
    for f in [int(s) for s in args.featurize_scales.split(",")]:
        src = Path(dataset) if f == 1 else widen(dataset, SCALE_DIR / f"audio-x{f}", f)
        mb = sum(p.stat().st_size for p in Path(src).rglob("*.wav")) // 2**20
        r = measure("featurize", src, SCALE_DIR / f"featurize-x{f}")
        print(f"featurize x{f} ({mb} MiB audio): {r}", flush=True)
        runs.append((f, mb, r))
    lines += rows_of("featurize", runs)
    lines += ["", "train: ann, 1 epoch, 1 worker; tune: ann+cnn+lstm, 1 sample, 1 epoch; featurize: the built-in "
              "audio (table MiB column: audio MiB). SYNTHETIC data throughout."]
    print()
    print(results_block("Scale (bench/scale.py)", lines))


if __name__ == "__main__":
    main()
