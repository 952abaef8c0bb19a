"""``raygenre tune``: hyperparameter search for the three models on Ray Tune, each trial a Ray Train run.

Ray 2.60 runs Train V2, where ``Tuner(TorchTrainer)`` is not supported: each trial is a Tune *function*
trainable that builds the same ``TorchTrainer`` as ``raygenre train`` and forwards its per-epoch reports to
Tune with ``TuneReportCallback`` (which also passes the epoch's checkpoint path). The trial actor itself
asks for almost nothing (``cpu: 0.01``); its Train workers hold the real resources, and the number of
concurrent trials is derived from the cluster so trials never wait on each other for CPUs (no deadlock).

One Tuner per architecture (``OUT/tune/<model>``), with ASHA on validation accuracy (the metric ``raygenre
train`` picks its best epoch by): learning curves of different architectures are not comparable at early
rungs, so each competes with its own kind, and no trial is judged before ``grace_period`` epochs (at least
half the budget by default: first epochs are noisy, and on real GTZAN the first rungs cut the wrong CNNs).
Afterwards the best trial of each model (highest validation accuracy) is evaluated on the test split and
exported as a
model artifact (``OUT/models/<model>``); the overall best becomes ``OUT/models/best`` and the workspace's
default model, which ``raygenre label`` uses when given no ``--model``.
"""

from __future__ import annotations

import dataclasses
import functools
import grp
import hashlib
import math
import os
import pwd
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator, Searcher

from raygenre import storage, workspace
from raygenre.config import TrainConfig, TuneConfig, to_dict
from raygenre.data.table import open_table
from raygenre.model.artifact import copy_model, set_default_model
from raygenre.runtime import ensure_ray, wait_for_resources
from raygenre.training.train import (
    Prepared,
    build_trainer,
    effective_config,
    finish,
    gpu_batch,
    prepare,
    read_checkpoint,
)

HPARAMS = ("lr", "batch_size", "dropout", "weight_decay", "hidden")
TUNE_DONE = "tune.json"  # written last by tune_models: the search is finished
TUNE_NAMES = {"tune", "train", "models", "trials.csv", "trials.parquet", TUNE_DONE}  # what a tune run writes in OUT
TRIAL_CPU = 0.01  # what a trial actor itself asks for; its Train workers hold the real resources
TUNER_PKL = "tuner.pkl"  # Ray Tune's pickled Tuner in each experiment folder (written once, by Tuner())
TUNER_RECORD = "raygenre-tuner.sha256"  # beside it: raygenre's record of the tuner.pkl it saw Tune write


