"""Output commit protocol (issue #13): attempt prefix + manifest last + lease, on local disks and a real S3
endpoint (moto). Refusing foreign folders, ``--overwrite``, a second writer, killed runs, and the whole
featurize -> train -> evaluate -> label chain with s3:// URIs read back with plain pyarrow."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from conftest import REPO, write_feature_table
from test_artifact import _save
from test_featurize import make_dataset, small_cfg

from raygenre import storage
from raygenre.data.featurize import featurize
from raygenre.data.table import read_mfcc_table, table_path
from raygenre.model.artifact import META, WEIGHTS, load_model
from raygenre.storage import LEASE, Lease, OutputExistsError


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "raygenre.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def _kill_when(cmd: list[str], ready: Callable[[], bool], *, timeout: float, poll: float,
               env: dict[str, str] | None = None) -> None:
    """Run ``cmd`` in its own session until ``ready()``, then SIGKILL its whole process group (a killed run)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(poll)
        assert proc.poll() is None, f"{cmd[3]} ended before it could be interrupted"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _keys(uri: str) -> list[str]:
    """Every object under an s3:// prefix, relative to it."""
    fs, inner = storage.resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True))
    return sorted(i.path[len(inner) + 1:] for i in infos if i.type == pafs.FileType.File)


# ------------------------------------------------------------------------------------------ local, no Ray
def test_a_foreign_folder_or_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    music = tmp_path / "Music"
    (music / "album").mkdir(parents=True)
    (music / "album" / "song.flac").write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="is not a raygenre model .*never deletes"):
        _save(music, "ann")
    assert (music / "album" / "song.flac").read_bytes() == b"precious"
    assert sorted(p.name for p in music.iterdir()) == ["album"]  # no lease, no attempt left behind
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(OutputExistsError, match="is a file"):
        _save(a_file, "ann")
    assert a_file.read_text() == "mine"


def test_replacing_needs_overwrite_and_never_crosses_kinds(tmp_path: Path) -> None:
    _save(tmp_path / "m", "ann")
    from raygenre.model.artifact import save_model
    with pytest.raises(OutputExistsError, match="already holds a raygenre model.*--overwrite"):
        storage.check_output(tmp_path / "m", "model", overwrite=False)
    _save(tmp_path / "m", "lstm")  # the library default replaces (the CLI asks for --overwrite)
    assert load_model(str(tmp_path / "m")).name == "lstm"
    assert len(list((tmp_path / "m" / "attempts").iterdir())) == 1  # the committing run removed the old one
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["attempts", META]
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "features.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="holds a raygenre feature table, not a model"):
        storage.check_output(tmp_path / "f", "model", overwrite=True)
    assert save_model  # imported for the signature check below
    import inspect
    assert "overwrite" in inspect.signature(save_model).parameters


def test_old_layout_model_still_loads_and_is_replaced_cleanly(tmp_path: Path) -> None:
    _save(tmp_path / "new", "ann")
    meta = json.loads((tmp_path / "new" / META).read_text())
    old = tmp_path / "old"  # the layout before issue #13: both files at the top, no "attempt"
    old.mkdir()
    (old / WEIGHTS).write_bytes((tmp_path / "new" / meta["attempt"] / WEIGHTS).read_bytes())
    (old / META).write_text(json.dumps({k: v for k, v in meta.items() if k != "attempt"}))
    (old / "metrics.json").write_text("{}")
    assert load_model(str(old)).name == "ann"
    _save(old, "cnn")
    assert load_model(str(old)).name == "cnn"
    assert sorted(p.name for p in old.iterdir()) == ["attempts", META]


def test_a_live_lease_refuses_a_second_writer_and_a_dead_one_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "out"
    held = Lease.acquire(str(out), "model")
    try:
        with pytest.raises(OutputExistsError, match=f"being written by run {held.record['holder']}.*pid {os.getpid()}"):
            _save(out, "ann")
    finally:
        held.release()
    assert not (out / LEASE).exists()
    # a lease left by a process that is gone (same host) is taken over at once
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LEASE).write_text(json.dumps({"holder": "deadbeef", "host": socket.gethostname(),
                                         "pid": int(dead.stdout), "heartbeat": time.time()}))
    _save(out, "ann")
    # another host's lease counts while its heartbeat is fresh, and not after LEASE_TTL_S
    (out / LEASE).write_text(json.dumps({"holder": "elsewhere", "host": "node-7", "pid": 1, "heartbeat": time.time()}))
    with pytest.raises(OutputExistsError, match="run elsewhere .* on node-7"):
        _save(out, "ann")
    (out / LEASE).write_text(json.dumps({"holder": "elsewhere", "host": "node-7", "pid": 1,
                                         "heartbeat": time.time() - storage.LEASE_TTL_S - 1}))
    _save(out, "ann")
    assert load_model(str(out)).name == "ann"


