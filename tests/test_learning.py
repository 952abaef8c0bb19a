"""Does training learn, and does data-parallel training learn what one process learns? On the HARD synthetic set.

The easy synthetic set hid a broken trainer (genre-skewed worker shards, BatchNorm statistics stuck near their
initial values: the default CNN was at chance on real GTZAN). These tests run on the hard synthetic set, where
genres overlap like real ones: a correct trainer lands between 50 % and 85 %, a broken one visibly lower.

Table: 10 genres x 60 tracks x 6 s (2 segments of 3 s each), split 50/20/30 by track: 600 train, 240 val and
360 test segments. Measured here (single process, seeds 0-3, new defaults): cnn test track accuracy 0.49-0.56;
with the old settings (Keras BatchNorm momentum, lr 1e-4, batch 64 per step) 0.21.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from raygenre.config import FeaturizeConfig, SynthConfig, TrainConfig, TuneConfig, load_config
from raygenre.model.networks import build_model
from raygenre.training.evaluate import evaluate
from raygenre.training.train import (
    BN_SAMPLE,
    best_model,
    bn_rows,
    cpus_per_worker,
    epoch_rows,
    eval_mode_check,
    prepare,
    recompute_batchnorm,
    train,
    train_local,
    worker_threads,
)

MODELS = ("ann", "cnn", "lstm")
# Seed-to-seed spread of test segment accuracy on this table is about +-4 points (cnn, seeds 0-3): two runs
# that differ only in their random streams may differ by that much. A broken trainer is 15+ points lower.
SAME_WITHIN = 0.08
# Today's trainer before this fix, as far as a config can express it (its genre-skewed shards are gone):
# Keras' BatchNorm momentum without recomputed statistics, lr 1e-4, 2 workers x 32 = 64 segments per step,
# early stopping from epoch 1 on with patience 5.
OLD_SETTINGS = {"lr": 1e-4, "bn_momentum": 0.01, "bn_recompute": False, "batch_size": 64, "min_epochs": 0,
                "patience": 5}


@pytest.fixture(scope="module")
def hard_table(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> str:
    """The hard synthetic set at test size, featurized by the real `raygenre featurize`."""
    from raygenre.data.featurize import featurize
    from raygenre.data.synth.dataset import synthesize

    root = tmp_path_factory.mktemp("hard")
    scfg = dataclasses.replace(load_config(SynthConfig), tracks_per_genre=60, seconds=6.0, seed=0)
    assert scfg.difficulty == "hard"  # the default: the demo and the built-in dataset use it too
    synthesize(root / "data", scfg, progress=False)
    fcfg = load_config(FeaturizeConfig, overrides={"segments": 2, "split": {"train": 0.5, "val": 0.2, "test": 0.3}})
    featurize(str(root / "data"), str(root / "features"), fcfg)
    return str(root / "features")


def cfg(model: str, **over: Any):
    return load_config(TrainConfig, overrides={"model": model, **over})


def local_run(table: str, model: str, **over: Any) -> dict[str, Any]:
    """The single-process twin (same fit_loop, no Ray) -> its history, test metrics and eval-mode check."""
    c = cfg(model, workers=1, **over)
    prepared = prepare(table, c)
    threads = torch.get_num_threads()
    # as many threads as the Ray Train worker of the same run gets (one per CPU it holds): other thread counts
    # round differently
    torch.set_num_threads(worker_threads(cpus_per_worker(c.workers)))
    try:
        state = train_local(prepared)
    finally:
        torch.set_num_threads(threads)
    loaded = best_model(prepared, prepared.cfg, state)
    best = state["history"][state["best_epoch"] - 1]
    check = eval_mode_check(loaded, *prepared.arrays["train"], train_acc=best["train_acc"], seed=c.seed)
    return {"history": state["history"], "best_epoch": state["best_epoch"], "test": evaluate(loaded, table),
            "eval_check": check}


@pytest.fixture(scope="module")
def runs(hard_table: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every model with the default config: one process (the twin) and 2 Ray Train workers."""
    root = tmp_path_factory.mktemp("learning")
    out: dict[str, dict[str, Any]] = {}
    for model in MODELS:
        ray2 = train(hard_table, cfg(model, workers=2), str(root / f"{model}-2"), storage_path=str(root / "runs"))
        out[model] = {"local": local_run(hard_table, model), "ray2": ray2}
    return out


