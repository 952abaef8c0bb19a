"""Labelling throughput: the tutorial's loop vs `raygenre label` (cold, warm) vs a no-Ray floor; peak memory.

A library shaped like a real collection (44.1 kHz stereo, 2-6 minutes per file, WAV/FLAC/MP3/OGG in nested
folders, a few bad files; synthetic audio, NOT real music, made by
``raygenre.data.synth.library.make_library`` and cached
under bench/out/) is labelled three ways; the score is library audio-seconds labelled per wall-second:

(a) the tutorial's way: one process, ``librosa.load`` of each whole file, the same 10 segments, per-segment
    ``librosa.feature.mfcc``, one model call per file (run on a subset; the rate is per audio-second);
(b) ``raygenre label``: cold (a fresh process, Ray start-up included) and warm (Ray running, second call);
(c) the floor: the same windowed decode + MFCC in a 2-process pool, no model, no Ray.

Then peak memory of all Ray worker processes together while labelling 300 and 3,000 short files (8-20 s WAV
and FLAC, to keep time down): it must not grow with the library. The model is an untrained, seeded CNN artifact: speed
does not depend on the weights.

    python bench/label.py [--files 300] [--tutorial-files 30] [--memory-files 300 3000] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT_DIR, results_block, timed  # noqa: E402

from raygenre.config import FeaturizeConfig, LabelConfig, load_config  # noqa: E402
from raygenre.label.scan import SCAN_SHARDS, walk_shard  # noqa: E402

CFG = load_config(LabelConfig)
P = load_config(FeaturizeConfig).features
EXTS = frozenset(CFG.extensions)


# --------------------------------------------------------------------------------------------- inputs
def library(name: str, files: int, seed: int, min_s: float, max_s: float,
            formats: tuple[str, ...] = ("wav", "flac", "mp3", "ogg")) -> tuple[Path, int]:
    """(folder, bad files) of a cached synthetic library under bench/out/ (made once; 44.1 kHz stereo)."""
    from raygenre.data.synth.library import make_library

    out = OUT_DIR / name
    result = make_library(out, files, seed, min_seconds=min_s, max_seconds=max_s, formats=formats,
                          sample_rates=(44100,), stereo=True, bad_files=True, progress=True)  # no-op when complete
    if not result.skipped:
        print(f"made {out}: {files} files, {min_s:g}-{max_s:g} s, in {result.seconds:.0f} s", flush=True)
    return out, len(result.bad)


def model_dir() -> str:
    """An untrained, seeded CNN artifact (labelling speed does not depend on the weights)."""
    import numpy as np
    import torch

    from raygenre.model.artifact import save_model
    from raygenre.model.networks import build_model

    out = OUT_DIR / "label-model"
    if not (out / "model.json").exists():
        torch.manual_seed(0)
        genres = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]
        save_model(str(out), build_model("cnn", P.frames, P.n_mfcc, len(genres)), name="cnn",
                   hparams={"hidden": 64, "dropout": 0.3}, features=P, genres=genres,
                   mean=np.r_[-250.0, 80.0, np.zeros(P.n_mfcc - 2)], std=np.full(P.n_mfcc, 40.0), metrics={},
                   synthetic=True)
    return str(out)


def audio_files(root: Path) -> list[str]:
    """Every audio file (by extension) the way `raygenre label` finds them, sorted."""
    return sorted(f.path for k in range(SCAN_SHARDS) for f in walk_shard(str(root), k, SCAN_SHARDS, EXTS))


def durations(paths: list[str]) -> dict[str, float]:
    """Header duration (s) of each readable file; bad files count 0."""
    from raygenre.data.audio import AudioError, info

    out = {}
    for p in paths:
        try:
            out[p] = info(p).duration_s
        except AudioError:
            out[p] = 0.0
    return out


# ------------------------------------------------------------------------------------------ (a) tutorial
def tutorial_loop(paths: list[str], model_path: str) -> int:
    """librosa.load each whole file, the same evenly spread segments, per-segment librosa MFCC, one model call."""
    import warnings

    import librosa
    import numpy as np

    from raygenre.data.mfcc import window_starts
    from raygenre.model.artifact import load_model

    model = load_model(model_path)
    n, labelled = P.segment_samples, 0
    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                signal, sr = librosa.load(path, sr=P.sample_rate)
        except Exception:  # noqa: BLE001 - bad files, as the tutorial would skip them
            continue
        mfccs = []
        for start in window_starts(len(signal) / sr, P, CFG.segments_per_track):
            i = int(round(start * sr))
            mfcc = librosa.feature.mfcc(y=signal[i:i + n], sr=sr, n_mfcc=P.n_mfcc, n_fft=P.n_fft,
                                        hop_length=P.hop_length).T
            if len(mfcc) == P.frames:
                mfccs.append(mfcc)
        if mfccs:
            model.predict_proba(np.stack(mfccs).astype(np.float32)).mean(axis=0).argmax()
            labelled += 1
    return labelled


# --------------------------------------------------------------------------------------------- (c) floor
def _floor_init() -> None:
    import torch

    torch.set_num_threads(1)


def _floor_chunk(paths: list[str]) -> int:
    """Windowed decode + MFCC (what `raygenre label` must do per file), no model, no Ray."""
    from raygenre.data.audio import AudioError
    from raygenre.label.predict import decode_file

    done = 0
    for path in paths:
        try:
            decode_file(path, P, CFG.segments_per_track)
            done += 1
        except AudioError:
            pass
    return done


def floor(paths: list[str], workers: int) -> float:
    """Wall seconds of the floor on ``workers`` processes (pool start-up excluded: it is warmed first)."""
    chunks = [paths[i::workers * 8] for i in range(workers * 8)]
    with ProcessPoolExecutor(workers, initializer=_floor_init) as pool:
        list(pool.map(_floor_chunk, [paths[:1]] * workers))  # import torch & co. in every worker
        with timed() as t:
            sum(pool.map(_floor_chunk, chunks))
    return t[0]


# -------------------------------------------------------------------------------------------- raygenre
def cold(lib: Path, model: str) -> float:
    """Wall seconds of `raygenre label` in a fresh process (Python + Ray start-up included)."""
    out = OUT_DIR / "labels-cold.parquet"
    env = {**os.environ, "RAY_ADDRESS": ""}
    with timed() as t:
        rc = subprocess.run([sys.executable, "-m", "raygenre.cli", "label", str(lib), "--model", model, "--out",
                             str(out), "--no-resume"], env=env, stdout=subprocess.DEVNULL).returncode
    if rc not in (0, 1):  # 1: the library's deliberate bad files
        raise SystemExit(f"raygenre label failed (exit {rc})")
    return t[0]


def _rss_and_cmd(pid: int) -> tuple[int, str] | None:
    """(resident bytes, command line) of ``pid`` from /proc, or None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return kb * 1024, cmd


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the Ray processes this process started), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


