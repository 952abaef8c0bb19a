"""Training on Ray Train V2 (real Ray, 2 CPUs) and evaluation: metrics, export, resume after a killed worker,
reproducibility, early stopping, refusing bad feature tables, and a real featurize -> train hand-off."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_feature_table, write_tone_track

import raygenre
from raygenre.config import FeaturizeConfig, TrainConfig, load_config
from raygenre.data.splits import load_stats
from raygenre.data.table import FeatureMismatchError, open_table, read_mfcc_table, read_split_arrays
from raygenre.training.evaluate import evaluate, plot_confusion, read_split, score
from raygenre.training.train import FAULT_ENV, effective_config, train

GENRES = ("blues", "classical", "jazz", "metal")


def cfg(**over: Any):
    """Small, fast runs: the tutorial's models with a higher learning rate on a tiny table."""
    return load_config(TrainConfig, overrides={"model": "ann", "epochs": 3, "workers": 2, "lr": 1e-3,
                                           "batch_size": 16, "patience": 5, "max_failures": 2, "seed": 0, **over})


def losses(history: list[dict]) -> list[tuple]:
    return [(r["epoch"], r["train_loss"], r["train_acc"], r["val_loss"], r["val_acc"]) for r in history]


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> str:
    """4 genres x (4 train, 2 val, 2 test tracks) x 3 segments of 130 x 13 MFCC: 96 segments."""
    out = tmp_path_factory.mktemp("features") / "table"
    write_feature_table(out, GENRES)
    return str(out)


@pytest.fixture(scope="module")
def baseline(table: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[dict], Path]:
    """One uninterrupted 2-worker ANN run, shared by the end-to-end and the resume tests."""
    root = tmp_path_factory.mktemp("baseline")
    progress: list[dict] = []
    result = train(table, cfg(), str(root / "model"), storage_path=str(root / "runs"),
                   progress_callback=progress.append)
    return result, progress, root


# ------------------------------------------------------------------------------------------ pure evaluation
def test_score_segment_and_track_metrics() -> None:
    # 2 classes; track a (true 0): segments lean 0, 1, 0 -> track mean says 0; track b (true 1): 1, 0 -> mean 1
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.8, 0.2], [0.1, 0.9], [0.6, 0.4]])
    labels = np.array([0, 0, 0, 1, 1])
    tracks = ["a", "a", "a", "b", "b"]
    m = score(probs, labels, tracks, 2)
    assert m["segments"] == 5 and m["tracks"] == 2
    assert m["segment_accuracy"] == pytest.approx(3 / 5)
    assert m["track_accuracy"] == 1.0
    assert m["confusion"] == [[2, 1], [1, 1]]  # rows true, columns predicted
    assert m["track_confusion"] == [[1, 0], [0, 1]]
    f1_0, f1_1 = 2 * 2 / (2 * 2 + 1 + 1), 2 * 1 / (2 * 1 + 1 + 1)
    assert m["macro_f1"] == pytest.approx((f1_0 + f1_1) / 2)
    assert m["track_macro_f1"] == 1.0
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.8, 0.9, 0.4])))
    # a class nobody predicts and nobody is lowers macro F1 only if it occurs
    assert score(np.array([[1.0, 0, 0]]), np.array([0]), ["x"], 3)["macro_f1"] == 1.0


def test_plot_confusion(tmp_path: Path) -> None:
    cm = [[3, 1, 0], [0, 4, 0], [1, 0, 2]]
    title = plot_confusion(cm, ["blues", "jazz", "rock"], str(tmp_path / "cm.png"), "CNN test", synthetic=True)
    assert title == "CNN test (synthetic data)"
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_confusion(cm, ["a", "b", "c"], f"file://{tmp_path}/real.png", "real") == "real"
    assert (tmp_path / "real.png").stat().st_size > 1000