# ------------------------------------------------------------------------------------------ data and stats
def test_every_rank_sees_a_fresh_uniform_sample() -> None:
    """Rows sorted by genre (as featurize writes them): each rank's epoch is still a uniform sample."""
    labels = np.repeat(np.arange(10), 100)  # 1000 rows, genre by genre
    for world in (1, 2, 4):
        parts = [epoch_rows(len(labels), seed=0, epoch=3, rank=r, world=world) for r in range(world)]
        assert all(len(p) == 1000 // world for p in parts)  # equal steps on every rank
        together = np.concatenate(parts)
        assert len(np.unique(together)) == len(together)  # no row twice in an epoch
        for p in parts:  # every genre, in about its share (a genre-skewed shard fails this)
            share = np.bincount(labels[p], minlength=10) / len(p)
            assert share.min() > 0.05 and share.max() < 0.15, (world, share)
    assert np.array_equal(epoch_rows(1000, 0, 3), np.random.default_rng([0, 3]).permutation(1000))  # 1 rank
    assert np.array_equal(epoch_rows(1000, 0, 3, 1, 2), epoch_rows(1000, 0, 3, 1, 2))  # reproducible
    assert not np.array_equal(epoch_rows(1000, 0, 3), epoch_rows(1000, 0, 4))  # fresh every epoch
    assert len(epoch_rows(1001, 0, 1, 0, 2)) == 500  # at most world - 1 rows sit out


def test_batchnorm_sample_is_uniform_over_the_whole_split() -> None:
    """A split larger than the sample, sorted by genre: the sample still covers every genre in its share."""
    labels = np.repeat(np.arange(10), 1000)  # 10,000 rows, genre by genre
    for world in (1, 2):
        parts = [bn_rows(len(labels), seed=0, epoch=2, rank=r, world=world) for r in range(world)]
        rows = np.concatenate(parts)
        assert len(rows) == BN_SAMPLE and len(np.unique(rows)) == len(rows)
        share = np.bincount(labels[rows], minlength=10) / len(rows)
        assert share.min() > 0.06 and share.max() < 0.14, share
    assert not np.array_equal(bn_rows(10_000, 0, 2), bn_rows(10_000, 0, 3))  # fresh every epoch


def test_recompute_batchnorm_gives_the_statistics_of_the_sample() -> None:
    torch.manual_seed(0)
    model = build_model("cnn", 130, 13, 10, bn_momentum=0.01)
    x = np.random.default_rng(0).normal(3.0, 2.0, (96, 130, 13)).astype(np.float32)
    zero, one = torch.zeros(13), torch.ones(13)
    rows = np.arange(96)
    assert recompute_batchnorm(model, x, rows, torch.device("cpu"), zero, one, batch=96)
    bn = model.blocks[0][3]
    with torch.no_grad():  # what the first BatchNorm sees: conv -> relu -> pool of the whole sample
        pre = model.blocks[0][:3](torch.from_numpy(x).unsqueeze(1))
    assert torch.allclose(bn.running_mean, pre.mean(dim=(0, 2, 3)), atol=1e-4)
    assert torch.allclose(bn.running_var, pre.var(dim=(0, 2, 3)), rtol=1e-3)
    assert bn.momentum == 0.01 and model.training  # settings and mode restored (a new model trains)
    assert not recompute_batchnorm(build_model("ann", 130, 13, 10), x, rows, torch.device("cpu"), zero, one, 96)


# ------------------------------------------------------------------------------- N workers equal 1 process
def test_one_ray_worker_is_the_single_process_twin(hard_table: str, tmp_path: Path) -> None:
    """The twin is what one Ray Train worker runs: same data order, same steps, same numbers."""
    over = {"epochs": 3, "min_epochs": 3}
    ray1 = train(hard_table, cfg("cnn", workers=1, **over), str(tmp_path / "m"), storage_path=str(tmp_path / "r"))
    local = local_run(hard_table, "cnn", **over)
    for a, b in zip(ray1.history, local["history"], strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-3), (a["epoch"], key)


@pytest.mark.parametrize("model", MODELS)
def test_two_workers_learn_what_one_process_learns(runs: dict[str, dict[str, Any]], model: str) -> None:
    one, two = runs[model]["local"]["test"], runs[model]["ray2"].test
    print(f"{model}: test segment accuracy 1 process {one['segment_accuracy']:.3f}, "
          f"2 workers {two['segment_accuracy']:.3f}; tracks {one['track_accuracy']:.3f} / {two['track_accuracy']:.3f}")
    assert abs(one["segment_accuracy"] - two["segment_accuracy"]) <= SAME_WITHIN
    assert min(one["segment_accuracy"], two["segment_accuracy"]) > 0.3  # chance is 0.1


def test_defaults_land_where_real_music_does(runs: dict[str, dict[str, Any]]) -> None:
    """The hard set is hard but learnable: the default cnn lands between 50 % and 85 % of test tracks."""
    for run in (runs["cnn"]["local"]["test"], runs["cnn"]["ray2"].test):
        assert 0.45 <= run["track_accuracy"] <= 0.85, run["track_accuracy"]


@pytest.mark.parametrize("model", MODELS)
def test_eval_mode_agrees_with_train_mode(runs: dict[str, dict[str, Any]], model: str) -> None:
    """The exported model in eval mode does not fall below its train-mode accuracy on the train split."""
    for check in (runs[model]["local"]["eval_check"], runs[model]["ray2"].eval_check):
        assert check["warning"] is None, check
        assert check["train_eval_acc"] >= check["train_acc"] - 0.05, check


def test_old_settings_collapse_and_the_new_defaults_fix_it(hard_table: str, runs: dict[str, dict[str, Any]]) -> None:
    """Regression: yesterday's settings reproduce the collapse (and the eval-mode check flags it)."""
    old = local_run(hard_table, "cnn", **OLD_SETTINGS)
    new = runs["cnn"]["local"]
    print(f"cnn test tracks: old settings {old['test']['track_accuracy']:.3f}, "
          f"new defaults {new['test']['track_accuracy']:.3f}; old eval check {old['eval_check']}")
    assert old["test"]["track_accuracy"] <= new["test"]["track_accuracy"] - 0.15
    assert old["test"]["track_accuracy"] < 0.4
    # Two ways to collapse, both seen in CI on the same table: the run learns in train mode and BatchNorm's
    # exported statistics break eval mode (train 0.4+, eval near chance: the check must flag it), or with lr 1e-4
    # and patience 5 it never learns at all (train 0.125, eval 0.105): then there is no gap to flag.
    if old["eval_check"]["train_acc"] >= 0.3:
        assert old["eval_check"]["warning"] is not None and "eval mode" in old["eval_check"]["warning"]
    # the same run with only BatchNorm fixed is no longer broken in eval mode
    fixed_bn = local_run(hard_table, "cnn", **{**OLD_SETTINGS, "bn_recompute": True})
    assert fixed_bn["eval_check"]["warning"] is None


def test_eval_mode_check_warns_only_past_the_gap() -> None:
    """The check itself: eval mode 10+ points below the training pass is a warning, a few points is noise."""

    class FirstGenre:  # eval mode scores exactly 25 % on 4 balanced genres
        def predict_proba(self, x: np.ndarray) -> np.ndarray:
            p = np.zeros((len(x), 4), dtype=np.float32)
            p[:, 0] = 1.0
            return p

    x, y = np.zeros((400, 2, 2), dtype=np.float32), np.arange(400) % 4
    assert eval_mode_check(FirstGenre(), x, y, train_acc=0.30)["warning"] is None  # type: ignore[arg-type]
    warned = eval_mode_check(FirstGenre(), x, y, train_acc=0.90)  # type: ignore[arg-type]
    assert warned["gap"] == pytest.approx(0.65) and "eval mode" in warned["warning"]


def test_early_stopping_waits_for_min_epochs(hard_table: str) -> None:
    """lr 0: validation never improves after epoch 1, yet no run ends before min_epochs."""
    run = local_run(hard_table, "ann", lr=0.0, epochs=8, min_epochs=4, patience=1)
    assert [r["epoch"] for r in run["history"]] == [1, 2, 3, 4]
    assert run["best_epoch"] == 1


# ------------------------------------------------------------------------------------------------- tune
@pytest.mark.slow
def test_tune_exports_a_cnn_no_worse_than_plain_train(hard_table: str, tmp_path: Path) -> None:
    """Tune's first trial is train's default config, so its exported cnn is at least as good (within noise)."""
    from raygenre.training.tune import tune_models

    tcfg = load_config(TuneConfig, overrides={"models": ["cnn"], "num_samples": 2, "max_epochs": 12,
                                          "grace_period": 6})
    result = tune_models(hard_table, tcfg, str(tmp_path / "tune"), verbose=0,
                         set_default=False)
    plain = train(hard_table, cfg("cnn", epochs=12), str(tmp_path / "plain"), storage_path=str(tmp_path / "runs"))
    tuned = result.best["cnn"]["test"]
    print(f"cnn test segments: tune {tuned['segment_accuracy']:.3f}, train {plain.test['segment_accuracy']:.3f}")
    assert tuned["segment_accuracy"] >= plain.test["segment_accuracy"] - SAME_WITHIN
    assert tuned["track_accuracy"] >= 0.4