class MemorySampler(threading.Thread):
    """Samples the summed RSS of this process's Ray processes (workers, and all of them) every 0.25 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_workers = self.peak_all = 0
        self.workers_seen = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            workers = everything = n = 0
            for pid in _descendants(os.getpid()):
                got = _rss_and_cmd(pid)
                if got is None:
                    continue
                rss, cmd = got
                everything += rss
                if cmd.startswith("ray::") or "default_worker.py" in cmd:
                    workers += rss
                    n += 1
            self.peak_workers, self.peak_all = max(self.peak_workers, workers), max(self.peak_all, everything)
            self.workers_seen = max(self.workers_seen, n)
            time.sleep(0.25)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def warm(lib: Path, model: str, tag: str) -> tuple[float, float, MemorySampler]:
    """(wall seconds, audio seconds labelled, memory) of `label_library` with Ray already running."""
    from raygenre.label.pipeline import label_library

    sampler = MemorySampler()
    sampler.start()
    with timed() as t:
        result = label_library(str(lib), str(OUT_DIR / f"labels-{tag}.parquet"), CFG, model_dir=model,
                               resume=False, progress=True)
    sampler.stop()
    return t[0], result.audio_hours * 3600, sampler


def warm_up(lib: Path, model: str) -> None:
    """A first in-process call on 8 of the library's files, so that the timed call is the second one."""
    from raygenre.label.pipeline import label_library

    small = OUT_DIR / "label-warmup"
    shutil.rmtree(small, ignore_errors=True)
    small.mkdir(parents=True)
    for i, p in enumerate(audio_files(lib)[:8]):
        (small / f"{i}{Path(p).suffix}").symlink_to(p)
    label_library(str(small), str(OUT_DIR / "labels-warmup.parquet"), CFG, model_dir=model, resume=False,
                  progress=False)


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=300, help="files in the main library (2-6 min each)")
    ap.add_argument("--tutorial-files", type=int, default=30,
                    help="run the (slow) tutorial loop on this many files (0 = all); its rate is per audio-second")
    ap.add_argument("--memory-files", type=int, nargs="*", default=[300, 3000],
                    help="sizes of the short-file libraries for the memory check")
    ap.add_argument("--quick", action="store_true", help="40 files, tutorial on 8, memory at 50 and 500 files")
    args = ap.parse_args()
    if args.quick:
        args.files, args.tutorial_files, args.memory_files = 40, 8, [50, 500]
    workers = os.cpu_count() or 2

    lib, bad = library(f"label-library-{args.files}", args.files, seed=0, min_s=120, max_s=360)
    # Memory libraries: short WAV/FLAC files (MP3/OGG encoding would make 3,000 files take an hour to build).
    short_libs = {n: library(f"label-short-{n}", n, seed=1, min_s=8, max_s=20, formats=("wav", "flac"))[0]
                  for n in args.memory_files}
    model = model_dir()
    paths = audio_files(lib)
    dur = durations(paths)
    audio_s = sum(dur.values())
    print(f"library: {len(paths)} files ({bad} bad), {audio_s / 3600:.2f} audio-hours ({lib})", flush=True)
    rates: dict[str, float] = {}
    loads: dict[str, float] = {}  # 1-minute load average after each way: other work on the machine skews the ratios

    step = max(1, len(paths) // args.tutorial_files) if args.tutorial_files else 1
    sub = paths[::step][: args.tutorial_files or None]
    tutorial_loop(paths[1:2], model)  # untimed: imports and librosa's one-off JIT compiles (the floor is warmed too)
    with timed() as t:
        tutorial_loop(sub, model)
    sub_s = sum(dur[p] for p in sub)
    rates["tutorial"] = sub_s / t[0]
    loads["tutorial"] = os.getloadavg()[0]
    print(f"(a) tutorial loop, {len(sub)} files ({sub_s / 3600:.2f} h): {t[0]:.1f} s -> "
          f"{rates['tutorial']:.0f} audio-s/s", flush=True)

    secs = floor(paths, workers)
    rates["floor"] = audio_s / secs
    loads["floor"] = os.getloadavg()[0]
    print(f"(c) floor, windowed decode + MFCC on {workers} processes: {secs:.1f} s -> {rates['floor']:.0f} audio-s/s",
          flush=True)

    secs = cold(lib, model)
    rates["cold"] = audio_s / secs
    loads["cold"] = os.getloadavg()[0]
    print(f"(b) raygenre label, cold (process + Ray start-up): {secs:.1f} s -> {rates['cold']:.0f} audio-s/s",
          flush=True)

    from raygenre.runtime import ensure_ray

    ensure_ray()
    warm_up(lib, model)
    secs, labelled_s, mem_main = warm(lib, model, "warm")
    rates["warm"] = audio_s / secs
    loads["warm"] = os.getloadavg()[0]
    print(f"(b) raygenre label, warm (Ray running): {secs:.1f} s -> {rates['warm']:.0f} audio-s/s "
          f"(labelled {labelled_s / 3600:.2f} h); peak RSS of Ray workers {mem_main.peak_workers / 2**20:.0f} MiB",
          flush=True)

    memory = {}
    for n, short in short_libs.items():
        secs_n, audio_n, sampler = warm(short, model, f"short-{n}")
        memory[n] = (sampler, secs_n, audio_n)
        print(f"memory, {n} short files ({audio_n / 3600:.2f} h, {secs_n:.1f} s): Ray workers peak "
              f"{sampler.peak_workers / 2**20:.0f} MiB over <= {sampler.workers_seen} workers; all Ray processes "
              f"{sampler.peak_all / 2**20:.0f} MiB", flush=True)

    lines = [
        f"Library: {len(paths)} files, {audio_s / 3600:.2f} audio-hours, 44.1 kHz stereo, 2-6 min each, WAV/FLAC/MP3/"
        f"OGG in nested folders, {bad} bad files (synthetic audio from "
        f"`raygenre.data.synth.library.make_library`, not real music). Model: untrained seeded CNN (speed does not "
        f"depend on the weights). 10 segments per file.",
        "",
        "| way | audio-s per wall-s | load avg after |",
        "| --- | ---: | ---: |",
        f"| (a) tutorial loop: librosa.load whole file + per-segment librosa MFCC + 1 model call per file "
        f"(run on {len(sub)} of the files, rate per audio-second) | {rates['tutorial']:.0f} | "
        f"{loads['tutorial']:.1f} |",
        f"| (b) raygenre label, cold (fresh process, incl. Ray start-up) | {rates['cold']:.0f} | {loads['cold']:.1f} |",
        f"| (b) raygenre label, warm (Ray running, second call) | {rates['warm']:.0f} | {loads['warm']:.1f} |",
        f"| (c) floor: windowed decode + MFCC, {workers}-process pool, no model, no Ray | {rates['floor']:.0f} | "
        f"{loads['floor']:.1f} |",
        "",
        f"- warm / tutorial = **{rates['warm'] / rates['tutorial']:.1f}x** (target >= 10x); "
        f"cold / tutorial = {rates['cold'] / rates['tutorial']:.1f}x",
        f"- floor / warm = **{rates['floor'] / rates['warm']:.2f}x** (target <= 2x)",
        f"- load average: {workers} means the machine was otherwise idle; more means other work shared the cores",
        "",
        "Peak memory, all Ray worker processes together (summed RSS sampled every 0.25 s; shared pages such as "
        "torch's libraries count once per process, so this over-states):",
        "",
        "| library | files | audio-h | peak RSS, Ray workers | peak RSS, all Ray processes |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| main (2-6 min files) | {len(paths)} | {audio_s / 3600:.2f} | {mem_main.peak_workers / 2**20:.0f} MiB | "
        f"{mem_main.peak_all / 2**20:.0f} MiB |",
        *[f"| short WAV/FLAC files (8-20 s) | {n} | {a / 3600:.2f} | {s.peak_workers / 2**20:.0f} MiB | "
          f"{s.peak_all / 2**20:.0f} MiB |" for n, (s, _, a) in memory.items()],
    ]
    print()
    print(results_block("Label (bench/label.py)", lines))


if __name__ == "__main__":
    main()