# -------------------------------------------------------------------------------------------- table checks
def test_refuses_unfinished_or_mismatched_tables(table: str, tmp_path: Path) -> None:
    unfinished = tmp_path / "unfinished"
    shutil.copytree(Path(table) / "segments", unfinished / "segments")  # no features.json: not finished
    with pytest.raises(FileNotFoundError, match="not a finished feature table") as info:
        train(str(unfinished), cfg(), str(tmp_path / "m"))
    assert "raygenre featurize" in str(info.value)

    manifest = json.loads((Path(table) / "features.json").read_text())
    bad = tmp_path / "bad"
    shutil.copytree(table, bad)
    (bad / "features.json").write_text(json.dumps({**manifest, "features": {"n_mfcc": 13}}))
    with pytest.raises(FeatureMismatchError, match="feature parameters"):
        open_table(str(bad))

    # the manifest claims 20 coefficients but the stored MFCC are 130 x 13
    (bad / "features.json").write_text(json.dumps({**manifest, "features": {**manifest["features"], "n_mfcc": 20}}))
    with pytest.raises(FeatureMismatchError, match=r"mfcc is \(130, 13\) but features.json says \(130, 20\)"):
        read_split(str(bad), "train")
    with pytest.raises(FeatureMismatchError):
        train(str(bad), cfg(), str(tmp_path / "m"))

    with pytest.raises(ValueError, match="unknown model 'gru'"):
        effective_config(cfg(model="gru"))
    assert not (tmp_path / "m").exists()


def test_standardisation_stats_use_the_train_split_only(table: str) -> None:
    rows, mfcc = read_mfcc_table(table)
    train_rows = np.asarray(rows.column("split").to_pylist()) == "train"
    frames = mfcc[train_rows].reshape(-1, 13).astype(np.float64)
    mean, std = load_stats(read_split_arrays(table, "train")[0], chunk=7)  # chunks merge exactly
    assert mean.dtype == np.float32 and mean.shape == (13,)
    assert np.allclose(mean, frames.mean(0), rtol=1e-5, atol=1e-3)
    assert np.allclose(std, frames.std(0), rtol=1e-5)
    everything = mfcc.reshape(-1, 13).astype(np.float64).mean(0)
    assert not np.allclose(mean, everything, rtol=1e-5, atol=1e-3)  # val/test rows are not in the stats