@dataclass
class TuneResult:
    """What a search produced."""

    out: str
    trials: pd.DataFrame  # one row per trial (see ``trial_table``)
    best: dict[str, dict[str, Any]]  # per model: trial id, hyperparameters, val loss, test metrics, model_dir
    best_model: str  # the overall best model's name
    best_model_dir: str
    default_model_dir: str
    synthetic: bool
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def search_space(spec: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``raygenre/configs/tune.yaml`` ranges -> Ray Tune sampling objects."""
    space: dict[str, Any] = {}
    for name, s in spec.items():
        kind = s["type"]
        if kind == "loguniform":
            space[name] = tune.loguniform(s["low"], s["high"])
        elif kind == "uniform":
            space[name] = tune.uniform(s["low"], s["high"])
        elif kind == "choice":
            space[name] = tune.choice(list(s["values"]))
        elif kind == "randint":
            space[name] = tune.randint(s["low"], s["high"])
        else:
            raise ValueError(f"search space {name}: unknown type {kind!r} (loguniform, uniform, choice, randint)")
    return space


def grace_period(cfg: TuneConfig) -> int:
    """ASHA's grace period: the config's, or half of ``max_epochs`` (rounded up) when it says null."""
    grace = cfg.grace_period if cfg.grace_period is not None else math.ceil(cfg.max_epochs / 2)
    if not 1 <= grace <= cfg.max_epochs:
        raise ValueError(f"tune: grace_period {grace} must be between 1 and max_epochs {cfg.max_epochs} "
                         f"(ASHA judges no trial before grace_period epochs)")
    return grace


def default_point(base: TrainConfig, space: dict[str, Any]) -> dict[str, Any]:
    """The trainer's own defaults for the searched hyperparameters: the first trial of every search.

    So a search never exports a model worse (on validation) than plain ``raygenre train`` with the same
    budget: the default configuration is always one of its trials.
    """
    cfg = effective_config(base)
    return {k: getattr(cfg, k) for k in HPARAMS if k in space}


def make_search_alg(name: str, seed: int, max_concurrent: int, points: list[dict[str, Any]] | None = None) -> Any:
    """The search algorithm named in the config: random (default), or optuna/hyperopt when installed.

    ``points`` are evaluated first (each replaces one of ``num_samples``). ``max_concurrent`` must be given to
    a ``BasicVariantGenerator`` itself: Tune applies ``max_concurrent_trials`` only to generators it creates,
    and two trials on a 2-CPU machine deadlock.
    """
    if name == "random":
        return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent, points_to_evaluate=points)
    if name == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch  # optional package: imported only when chosen

            return OptunaSearch(seed=seed, points_to_evaluate=points)
        except ImportError as exc:
            raise ValueError("search_alg optuna needs the optuna package: pip install optuna") from exc
    if name == "hyperopt":
        try:
            from ray.tune.search.hyperopt import HyperOptSearch  # optional package: imported only when chosen

            return HyperOptSearch(random_state_seed=seed, points_to_evaluate=points)
        except ImportError as exc:
            raise ValueError("search_alg hyperopt needs the hyperopt package: pip install hyperopt") from exc
    raise ValueError(f"unknown search_alg {name!r}: use random, optuna or hyperopt")


MIN_WORKER_CPU = 0.25  # below this a Train worker is starved (and Ray Data's tasks are, too)


def trial_needs(cfg: TuneConfig) -> tuple[dict[str, float], dict[str, float]]:
    """(least, wanted) resources for a search: the least ``plan_concurrency`` accepts (one trial of
    ``MIN_WORKER_CPU`` workers, its actor and the data pipeline's CPU, and ``gpus_per_trial``), and what it would
    like to start with: ``max_concurrent`` trials (1 when derived) of 1-CPU workers. ``tune_models`` waits for the
    least on a cluster that starts its workers on demand, having asked its autoscaler for the wanted."""
    workers, trials = cfg.trial_workers, cfg.max_concurrent or 1
    least = {"CPU": 1.0 + TRIAL_CPU + workers * MIN_WORKER_CPU}
    wanted = {"CPU": 1.0 + trials * (TRIAL_CPU + workers * 1.0)}
    if cfg.gpus_per_trial > 0:
        least["GPU"], wanted["GPU"] = cfg.gpus_per_trial, trials * cfg.gpus_per_trial
    return least, wanted


def plan_concurrency(resources: dict[str, float], cfg: TuneConfig) -> tuple[int, float]:
    """(concurrent trials, CPUs per Train worker) that the cluster can hold at once.

    One whole CPU stays free for the Ray Data read tasks feeding the workers (each asks for 1 CPU; without a
    free one, every trial waits forever), and that CPU is counted after the trial actors' own TRIAL_CPU
    each. On small machines workers get at most half a CPU. With GPUs, the GPU count bounds concurrency.
    """
    cpus = float(resources.get("CPU", 1.0))
    gpus = float(resources.get("GPU", 0.0))
    if cfg.gpus_per_trial > gpus:  # Tune would leave every trial PENDING forever
        raise ValueError(f"gpus_per_trial {cfg.gpus_per_trial:g}, but the Ray cluster has "
                         f"{'no GPU' if not gpus else f'{gpus:g} GPU(s)'}: use --gpus-per-trial 0 to tune on CPUs, "
                         f"or a cluster with GPUs")
    workers = cfg.trial_workers
    per_worker = 1.0 if cpus >= 4 else 0.5
    fit = max(1, math.floor((cpus - 1.0) / (workers * per_worker + TRIAL_CPU)))
    if cfg.gpus_per_trial > 0:
        fit = min(fit, max(1, math.floor(float(resources.get("GPU", 0.0)) / cfg.gpus_per_trial + 1e-9)))
    if cfg.max_concurrent > 0:
        fit = min(fit, cfg.max_concurrent)
    spare = cpus - 1.0 - fit * TRIAL_CPU
    per_worker = min(per_worker, math.floor(100 * spare / (fit * workers)) / 100)
    if per_worker < MIN_WORKER_CPU:  # a trial would crawl or wait forever: say so instead
        raise ValueError(f"the Ray cluster has {cpus:g} CPUs: too few for {workers} Train worker(s) "
                         f"per trial plus the CPU the data pipeline needs; tune needs at least "
                         f"{1.0 + TRIAL_CPU + workers * MIN_WORKER_CPU:.2f} (use "
                         f"--workers-per-trial 1, or a machine/cluster with 2+ CPUs)")
    return fit, per_worker


def _trial_cfg(base: TrainConfig, config: dict[str, Any]) -> TrainConfig:
    """A trial's train config: ``base`` with the sampled hyperparameters, then the GPU batch rule."""
    return gpu_batch(effective_config(dataclasses.replace(base, **{k: config[k] for k in HPARAMS if k in config})))


def run_trial(config: dict[str, Any], prepared: Prepared, base: TrainConfig, train_storage: str,
              cpus_per_worker: float, gpus_per_worker: float) -> None:
    """The Tune function trainable: one ``TorchTrainer`` run whose epoch reports reach Tune."""
    cfg = _trial_cfg(base, config)
    trial_id = tune.get_context().get_trial_id()
    trainer = build_trainer(prepared.for_trial(cfg), cfg, train_storage, name=f"trial-{trial_id}",
                            callbacks=[TuneReportCallback()], cpus=cpus_per_worker)
    if gpus_per_worker and cfg.gpu:
        trainer.scaling_config.resources_per_worker["GPU"] = gpus_per_worker
    trainer.fit()


def trial_table(model: str, results: Any, max_epochs: int) -> pd.DataFrame:
    """One row per trial: model, key hyperparameters, epochs run, best val loss/accuracy, stopped early."""
    rows = []
    for r in results:
        df = r.metrics_dataframe
        if df is None or df.empty or "val_loss" not in df:
            rows.append({"model": model, "trial_id": r.path.rstrip("/").rsplit("/", 1)[-1], "epochs": 0,
                         "error": str(r.error) if r.error else "no result", **{k: r.config.get(k) for k in HPARAMS}})
            continue
        best = df.sort_values(["val_acc", "val_loss"], ascending=[False, True]).iloc[0]
        epochs = int(df["epoch"].max())
        patience_stop = bool(df["stopped_early"].iloc[-1]) if "stopped_early" in df else False
        rows.append({
            "model": model, "trial_id": str(df["trial_id"].iloc[-1]), **{k: r.config.get(k) for k in HPARAMS},
            "epochs": epochs, "best_val_loss": float(best["val_loss"]), "best_val_acc": float(best["val_acc"]),
            "best_epoch": int(best["epoch"]),
            "stopped_early": epochs < max_epochs,
            "stopped_by": ("patience" if patience_stop else "ASHA") if epochs < max_epochs else "",
            "checkpoint_path": str(df["checkpoint_path"].dropna().iloc[-1]) if "checkpoint_path" in df else None,
            "error": str(r.error) if r.error else None,
        })
    return pd.DataFrame(rows)


def check_tune_out(out: str, *, resume: bool, overwrite: bool) -> None:
    """Refuse a tune ``out`` that is a file, holds something other than a raygenre tune run, or holds a finished
    search (unless ``resume`` or ``overwrite``). Raises ``storage.OutputExistsError``."""
    fs, inner = storage.resolve(out)
    info = fs.get_file_info(inner)
    if info.type == storage.pafs.FileType.NotFound:
        return
    if info.type != storage.pafs.FileType.Directory:
        raise storage.OutputExistsError(f"{out} is a file; --out must be a folder.")
    names = {i.base_name for i in fs.get_file_info(storage.pafs.FileSelector(inner))}
    foreign = sorted(names - TUNE_NAMES - {storage.LEASE})
    if foreign:
        raise storage.OutputExistsError(
            f"{out} already exists and is not a raygenre tune run (it holds {', '.join(foreign[:3])}). raygenre "
            f"never deletes what it did not write: choose a new or empty folder for --out.")
    if TUNE_DONE in names and not (resume or overwrite):
        raise storage.OutputExistsError(f"{out} already holds a finished raygenre tune run. Pass --overwrite to "
                                        f"search again there, or choose another --out.")


class ResumeRefusedError(ValueError):
    """``tune --resume`` on Tune state that raygenre cannot vouch for (loading it would run its pickles)."""


def _refuse(path: str, why: str) -> ResumeRefusedError:
    return ResumeRefusedError(
        f"refusing to resume the search in {storage.redact(path)}: {why}. Resuming loads Ray Tune's pickled state "
        f"(tuner.pkl, experiment and searcher state), which runs code, so raygenre resumes only state it recorded "
        f"in a folder nobody else can write; run without --resume to search again from scratch (or --overwrite a "
        f"finished one), or fix the permissions if you trust every file there.")


def record_tuner(path: str) -> None:
    """Write raygenre's record of ``path``'s ``tuner.pkl`` (its SHA-256) beside it; ``check_resumable`` compares it."""
    digest = hashlib.sha256(storage.read_bytes(storage.join(path, TUNER_PKL))).hexdigest()
    storage.write_text_atomic(storage.join(path, TUNER_RECORD), digest + "\n")


@functools.lru_cache(maxsize=64)
def _group_is_mine(gid: int) -> bool:
    """True when group ``gid`` holds nobody but this user (a user-private group, the umask 002 set-up)."""
    try:
        group, me = grp.getgrgid(gid), pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return False
    members = set(group.gr_mem) | {u.pw_name for u in pwd.getpwall() if u.pw_gid == gid}
    return members <= {me}


def _others_can_write(st: os.stat_result) -> bool:
    return bool(st.st_mode & stat.S_IWOTH or (st.st_mode & stat.S_IWGRP and not _group_is_mine(st.st_gid)))


def _check_local_tree(experiment: Path, out: Path, path: str) -> None:
    """Refuse unless only this user (or root, above ``out``) can have written what Tune will load.

    The folders above ``out`` (links resolved) must belong to this user or root and be writable by nobody else
    unless sticky (``/tmp``: others cannot move this user's entries there); ``out``, ``out/tune`` and every
    folder and file under the experiment folder must be this user's, writable by nobody else, and no links.
    """
    uid = os.getuid()
    real_out = Path(os.path.realpath(out))
    for folder in reversed(real_out.parents):
        st = os.stat(folder)
        if st.st_uid not in (uid, 0):
            raise _refuse(path, f"{folder} (above --out) belongs to uid {st.st_uid}, not to you")
        if _others_can_write(st) and not st.st_mode & stat.S_ISVTX:
            raise _refuse(path, f"{folder} (above --out) is writable by other users")
    rel = experiment.relative_to(out)
    chain = [real_out, *(real_out.joinpath(*rel.parts[: i + 1]) for i in range(len(rel.parts)))]
    walked = [(d, os.lstat(d)) for d in chain]
    for root, dirs, files in os.walk(chain[-1]):
        walked += [(Path(root, n), os.lstat(Path(root, n))) for n in [*dirs, *files]]
    for entry, st in walked:
        if stat.S_ISLNK(st.st_mode):
            raise _refuse(path, f"{entry} is a symbolic link (raygenre and Tune write none)")
        if st.st_uid != uid:
            raise _refuse(path, f"{entry} belongs to uid {st.st_uid}, not to you (uid {uid})")
        if _others_can_write(st):
            raise _refuse(path, f"{entry} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})")


def check_resumable(path: str, out: str) -> None:
    """Refuse (``ResumeRefusedError``) to let Tune restore the experiment folder ``path`` (under ``out``) unless
    raygenre can vouch for it: ``tuner.pkl`` must match the record raygenre wrote when the search started, and on
    a local disk every file and folder Tune reads must be this user's and writable by nobody else.

    ``Tuner.restore`` unpickles ``tuner.pkl``, the experiment state (trials' pickled fields), the searcher state
    and trial results: whoever can write them runs code in this process. On an object store there is no owner
    to check: the record catches a replaced ``tuner.pkl`` (or one raygenre never wrote), but anyone who can write
    the bucket's prefix can still rewrite the rest, so write access to it is the trust boundary.
    """
    local, local_out = storage.local_path(path), storage.local_path(out)
    if local is not None and local_out is not None:
        _check_local_tree(local, local_out, path)
    record = storage.join(path, TUNER_RECORD)
    if not storage.exists(record):
        raise _refuse(path, f"{TUNER_RECORD} is missing (tuner.pkl was not written by this raygenre's search)")
    expected = storage.read_text(record).strip()
    found = hashlib.sha256(storage.read_bytes(storage.join(path, TUNER_PKL))).hexdigest()
    if found != expected:
        raise _refuse(path, f"tuner.pkl is not the one raygenre recorded when the search started (SHA-256 "
                            f"{found[:12]}..., recorded {expected[:12]}...)")


def tune_run_dir(resume: bool) -> str:
    """The default tune ``out``: with ``resume``, the workspace's latest ``runs/tune-*``; else a new one."""
    runs = sorted((workspace.home() / "runs").glob("tune-*")) if resume else []
    return str(runs[-1]) if runs else str(workspace.new_run_dir("tune"))


def tune_models(features_dir: str, cfg: TuneConfig, out: str, *, resume: bool = False,
                address: str | None = None, set_default: bool = True, verbose: int = 1) -> TuneResult:
    """Search every model in ``cfg.models``; export the best of each and the overall best. See module doc.

    Trials start from ``cfg.train`` (the train config nested in the tune config), with model, epochs, workers,
    gpu and seed set from ``cfg`` and the searched hyperparameters from the space.

    ``out`` (local path or URI all nodes share) holds ``tune/<model>`` (Tune's experiment folders: trial
    results, TensorBoard events), ``train/`` (each trial's Ray Train checkpoints), ``models/``,
    ``trials.csv`` and ``trials.parquet``. ``resume`` continues an interrupted search in the same ``out``, after
    ``check_resumable`` (``ResumeRefusedError`` for Tune state raygenre cannot vouch for: it is pickled).
    """
    t0 = time.time()
    base = cfg.train
    grace = grace_period(cfg)
    experiments = storage.join(out, "tune")
    if resume:  # every model's state, before any work (and again right before each restore)
        for model in cfg.models:
            if tune.Tuner.can_restore(storage.join(experiments, model)):
                check_resumable(storage.join(experiments, model), out)
    ensure_ray(address)
    least, wanted = trial_needs(cfg)  # a cluster starting its workers on demand: ask its autoscaler, and wait
    resources = wait_for_resources(least, cfg.wait_for_workers_s, "tune", want=wanted,
                                   setting="tune.wait_for_workers_s")
    concurrent, per_worker = plan_concurrency(resources, cfg)
    gpus_per_worker = cfg.gpus_per_trial / cfg.trial_workers if cfg.gpus_per_trial > 0 else 0.0
    tables, best = [], {}
    feature_table = open_table(features_dir)  # features.json: read once for the whole search

    def model_base(model: str) -> TrainConfig:
        return dataclasses.replace(base, model=model, epochs=cfg.max_epochs, workers=cfg.trial_workers,
                                   gpu=cfg.gpus_per_trial > 0, seed=cfg.seed)

    # The data, once for the whole search: the splits and their statistics do not depend on the model, so one
    # prepare writes the split files (one copy per node, none in the object store) and every trial of every
    # model gets a Prepared that names them, a few KB. Before, each model prepared (and put) its own copy and
    # with_parameters put another: 3 models were 3 copies in the driver and 6 in the object store.
    shared = prepare(feature_table, model_base(cfg.models[0]))
    synthetic = feature_table.synthetic
    for model in cfg.models:
        if model not in cfg.search_spaces:
            raise ValueError(f"no search space for model {model!r} in the tune config")
        mbase = model_base(model)
        prepared = shared.for_trial(effective_config(mbase))
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, prepared=prepared, base=mbase,
                                 train_storage=storage.join(out, "train"),
                                 cpus_per_worker=per_worker, gpus_per_worker=gpus_per_worker),
            {"cpu": TRIAL_CPU},
        )
        path = storage.join(experiments, model)
        if resume and tune.Tuner.can_restore(path):
            check_resumable(path, out)  # Tune unpickles what is there: only state raygenre can vouch for
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        else:
            if storage.exists(path):
                storage.remove(path)
            search_alg = make_search_alg(cfg.search_alg, cfg.seed, concurrent,
                                         [default_point(mbase, cfg.search_spaces[model])])
            tuner = tune.Tuner(
                trainable,
                param_space=search_space(cfg.search_spaces[model]),
                tune_config=tune.TuneConfig(
                    metric="val_acc", mode="max", num_samples=cfg.num_samples, search_alg=search_alg,
                    # a Searcher (optuna, hyperopt) is limited by Tune; the random generator limits itself
                    max_concurrent_trials=concurrent if isinstance(search_alg, Searcher) else None,
                    scheduler=ASHAScheduler(time_attr="training_iteration", max_t=cfg.max_epochs,
                                            grace_period=grace, reduction_factor=cfg.reduction_factor),
                ),
                run_config=tune.RunConfig(name=model, storage_path=experiments, verbose=verbose,
                                          failure_config=tune.FailureConfig(max_failures=base.max_failures)),
            )
            record_tuner(path)  # Tuner() has just written tuner.pkl (never rewritten): what --resume may load
        results = tuner.fit()
        table = trial_table(model, results, cfg.max_epochs)
        tables.append(table)
        ok = table.dropna(subset=["best_val_acc"]) if "best_val_acc" in table else table.iloc[0:0]
        if ok.empty:
            raise RuntimeError(f"every {model} trial failed; see {path} (first error: {table['error'].iloc[0]})")
        # highest validation accuracy; ties go to the lower validation loss
        top = ok.sort_values(["best_val_acc", "best_val_loss"], ascending=[False, True]).iloc[0]
        tcfg = _trial_cfg(mbase, top.to_dict())
        state = read_checkpoint(top["checkpoint_path"], out)["state"]
        model_dir = storage.join(out, "models", model)
        res = finish(prepared.for_trial(tcfg), tcfg, state, model_dir,
                     storage.join(out, "train", f"trial-{top['trial_id']}"), t0)
        best[model] = {"trial_id": top["trial_id"], **{k: top[k] for k in HPARAMS}, "val_loss": top["best_val_loss"],
                       "val_acc": top["best_val_acc"], "epochs": int(top["epochs"]), "model_dir": model_dir,
                       "test": {k: res.test[k] for k in ("segment_accuracy", "track_accuracy", "macro_f1")}}
    trials = pd.concat(tables, ignore_index=True)
    storage.write_text_atomic(storage.join(out, "trials.csv"), trials.to_csv(index=False))
    fs, inner = storage.resolve(storage.join(out, "trials.parquet"))
    trials.to_parquet(inner, filesystem=fs, index=False)
    winner = max(best, key=lambda m: (best[m]["val_acc"], -best[m]["val_loss"]))
    best_dir = storage.join(out, "models", "best")
    # Both destinations are raygenre's own (OUT/models/best, the workspace default): a model there is replaced.
    copy_model(best[winner]["model_dir"], best_dir, overwrite=True)
    default_dir = str(workspace.default_model_dir())
    if set_default:
        set_default_model(best[winner]["model_dir"])
    summary = {"best_model": winner, "best": best, "config": to_dict(cfg), "synthetic": synthetic,
               "features_dir": str(features_dir), "default_model_dir": default_dir if set_default else None}
    storage.write_json_atomic(storage.join(out, TUNE_DONE), summary)
    return TuneResult(out=out, trials=trials, best=best, best_model=winner, best_model_dir=best_dir,
                      default_model_dir=default_dir, synthetic=synthetic, seconds=round(time.time() - t0, 1))