def test_cli_refusals_are_one_line_exit_2(tmp_path: Path) -> None:
    music = tmp_path / "Music"
    music.mkdir()
    (music / "song.mp3").write_bytes(b"x")
    bad = _cli("featurize", str(tmp_path), "--out", str(music))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "is not a raygenre feature table" in bad.stderr and "song.mp3" in bad.stderr
    assert sorted(p.name for p in music.iterdir()) == ["song.mp3"]


# --------------------------------------------------------------------------------------------------- S3
def test_lease_on_s3_refuses_a_second_writer(s3: str) -> None:
    held = Lease.acquire(s3, "feature table")
    try:
        with pytest.raises(OutputExistsError, match=f"run {held.record['holder']}"):
            Lease.acquire(s3, "feature table")
    finally:
        held.release()
    assert _keys(s3) == []


def test_s3_featurize_train_evaluate_label(s3: str, tmp_path: Path, ray_local: None) -> None:
    """Every output an s3:// URI; each read back with plain pyarrow (no raygenre) through its manifest."""
    from typer.testing import CliRunner

    from raygenre.cli import app
    from raygenre.config import LabelConfig, TrainConfig, load_config
    from raygenre.label.pipeline import label_library
    from raygenre.training.train import train

    fs, _ = storage.resolve(s3)
    root = make_dataset(tmp_path / "ds", genres=("a", "b"), per_genre=3)
    t0 = time.time()
    feats = f"{s3}/feat"
    result = featurize(str(root), feats, small_cfg())
    manifest = json.loads(fs.open_input_stream(f"{storage.resolve(feats)[1]}/features.json").read())
    assert manifest["attempt"].startswith("attempts/")
    table = pq.read_table(f"{storage.resolve(feats)[1]}/{manifest['attempt']}/segments", filesystem=fs)
    assert table.num_rows == result.manifest["counts"]["segments_total"] == 12
    assert read_mfcc_table(feats)[1].shape == (12, 130, 13)
    assert featurize(str(root), feats, small_cfg()).skipped
    with pytest.raises(OutputExistsError, match="--overwrite"):
        featurize(str(root), feats, small_cfg(seed=3))
    featurize(str(root), feats, small_cfg(seed=3), overwrite=True)
    assert len({k.split("/")[1] for k in _keys(feats) if k.startswith("attempts/")}) == 1
    t_feat = time.time() - t0

    # train on a bigger (synthetic) table, uploaded to S3, so that every split has tracks of every genre
    local_table = tmp_path / "table"
    write_feature_table(local_table, ("blues", "jazz"))
    table_uri = f"{s3}/table"
    pafs.copy_files(str(local_table), storage.resolve(table_uri)[1], source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)  # old layout on S3: still read
    cfg = load_config(TrainConfig, overrides={"model": "ann", "epochs": 2, "workers": 1, "batch_size": 16,
                                          "min_epochs": 1, "seed": 0})
    model_uri = f"{s3}/model"
    res = train(table_uri, cfg, model_uri, storage_path=f"{s3}/runs")
    meta = json.loads(fs.open_input_stream(f"{storage.resolve(model_uri)[1]}/model.json").read())
    weights = f"{storage.resolve(model_uri)[1]}/{meta['attempt']}/{WEIGHTS}"
    assert fs.get_file_info(weights).size > 0
    assert load_model(model_uri).name == "ann"
    assert fs.get_file_info(f"{storage.resolve(res.run_dir)[1]}/history.json").type == pafs.FileType.File
    t_train = time.time() - t0 - t_feat

    run = CliRunner().invoke(app, ["evaluate", model_uri, "--features", table_uri, "--split", "val"])
    assert run.exit_code == 0, run.output
    metrics = json.loads(fs.open_input_stream(f"{storage.resolve(model_uri)[1]}/{meta['attempt']}/metrics.json")
                         .read())
    assert metrics["features_dir"] == table_uri and metrics["segments"] > 0

    lib = make_dataset(tmp_path / "lib", genres=("x",), per_genre=2, seconds=4.0)
    labels = f"{s3}/labels.parquet"
    lab = label_library(str(lib), labels, load_config(LabelConfig), model_dir=model_uri, progress=False)
    assert lab.files == 2
    rows = pq.read_table(storage.resolve(labels)[1], filesystem=fs)
    assert rows.num_rows == 2 and set(rows.column("top_genre").to_pylist()) <= {"blues", "jazz"}
    assert not [k for k in _keys(f"{s3}/labels.parquet.parts") if k == LEASE]
    print(f"featurize {t_feat:.1f} s, train {t_train:.1f} s, all {time.time() - t0:.1f} s")