# --------------------------------------------------------------------------------------------- training
def test_train_end_to_end(baseline, table: str) -> None:
    result, progress, root = baseline
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert [p["epoch"] for p in progress] == [1, 2, 3]  # progress_callback got every epoch, on the driver
    assert result.resumed_from == [] and result.resumed_from_epoch is None
    assert result.history[-1]["train_acc"] > 0.5 and result.history[-1]["val_acc"] >= 0.75
    assert result.test["track_accuracy"] >= 0.75 and result.test["segments"] == 4 * 2 * 3  # chance is 0.25
    assert np.asarray(result.test["confusion"]).sum() == 24 and result.synthetic

    model = raygenre.load_model(result.model_dir)
    assert model.name == "ann" and model.genres == list(GENRES)
    assert model.hparams["hidden"] == 512 and model.hparams["weight_decay"] == 1e-3  # tutorial defaults
    assert model.meta["synthetic"] is True and model.meta["features_dir"] == table
    assert model.meta["run_dir"] == result.run_dir
    assert model.meta["metrics"]["test"]["track_accuracy"] == result.test["track_accuracy"]
    assert model.meta["metrics"]["best_epoch"] == result.best_epoch
    mean, std = load_stats(read_split_arrays(table, "train")[0])
    assert np.allclose(model.mean.numpy(), mean) and np.allclose(model.std.numpy(), std)

    # the exported weights are the best epoch's (highest val accuracy, then lowest val loss): they reproduce
    # its validation loss
    best = result.history[result.best_epoch - 1]
    assert (best["val_acc"], -best["val_loss"]) == max((r["val_acc"], -r["val_loss"]) for r in result.history)
    val = evaluate(model, table, split="val")
    assert val["loss"] == pytest.approx(best["val_loss"], rel=1e-4)
    assert evaluate(model, table)["segment_accuracy"] == result.test["segment_accuracy"]

    run = Path(result.run_dir)
    assert run.parent == root / "runs"
    saved = load_config(TrainConfig, run / "config.yaml")  # the effective config, reusable with --config
    assert saved == effective_config(cfg())
    history = json.loads((run / "history.json").read_text())
    assert losses(history["history"]) == losses(result.history) and history["synthetic"] is True
    assert (run / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_worker_killed_mid_run_resumes_from_its_last_checkpoint(baseline, table: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 1 SIGKILLs itself during epoch 2; Ray Train replaces the worker group, which resumes after epoch 1."""
    monkeypatch.setenv(FAULT_ENV, "2")
    result = train(table, cfg(), str(tmp_path / "model"), storage_path=str(tmp_path / "runs"))
    marker = Path(result.run_dir) / ".fault-injected"
    assert marker.exists() and "epoch 2" in marker.read_text()  # a worker really died
    assert result.resumed_from == [1] and result.resumed_from_epoch == 1  # resumed, not restarted
    assert [r["epoch"] for r in result.history] == [1, 2, 3]  # every epoch exactly once
    # and it carried on exactly where the uninterrupted run was: same seed, same numbers
    assert losses(result.history) == losses(baseline[0].history)
    assert result.test == baseline[0].test


def test_same_seed_same_metrics(table: str, tmp_path: Path) -> None:
    """Two runs with one seed agree exactly; the second with ``deterministic`` (enable_reproducibility on the
    worker), which must change nothing on CPU, where the kernels already are deterministic."""
    runs = [train(table, cfg(model="cnn", workers=1, epochs=2, seed=7, deterministic=i == 1), str(tmp_path / f"m{i}"),
                  storage_path=str(tmp_path / "runs")) for i in range(2)]
    assert losses(runs[0].history) == losses(runs[1].history)
    assert runs[0].test == runs[1].test
    assert runs[0].run_dir != runs[1].run_dir


@pytest.fixture(scope="module")
def featurized_run(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> tuple[Any, Any]:
    """A table written by the real `raygenre featurize` (2 genres x 3 tracks of 3.2 s), trained with lr 0.

    lr 0 keeps the weights fixed, so the validation accuracy never improves after epoch 1 and early stopping
    (min_epochs 1, patience 1) must end the run at epoch 2 of 4. One run serves both tests below (~30 s).
    """
    from raygenre.data.featurize import featurize

    root = tmp_path_factory.mktemp("featurized")
    for gi, genre in enumerate(("pop", "rock")):
        for i in range(3):
            write_tone_track(root / "data" / "genres_original" / genre / f"{genre}.{i:05d}.wav", 3.2,
                             seed=gi * 10 + i)
    fcfg = load_config(FeaturizeConfig, overrides={"segments": 1})
    featurize(str(root / "data"), str(root / "features"), fcfg)
    result = train(str(root / "features"), cfg(model="lstm", workers=1, epochs=4, min_epochs=1, patience=1, lr=0.0,
                                               batch_size=4), str(root / "model"), storage_path=str(root / "runs"))
    return result, fcfg


def test_featurize_then_train(featurized_run) -> None:
    """The real hand-off: a table written by `raygenre featurize` trains and exports with its parameters."""
    result, fcfg = featurized_run
    model = raygenre.load_model(result.model_dir)
    assert model.name == "lstm" and model.features == fcfg.features and model.genres == ["pop", "rock"]
    assert model.meta["frames"] == fcfg.features.frames and model.meta["synthetic"] is False
    assert result.test["tracks"] == 2 and result.test["segments"] == 2  # one test track per genre
    assert dataclasses.asdict(model.features)["n_mfcc"] == 13


def test_early_stopping(featurized_run) -> None:
    result, _ = featurized_run
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert result.history[0]["val_acc"] == result.history[1]["val_acc"]
    assert result.stopped_early and result.best_epoch == 1
    meta = raygenre.load_model(result.model_dir).meta
    assert meta["metrics"]["stopped_early"] is True and meta["metrics"]["epochs_run"] == 2


def test_auto_workers_are_one_per_node_holding_all_its_cpus(ray_local: None) -> None:
    """workers: null (auto) on the 2-CPU local Ray: one worker, both CPUs, two torch threads (no all-reduce
    between two halves of one machine); a given count shares the CPUs evenly, one thread per whole CPU."""
    from raygenre.training.train import cpus_per_worker, resolve_workers, worker_threads

    auto = resolve_workers(cfg(workers=None))
    assert auto.workers == 1 and cpus_per_worker(auto.workers) == 2.0 and worker_threads(2.0) == 2
    assert resolve_workers(cfg(workers=3)).workers == 3  # a number is kept
    assert cpus_per_worker(2) == 1.0 and cpus_per_worker(4) == 0.5 and worker_threads(0.5) == 1
