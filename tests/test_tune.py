"""`raygenre tune`: a search on 2 CPUs runs to completion, exports the best models, and resumes after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import write_feature_table

import raygenre
from raygenre.config import ConfigError, TuneConfig, load_config
from raygenre.training.tune import grace_period, plan_concurrency, tune_models

TINY = {"num_samples": 2, "max_epochs": 3, "grace_period": 1, "reduction_factor": 2}


def test_concurrency_fits_the_cluster() -> None:
    cfg = load_config(TuneConfig)
    # one whole CPU stays free for Ray Data's read tasks, after the trial actors' 0.01 CPU each
    assert plan_concurrency({"CPU": 2.0}, cfg) == (1, 0.5)
    n, per_worker = plan_concurrency({"CPU": 3.0}, cfg)
    assert n == 3 and n * (per_worker + 0.01) <= 2.0
    assert plan_concurrency({"CPU": 16.0}, cfg) == (14, 1.0)
    gpu = load_config(TuneConfig, overrides={"gpus_per_trial": 0.5})
    assert plan_concurrency({"CPU": 16.0, "GPU": 2.0}, gpu)[0] == 4
    capped = load_config(TuneConfig, overrides={"max_concurrent": 1})
    assert plan_concurrency({"CPU": 16.0}, capped)[0] == 1
    with pytest.raises(ValueError, match="tune needs at least"):  # 1 CPU: nothing left for a worker
        plan_concurrency({"CPU": 1.0}, cfg)


def test_gpu_trials_are_planned_or_refused_before_any_work() -> None:
    """Fractions hold one worker; N > 1 GPUs means N workers of one GPU each; no GPU on the cluster fails fast."""
    two = load_config(TuneConfig, overrides={"gpus_per_trial": 2})
    assert two.trial_workers == 2
    assert plan_concurrency({"CPU": 16.0, "GPU": 4.0}, two)[0] == 2  # 4 GPUs hold two 2-GPU trials
    assert load_config(TuneConfig, overrides={"gpus_per_trial": 0.5}).trial_workers == 1
    with pytest.raises(ConfigError, match=r"tune\.gpus_per_trial: 0\.5: a fraction of a GPU holds one worker"):
        load_config(TuneConfig, overrides={"gpus_per_trial": 0.5, "workers_per_trial": 2})
    with pytest.raises(ConfigError, match=r"tune\.gpus_per_trial: 1\.5: above 1 it must be a whole number"):
        load_config(TuneConfig, overrides={"gpus_per_trial": 1.5})
    with pytest.raises(ConfigError, match=r"tune\.workers_per_trial: 3: with gpus_per_trial 2 each trial runs 2"):
        load_config(TuneConfig, overrides={"gpus_per_trial": 2, "workers_per_trial": 3})
    with pytest.raises(ValueError, match="gpus_per_trial 1, but the Ray cluster has no GPU"):
        plan_concurrency({"CPU": 16.0}, load_config(TuneConfig, overrides={"gpus_per_trial": 1}))
    with pytest.raises(ValueError, match=r"gpus_per_trial 2, but the Ray cluster has 1 GPU\(s\)"):
        plan_concurrency({"CPU": 16.0, "GPU": 1.0}, two)


def test_grace_period_is_half_the_budget_unless_set() -> None:
    cfg = load_config(TuneConfig)
    assert cfg.grace_period is None and grace_period(cfg) == cfg.max_epochs // 2 == 6
    assert grace_period(load_config(TuneConfig, overrides={"max_epochs": 3})) == 2  # rounded up
    assert grace_period(load_config(TuneConfig, overrides={"max_epochs": 3, "grace_period": 1})) == 1
    with pytest.raises(ValueError, match="grace_period 7 must be between 1 and max_epochs 4"):
        grace_period(load_config(TuneConfig, overrides={"max_epochs": 4, "grace_period": 7}))


def test_search_spaces_hold_the_tutorial_values() -> None:
    cfg = load_config(TuneConfig)
    for model, space in cfg.search_spaces.items():
        assert space["lr"]["low"] <= 1e-4 <= space["lr"]["high"], model
        assert 32 in space["batch_size"]["values"] and space["dropout"]["low"] <= 0.3 <= space["dropout"]["high"]
        assert {"ann": 512, "cnn": 64, "lstm": 64}[model] in space["hidden"]["values"]
    assert cfg.search_spaces["ann"]["weight_decay"]["low"] <= 1e-3 <= cfg.search_spaces["ann"]["weight_decay"]["high"]


def test_tune_runs_to_completion_on_two_cpus(tmp_path: Path, ray_local) -> None:
    feats = tmp_path / "features"
    write_feature_table(feats)
    cfg = load_config(TuneConfig, overrides={"models": ["ann", "cnn"], **TINY})
    result = tune_models(str(feats), cfg, str(tmp_path / "out"), verbose=0)
    trials = result.trials
    assert len(trials) == 4 and set(trials["model"]) == {"ann", "cnn"}
    assert trials["best_val_acc"].notna().all() and (trials["epochs"] >= 1).all()
    assert (trials["epochs"] <= 3).all()
    assert (tmp_path / "out" / "trials.csv").is_file() and (tmp_path / "out" / "trials.parquet").is_file()
    for model in ("ann", "cnn"):
        loaded = raygenre.load_model(str(tmp_path / "out" / "models" / model))
        assert loaded.name == model
        assert set(result.best[model]["test"]) == {"segment_accuracy", "track_accuracy", "macro_f1"}
        mine = trials[trials["model"] == model]
        assert result.best[model]["val_acc"] == pytest.approx(mine["best_val_acc"].max())
        # the first trial of every search is the trainer's default configuration
        default = (mine["lr"] == 1e-3) & (mine["batch_size"] == 32) & (mine["hidden"] == {"ann": 512, "cnn": 64}[model])
        assert default.sum() == 1, mine
    winner = max(result.best, key=lambda m: (result.best[m]["val_acc"], -result.best[m]["val_loss"]))
    assert result.best_model == winner
    assert raygenre.load_model(result.default_model_dir).name == winner  # what `raygenre label` uses
    events = list((tmp_path / "out" / "tune").rglob("events.out.tfevents*"))
    assert events, "Tune's TensorBoard logger wrote no event files"
    assert json.loads((tmp_path / "out" / "tune.json").read_text())["best_model"] == winner


def _finished_trials(exp: Path) -> dict[str, float]:
    """trial dir -> mtime of its result.json, for trials whose last result is final."""
    out = {}
    for result in exp.glob("*/result.json"):
        lines = result.read_text().strip().splitlines()
        if lines and json.loads(lines[-1]).get("epoch") is not None:
            out[result.parent.name] = result.stat().st_mtime
    return out


@pytest.mark.slow
def test_tune_resumes_after_the_driver_is_killed(tmp_path: Path, ray_local) -> None:
    feats = tmp_path / "features"
    write_feature_table(feats)
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump({"models": ["ann", "lstm"], **TINY, "max_concurrent": 1}))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "raygenre.cli", "tune", "--features", str(feats), "--out", str(out),
           "--config", str(tmp_path / "tune.yaml"), "--no-set-default"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None and not (out / "tune" / "lstm").exists():
            time.sleep(0.5)
        assert proc.poll() is None, "tune finished before it could be interrupted"
        time.sleep(3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # a killed driver (and the local Ray it started)
        proc.wait()
    ann_before = _finished_trials(out / "tune" / "ann")
    assert len(ann_before) == 2 and not (out / "trials.csv").exists()
    again = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert _finished_trials(out / "tune" / "ann") == ann_before  # finished trials were not run again
    assert len(_finished_trials(out / "tune" / "lstm")) == 2
    trials = (out / "trials.csv").read_text().splitlines()
    assert len(trials) == 1 + 4
    assert "overall best" in again.stdout
