"""Fault injection: processes killed mid-run, decoders that hang or crash, a second run on the same output.

Every test runs the real ``raygenre`` CLI in its own process (its own local Ray), breaks something while it
runs, and then asserts the exact rows of the final output: every file once, the good ones labelled, the bad
ones with the reason. Decoder hangs and crashes are made on purpose by the decoder child for files whose name
holds a marker (``raygenre.data.decoder.FAULTS_ENV``); workers and actors are killed from here with SIGKILL, found
by walking the run's own process tree (never by name across the machine).

The other crafted inputs (a file that changes between two resumes, a deleted file, zero-byte and truncated
parts, non-UTF-8 names, NaN audio, lying headers, a tampered ``model.json``) are in ``test_label.py``,
``test_audio.py`` and ``test_artifact.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO, write_tone_track
from test_label import _descendants, _kill_tree, _proc_stat, random_model

from raygenre.config import load_config
from raygenre.data.decoder import FAULTS_ENV
from raygenre.label.parts import list_parts, parts_dir_of
from raygenre.label.pipeline import label_library


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _find(family: dict[int, int], pred: Callable[[int, str], bool]) -> list[int]:
    """Live processes of the run's tree for which ``pred(pid, cmdline)`` holds (same start time: not recycled)."""
    return [pid for pid, started in family.items()
            if (st := _proc_stat(pid)) is not None and st[1] == started and pred(pid, _cmdline(pid))]


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _library(root: Path, good: int, bad: tuple[str, ...] = ()) -> list[Path]:
    files = [root / f"d{i % 3}" / f"t{i:02d}.wav" for i in range(good)] + [root / name for name in bad]
    for i, path in enumerate(files):
        write_tone_track(path, 3.5, seed=i)
    return files


class Run:
    """``raygenre label`` in its own session; ``family`` tracks every process it started."""

    def __init__(self, tmp: Path, lib: Path, out: Path, model: str, config: str, faults: str = "") -> None:
        (tmp / "run.yaml").write_text(config)
        env = {**os.environ, FAULTS_ENV: faults}
        cmd = [sys.executable, "-m", "raygenre.cli", "label", str(lib), "--model", model, "--out", str(out),
               "--config", str(tmp / "run.yaml")]
        self.log = tmp / "run.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.family: dict[int, int] = {}

    def wait_for(self, what: str, cond: Callable[[], bool], timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            self.family.update(_descendants(self.proc.pid))
            assert self.proc.poll() is None, f"ended before {what}:\n{self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} after {timeout} s:\n{self.log.read_text()[-3000:]}"
            time.sleep(0.05)
        self.family.update(_descendants(self.proc.pid))

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            self.family.update(_descendants(self.proc.pid) if self.proc.poll() is None else {})
            _kill_tree(self.proc, self.family)  # only what this run started, if anything is left
        return code, self.log.read_text()


def _decoders(run: Run) -> list[int]:
    return _find(run.family, lambda _, cmd: "raygenre.data.decoder" in cmd)


def _actors(run: Run) -> list[int]:
    return _find(run.family, lambda _, cmd: "Predictor" in cmd and "decode_batch" not in cmd)


def test_hung_and_crashing_decoders_killed_workers_and_actors_lose_nothing(ray_local: None, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    files = _library(lib, 24, bad=("a-HANG.wav", "b-CRASH.wav"))
    model = random_model(tmp_path / "model")
    out = tmp_path / "labels.parquet"
    run = Run(tmp_path, lib, out, model, "files_per_part: 2\nbatch_size: 2\ndecode_timeout_s: 15\n",
              faults="hang=HANG,crash=CRASH")
    parts = Path(parts_dir_of(str(out)))

    # the run is under way: its decoders are running and its lock is held
    run.wait_for("decoder child", lambda: bool(_decoders(run)))
    # a second run on the same output is refused, at once, and writes nothing
    with pytest.raises(ValueError, match="another `raygenre label` is writing to"):
        label_library(str(lib), str(out), load_config("label"), model_dir=model, progress=False)

    # kill every decode worker (the parents of decoder children) while one holds the hanging file: Ray runs
    # their tasks again, and the hanging file times out again (15 s) instead of holding its task forever
    run.wait_for("model actor", lambda: bool(_actors(run)))
    workers = {_proc_stat(pid)[0] for pid in _decoders(run) if _proc_stat(pid)}  # type: ignore[index]
    assert workers
    for pid in workers:
        _kill(pid)
    # and the model actor, once: it is restarted (label.actor_restarts: 3) and its batch retried
    actors = _actors(run)
    assert actors
    for pid in actors:
        _kill(pid)

    code, log = run.finish()
    assert code == 1, log  # 1: the run finished, some files have errors
    rows = {Path(r["path"]).name: r for r in pq.read_table(out).to_pylist()}
    assert sorted(rows) == sorted(f.name for f in files), "every file exactly once"
    assert sum(pq.read_metadata(p).num_rows for p in list_parts(str(parts))) == len(files)  # no duplicate in parts
    good = [r for name, r in rows.items() if name.startswith("t")]
    assert all(r["error"] is None and r["top_genre"] in ("blues", "jazz", "rock") for r in good)
    assert "decoding took longer than 15 s (label.decode_timeout_s)" in rows["a-HANG.wav"]["error"]
    assert "the decoder crashed on this file (killed by SIGSEGV)" in rows["b-CRASH.wav"]["error"]
    assert not _decoders(run), "a decoder child outlived its run"


def test_model_actors_that_keep_dying_stop_the_run_and_keep_every_row(ray_local: None, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    files = _library(lib, 30, bad=("z-HANG.wav",))
    model = random_model(tmp_path / "model")
    out = tmp_path / "labels.parquet"
    # no restarts: the first actor death stops the run. The hanging file keeps the run going long enough.
    run = Run(tmp_path, lib, out, model, "files_per_part: 2\nbatch_size: 2\ndecode_timeout_s: 60\n"
                                         "actor_restarts: 0\nactors: 1\n", faults="hang=HANG")
    parts = Path(parts_dir_of(str(out)))
    run.wait_for("part", lambda: bool(list(parts.glob("part-*.parquet"))))
    run.wait_for("model actor", lambda: bool(_actors(run)))
    actors = _actors(run)
    assert actors
    for pid in actors:
        _kill(pid)
    code, log = run.finish()
    assert code == 3, log
    message = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(message) == 1 and "labelling stopped: the model actors kept dying" in message[0], log
    assert "run the same command again to resume" in log and "Traceback" not in log
    assert not out.exists()  # nothing consolidated from a run that stopped
    kept = {r["path"] for p in list_parts(str(parts)) for r in pq.read_table(p, columns=["path"]).to_pylist()}
    assert 0 < len(kept) < len(files)

    # the rerun (no faults now) labels the rest, and only the rest
    cfg = dataclasses.replace(load_config("label"), files_per_part=8)
    result = label_library(str(lib), str(out), cfg, model_dir=model, progress=False)
    paths = pq.read_table(out).column("path").to_pylist()
    assert sorted(paths) == sorted(str(f) for f in files)
    assert (result.files, result.resumed, result.errors) == (len(files), len(kept), 0)