def test_s3_featurize_killed_mid_write_leaves_nothing_finished_and_rerun_succeeds(s3: str, tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", per_genre=6)
    out = f"{s3}/killed"
    cmd = [sys.executable, "-m", "raygenre.cli", "featurize", str(root), "--out", out, "--segments", "2"]
    _kill_when(cmd, lambda: any(k.startswith("attempts/") and k.endswith(".parquet") for k in _keys(out)),
               timeout=240, poll=0.05)
    left = _keys(out)
    assert "features.json" not in left and LEASE in left  # killed: its lease and attempt stay, nothing finished
    with pytest.raises(FileNotFoundError, match="not a finished feature table"):
        table_path(out)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    manifest = json.loads(storage.read_text(f"{out}/features.json"))
    assert manifest["counts"]["segments_total"] == 36
    attempts = {k.split("/")[1] for k in _keys(out) if k.startswith("attempts/")}
    assert attempts == {manifest["attempt"].split("/")[1]}  # the killed run's attempt was cleaned up
    assert LEASE not in _keys(out)


def test_s3_train_killed_mid_run_leaves_no_model_and_rerun_succeeds(s3: str, tmp_path: Path,
                                                                     ray_local: None) -> None:
    """A `raygenre train --out s3://...` killed after its first checkpoint: no model.json, load_model refuses,
    the rerun (same command) takes over the dead run's lease and commits."""
    from raygenre.model.artifact import ArtifactError

    local_table = tmp_path / "table"
    write_feature_table(local_table, ("blues", "jazz"))
    fs, _ = storage.resolve(s3)
    table_uri = f"{s3}/table"
    pafs.copy_files(str(local_table), storage.resolve(table_uri)[1], source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)
    model_uri = f"{s3}/model"
    cmd = [sys.executable, "-m", "raygenre.cli", "train", "--model", "ann", "--features", table_uri, "--out",
           model_uri, "--epochs", "30", "--min-epochs", "30", "--workers", "1", "--no-set-default"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    _kill_when(cmd, lambda: any("checkpoint" in k for k in _keys(f"{s3}/runs")), timeout=300, poll=0.2, env=env)
    assert "model.json" not in _keys(model_uri) and LEASE in _keys(model_uri)
    with pytest.raises(ArtifactError):
        load_model(model_uri)
    again = subprocess.run([*cmd[:-7], "--epochs", "2", "--min-epochs", "1", "--workers", "1", "--no-set-default"],
                           env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert load_model(model_uri).name == "ann"
    assert sorted({k.split("/")[0] for k in _keys(model_uri)}) == ["attempts", "model.json"]  # lease released
    # and replacing it now needs --overwrite: one line, exit 2
    refused = subprocess.run([*cmd[:-7], "--epochs", "1", "--no-set-default"], env=env, capture_output=True,
                             text=True, timeout=600)
    assert refused.returncode == 2 and "already holds a raygenre model" in refused.stderr
    assert "--overwrite" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.slow
def test_s3_tune_writes_every_output_to_the_bucket(s3: str, tmp_path: Path, ray_local: None) -> None:
    """`raygenre tune --out s3://...` (tiny budget): trials, checkpoints, models and tune.json in the bucket;
    a second run on the same --out is refused without --overwrite."""
    from raygenre.config import TuneConfig, load_config
    from raygenre.training.tune import check_tune_out, tune_models

    fs, _ = storage.resolve(s3)
    local_table = tmp_path / "table"
    write_feature_table(local_table, ("blues", "jazz"))
    table_uri = f"{s3}/table"
    pafs.copy_files(str(local_table), storage.resolve(table_uri)[1], source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)
    out = f"{s3}/tune"
    cfg = load_config(TuneConfig, overrides={"models": ["ann"], "num_samples": 1, "max_epochs": 2})
    result = tune_models(table_uri, cfg, out, verbose=0, set_default=False)
    keys = _keys(out)
    assert "tune.json" in keys and "trials.csv" in keys and "trials.parquet" in keys
    assert any(k.startswith("train/") and k.endswith("train_state.pt") for k in keys)  # trial checkpoints
    assert load_model(f"{out}/models/ann").name == "ann" and load_model(f"{out}/models/best").name == "ann"
    summary = json.loads(fs.open_input_stream(f"{storage.resolve(out)[1]}/tune.json").read())
    assert summary["best_model"] == result.best_model == "ann"
    assert pq.read_table(f"{storage.resolve(out)[1]}/trials.parquet", filesystem=fs).num_rows == 1
    with pytest.raises(OutputExistsError, match="--overwrite"):
        check_tune_out(out, resume=False, overwrite=False)
