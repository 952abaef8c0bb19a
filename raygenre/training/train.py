"""``raygenre train``: one model trained data-parallel on Ray Train (V2), then exported and tested.

Driver (``train``)
    read the feature table's manifest -> the train and val splits as memory-mapped files on this node
    (``prepare``, ``raygenre.data.splits``: streamed from the Parquet table, never whole in the driver), with
    the per-coefficient mean/std over every frame of the TRAIN split -> ``TorchTrainer`` (each worker maps
    the files of its node, building them there first when missing) -> best epoch's weights -> test-split
    evaluation + eval-mode check on the train split -> model artifact (``out_dir``) + ``config.yaml``,
    ``history.json`` and ``confusion.png`` in the run folder.

Workers (``train_loop_per_worker``) and the single-process twin (``train_local``) run the same ``fit_loop``
    * Data: every epoch, every rank takes its 1/N slice of a fresh seeded permutation of the whole train split
      (``epoch_rows``): a uniform random sample, different every epoch, the same on a resumed run, and with one
      worker exactly the order of a plain ``randperm`` loop. (Ray Data's ``streaming_split`` gave each rank
      whole blocks, and featurize writes tracks genre by genre: with 2 workers each rank saw a few genres.)
    * Batch: ``batch_size`` is the GLOBAL batch, split evenly across the ranks, and DDP averages the ranks'
      gradients, so N workers take the same optimizer steps on the same number of segments as one process.
    * BatchNorm: after every training epoch the running statistics are recomputed over a seeded sample of the
      train split (``recompute_batchnorm``: cumulative average, then averaged across ranks), so validation
      and the exported model use statistics of the data, not an exponential average dragged from its initial
      values (with Keras' momentum 0.99 the eval-mode CNN sat at chance for the first few hundred steps:
      18 % vs 50 % segment accuracy after 66 steps on real GTZAN). It costs one forward pass over
      ``BN_SAMPLE`` segments per epoch and equals what one process gets, on CPU and on GPUs alike, so no
      SyncBatchNorm either: that would add an all-reduce per BatchNorm layer per step (3 per cnn step) to make
      the training-mode statistics global, where each GPU's share is already ``min_gpu_batch`` (256) segments,
      and what validation and the exported model use is the recomputed statistics anyway.
    * Per-rank sums of loss/correct/count are all-reduced, so every rank computes the same validation metrics
      and takes the same early-stopping decision. DDP on gloo (CPU) or NCCL (GPU). The loss adds the
      tutorial's L2 term, ``weight_decay * l2_penalty()``.
    * Best epoch = highest validation accuracy (ties: lower validation loss); early stopping only after
      ``min_epochs``, then after ``patience`` epochs without a new best. Validation loss alone ended real
      GTZAN runs after a handful of epochs on noise (patience 5, best epoch 5: 15 % test accuracy).

Fault tolerance
    every epoch rank 0 reports a checkpoint holding the model, the optimiser, the best weights so far, the
    early-stopping counter and the per-epoch history. A replaced worker group (``FailureConfig
    (max_failures)``) resumes from the last committed epoch via ``ray.train.get_checkpoint()``; dropout
    and data order are seeded per epoch, so a resumed run continues with the numbers an uninterrupted one
    gets. (Ray Train commits a report when its controller next polls the workers: a worker that dies
    right after reporting can lose that epoch, which is then run again.)
    ``RAYGENRE_FAULT_KILL_EPOCH=N`` (tests) makes one worker SIGKILL itself once, during epoch N.

Reproducibility
    ``seed`` fixes the initial weights, dropout (re-seeded per epoch and rank) and the data order. Same seed +
    same worker count = same metrics on CPU.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.execution import context as train_context
from ray.util.queue import Empty, Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raygenre import storage
from raygenre.config import TrainConfig, to_dict
from raygenre.data.splits import SplitCache, open_splits
from raygenre.data.table import FeatureTable, open_table
from raygenre.model.artifact import LEGACY, LoadedModel, save_model
from raygenre.model.networks import MODELS, build_model, resolve_hparams, unwrap
from raygenre.runtime import ensure_ray
from raygenre.training.evaluate import evaluate, plot_confusion
from raygenre.workspace import home, split_cache_dir

FAULT_ENV = "RAYGENRE_FAULT_KILL_EPOCH"
STATE_FILE = "train_state.pt"
# Train segments (all ranks together) that BatchNorm statistics are recomputed over after every epoch: each
# channel's mean/variance then pools >= 1024 x 15 positions, and the pass costs ~0.3 s of a ~10 s cnn epoch
# on 2 cores (2048 cost ~0.7 s; measured per rank, 1 thread, built-in table).
BN_SAMPLE = 1024
CHECK_SAMPLE = 2048  # train segments the exported model is checked on in eval mode
EVAL_GAP_WARN = 0.10  # eval-mode train accuracy this far below train-mode accuracy is printed as a warning


@dataclass
class TrainResult:
    """What a training run produced."""

    run_dir: str  # Ray Train checkpoints, config.yaml, history.json, confusion.png
    model_dir: str  # the model artifact (load with raygenre.load_model)
    history: list[dict[str, Any]]  # one row per epoch: train/val loss and accuracy
    best_epoch: int
    stopped_early: bool
    resumed_from: list[int]  # epochs a replaced worker group resumed after (empty: no failure)
    test: dict[str, Any]  # evaluate() on the test split
    config: dict[str, Any]  # the effective TrainConfig (tutorial defaults filled in)
    seconds: float
    synthetic: bool
    eval_check: dict[str, Any] = field(default_factory=dict)  # eval_mode_check(): eval vs train-mode accuracy
    extra: dict[str, Any] = field(default_factory=dict)
    default_model_dir: str | None = None  # set when the model was also made `raygenre label`'s default

    @property
    def resumed_from_epoch(self) -> int | None:
        return self.resumed_from[-1] if self.resumed_from else None


@dataclass
class Prepared:
    """What every trainer on one feature table needs (``prepare``'s result; ``raygenre tune`` shares it between
    trials with ``for_trial``). It holds no data: the splits are files on each node (``splits``), so pickling
    this for a trial sends a few KB, whatever the table's size."""

    cfg: TrainConfig  # the effective config (tutorial defaults filled in)
    table: FeatureTable  # the checked table; its manifest was read once, here
    splits: SplitCache  # the train/val split files; also in loop_config["splits"] for the workers
    loop_config: dict[str, Any]  # fit_loop's config
    mean: np.ndarray  # float32 (n_mfcc,): per-coefficient mean over every frame of the train split
    std: np.ndarray  # float32 (n_mfcc,)
    counts: dict[str, int]  # segments per split

    @property
    def manifest(self) -> dict[str, Any]:
        return self.table.manifest

    @property
    def arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{"train"|"val": (x float32 (N, frames, n_mfcc), y int64 (N,))}: read-only memory maps on this node."""
        return self.splits.arrays()

    def for_trial(self, cfg: TrainConfig) -> Prepared:
        """The same data (and statistics) with the trial's config ``cfg`` in the loop config."""
        return dataclasses.replace(self, cfg=cfg, loop_config={**self.loop_config, **to_dict(cfg)})


# ----------------------------------------------------------------------------------------------- driver side
def effective_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``hidden``/``weight_decay`` None replaced by the tutorial's values for the model."""
    if cfg.model not in MODELS:
        raise ValueError(f"unknown model {cfg.model!r}: choose one of {', '.join(MODELS)}")
    hidden, wd = resolve_hparams(cfg.model, cfg.hidden, cfg.weight_decay)
    return dataclasses.replace(cfg, hidden=hidden, weight_decay=wd)


def _node_cpus() -> list[float]:
    """CPUs of every alive node that has any (the head of a KubeRay cluster may have none)."""
    return [float(n["Resources"].get("CPU", 0.0)) for n in ray.nodes()
            if n.get("Alive") and n["Resources"].get("CPU", 0.0) >= 1.0]


def resolve_workers(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``workers`` None (auto) replaced by the rule below; needs a connected Ray.

    GPU: one worker per GPU of the cluster. CPU: one worker per node. Workers on one node share its memory
    and cores, so splitting a node in two buys nothing but an all-reduce per step: on this 2-core machine the
    cnn epoch took 1.57x the plain loop with 2 workers of 0.5 CPU and 1 thread each (bench/train.py), while
    one worker holding both cores runs the plain loop's two torch threads (``cpus_per_worker``,
    ``worker_threads``).
    """
    if cfg.workers is not None:
        return cfg
    gpus = int(ray.cluster_resources().get("GPU", 0))
    return dataclasses.replace(cfg, workers=max(1, gpus if cfg.gpu else len(_node_cpus())))


def gpu_batch(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with each GPU's share of the batch at least ``min_gpu_batch`` (workers resolved; CPU: unchanged).

    The tutorial's global batch of 32 keeps a GPU mostly idle (launch-bound: a cnn step on 32 segments of
    130x13 is a few hundred microseconds of work) and splitting it over N GPUs only makes each share smaller.
    So a GPU run takes ``min_gpu_batch x workers`` segments per step, fewer steps per epoch, and a learning
    rate scaled by the square root of the batch ratio: the rule for Adam (Malladi et al., 2022: "On the SDEs
    and scaling rules for adaptive gradient algorithms"; the linear rule is SGD's). The run records the
    batch and lr it used. ``bench/gpu.py --batch-rule`` compares the rules' accuracy on the hard synthetic set.
    """
    if not cfg.gpu or cfg.workers is None or cfg.batch_size // cfg.workers >= cfg.min_gpu_batch:
        return cfg
    batch = cfg.min_gpu_batch * cfg.workers
    return dataclasses.replace(cfg, batch_size=batch, lr=min(1.0, cfg.lr * math.sqrt(batch / cfg.batch_size)))


def cpus_per_worker(workers: int) -> float:
    """CPUs to reserve per CPU training worker: the cluster's CPUs shared evenly, never more than the smallest
    node has (a worker cannot span nodes), rounded down to 0.01.

    Training reads its data from memory-mapped split files (``raygenre.data.splits``), not from Ray Data
    tasks, so no CPU needs to stay free beside the workers while they train.
    """
    nodes = _node_cpus() or [float(ray.cluster_resources().get("CPU", 1.0))]
    share = sum(nodes) / max(workers, 1)
    return max(0.01, math.floor(100 * min(share, min(nodes))) / 100)


def worker_threads(cpus: float) -> int:
    """Torch threads for a worker holding ``cpus`` CPUs: one per whole CPU, at least one."""
    return max(1, int(cpus + 1e-9))


def loop_config(cfg: TrainConfig, frames: int, n_mfcc: int, n_genres: int, mean: np.ndarray,
                std: np.ndarray) -> dict[str, Any]:
    """What ``fit_loop`` needs besides the data: every field of the effective config (``to_dict``: no field is
    spelled out twice), the shapes and the train statistics (plain lists: the config travels to the workers)."""
    return {**to_dict(cfg), "frames": frames, "n_mfcc": n_mfcc, "n_genres": n_genres, "mean": mean.tolist(),
            "std": std.tolist(), "fault_kill_epoch": None, "fault_marker": None}


def prepare(features_dir: str | FeatureTable, cfg: TrainConfig, *, cache_root: str | None = None) -> Prepared:
    """Check the feature table, write (or find) its split files on this node, build the loop config.

    The pieces every trainer on this table needs (``raygenre tune`` reuses them with ``build_trainer`` and
    ``finish``). ``features_dir`` may be an already opened ``FeatureTable`` (its manifest is not read again).
    The splits go to memory-mapped files under ``cache_root`` (default: the workspace's split cache), streamed
    from the table (``raygenre.data.splits``): the driver never holds a split, and every node that runs a
    worker maps its own copy, built there once.
    """
    cfg = effective_config(cfg)
    table = open_table(features_dir)
    splits = open_splits(table, cache_root or str(split_cache_dir()))
    counts = dict(splits.counts)
    for split, n in counts.items():
        if n < cfg.workers:
            raise ValueError(f"{storage.redact(str(table.dir))} has {n} {split} segments, fewer than the "
                             f"{cfg.workers} workers; featurize with a {split} split (it needs at least one "
                             f"segment per worker)")
    if cfg.batch_size < cfg.workers:
        raise ValueError(f"batch_size {cfg.batch_size} is the global batch, split across the {cfg.workers} "
                         f"workers: it must be at least the number of workers")
    mean, std = np.asarray(splits.mean, dtype=np.float32), np.asarray(splits.std, dtype=np.float32)
    config = {**loop_config(cfg, table.frames, table.params.n_mfcc, len(table.genres), mean, std), "splits": splits}
    return Prepared(cfg=cfg, table=table, splits=splits, loop_config=config, mean=mean, std=std, counts=counts)


def build_trainer(prepared: Prepared, cfg: TrainConfig, storage_path: str, name: str,
                  callbacks: list[Any] | None = None, cpus: float | None = None) -> TorchTrainer:
    """A ``TorchTrainer`` for ``prepare``'s output; ``callbacks`` are Ray Train ``UserCallback``s (e.g. Tune's).

    ``cpus``: CPUs per worker on CPU runs (default ``cpus_per_worker``); GPU runs take 1 CPU + 1 GPU each.
    """
    resources = {"CPU": 1.0, "GPU": 1.0} if cfg.gpu else {"CPU": cpus or cpus_per_worker(cfg.workers)}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**prepared.loop_config, "threads": worker_threads(resources["CPU"])},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),  # each checkpoint holds the best weights too
            callbacks=list(callbacks or []),
            # Ray Train's per-report INFO lines drown the epoch table; they stay in the session's log files.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )


def _progress_callback(fn: Callable[[dict[str, Any]], None]) -> tuple[Any, Callable[[], None]]:
    """A Ray Train callback forwarding rank 0's per-epoch metrics to ``fn`` on this (driver) process.

    Ray Train callbacks run in the controller actor, so the metrics travel through a Ray queue that a
    driver thread drains. Returns (callback, stop); ``stop()`` drains what is left and ends the thread.
    """
    # On the driver's node (like Ray Train's controller): a queue on another node would die with that node and
    # fail the run, although Ray Train replaces the workers of a lost node.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})

    class Forward(UserCallback):
        def __init__(self, q: Any) -> None:
            self.q = q

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            if metrics:
                self.q.put(dict(metrics[0]))

    done = threading.Event()

    def drain() -> None:
        while True:
            try:
                item = queue.get(timeout=0.5)
            except Empty:
                if done.is_set():
                    return
                continue
            try:
                fn(item)
            except Exception:  # a failing display must not stop training or the later updates
                logging.getLogger(__name__).exception("progress callback failed")

    thread = threading.Thread(target=drain, name="raygenre-train-progress", daemon=True)
    thread.start()

    def stop() -> None:
        done.set()
        thread.join(timeout=30)
        ray.kill(queue.actor)

    return Forward(queue), stop


def read_checkpoint(checkpoint: ray.train.Checkpoint | str, out: str | None = None) -> dict[str, Any]:
    """The saved dict of a training checkpoint: {"model", "optimizer", "state"} (``state``: ``fit_loop``'s).

    ``checkpoint``: a Ray Train ``Checkpoint``, or a checkpoint folder's path. Tune reports that path inside the
    run's filesystem, without a scheme (``bucket/prefix/train/...`` for an ``s3://`` run), so a path without a
    scheme is read through ``out``'s filesystem (local when ``out`` is None or local).
    """
    if isinstance(checkpoint, str):
        if storage.is_uri(checkpoint):
            fs, inner = storage.resolve(checkpoint)
        else:
            fs, inner = storage.resolve(out or checkpoint)[0], checkpoint
    else:
        fs, inner = checkpoint.filesystem, checkpoint.path
    with fs.open_input_stream(f"{inner.rstrip('/')}/{STATE_FILE}") as f:
        data = f.read()
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def run_location(model: str, storage_path: str | None = None, name: str | None = None) -> tuple[str, str]:
    """(storage_path, run name) for Ray Train: default ``$RAYGENRE_HOME/runs`` and ``train-<model>-<time>-<id>``.

    Local paths are made absolute (Ray Train requires it); URIs are kept.
    """
    storage_path = storage_path or str(home() / "runs")
    if not storage.is_uri(storage_path):
        storage_path = str(Path(storage_path).expanduser().resolve())
    return storage_path, name or f"train-{model}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def train(features_dir: str, cfg: TrainConfig, out_dir: str, *, storage_path: str | None = None,
          progress_callback: Callable[[dict[str, Any]], None] | None = None, name: str | None = None,
          overwrite: bool = True) -> TrainResult:
    """Train ``cfg.model`` on a feature table, export the best epoch to ``out_dir``, test it; see the module doc.

    ``storage_path`` (local path or URI shared by all nodes) holds the run folder ``<name>/`` with Ray Train's
    checkpoints (default: ``$RAYGENRE_HOME/runs``). ``progress_callback(metrics)`` is called on this process
    after every epoch with rank 0's metrics. ``out_dir`` is claimed before training (``storage.open_output``):
    something other than a model there, a model without ``overwrite``, or a live run writing it is refused.
    """
    t0 = time.time()
    cfg = effective_config(cfg)  # fail fast: unknown model, unfinished or malformed table
    table = open_table(features_dir)  # features.json: read once for the whole run
    with storage.open_output(out_dir, "model", overwrite=overwrite, legacy=LEGACY) as output:
        return _train(table, cfg, output, storage_path=storage_path, progress_callback=progress_callback,
                      name=name, t0=t0)


def _train(table: FeatureTable, cfg: TrainConfig, output: storage.Output, *, storage_path: str | None,
           progress_callback: Callable[[dict[str, Any]], None] | None, name: str | None, t0: float) -> TrainResult:
    """``train`` once its output is claimed: the Ray Train run, then ``finish`` commits into ``output``."""
    ensure_ray()
    cfg = gpu_batch(resolve_workers(cfg))
    prepared = prepare(table, cfg)
    storage_path, run_name = run_location(cfg.model, storage_path, name)
    run_dir = storage.join(storage_path, run_name)
    fault = os.environ.get(FAULT_ENV)
    if fault:
        prepared.loop_config.update(fault_kill_epoch=int(fault),
                                       fault_marker=storage.join(run_dir, ".fault-injected"))
    callbacks, stop = [], None
    if progress_callback is not None:
        cb, stop = _progress_callback(progress_callback)
        callbacks.append(cb)
    try:
        result = build_trainer(prepared, cfg, storage_path, run_name, callbacks).fit()
    finally:
        if stop is not None:
            stop()
    if result.checkpoint is None:
        raise RuntimeError(f"training finished without a checkpoint (see {storage.redact(run_dir)})")
    state = read_checkpoint(result.checkpoint)["state"]
    return finish(prepared, cfg, state, output.root, run_dir, t0, output=output)


def best_model(prepared: Prepared, cfg: TrainConfig, state: dict[str, Any]) -> LoadedModel:
    """The best epoch's weights of a training ``state`` as an eval-mode model with the train statistics."""
    params, genres = prepared.table.params, prepared.table.genres
    model = build_model(cfg.model, prepared.table.frames, params.n_mfcc, len(genres), hidden=cfg.hidden,
                        dropout=cfg.dropout, bn_momentum=cfg.bn_momentum)
    model.load_state_dict(state["best_state"])
    hparams = {k: getattr(cfg, k) for k in ("hidden", "dropout", "weight_decay", "lr", "batch_size", "epochs",
                                             "min_epochs", "patience", "bn_momentum", "bn_recompute", "workers",
                                             "seed")}
    return LoadedModel(module=model.eval(), name=cfg.model, hparams=hparams, features=params, genres=genres,
                       mean=torch.as_tensor(prepared.mean), std=torch.as_tensor(prepared.std),
                       meta={"frames": prepared.table.frames})


def finish(prepared: Prepared, cfg: TrainConfig, state: dict[str, Any], out_dir: str, run_dir: str,
           t0: float | None = None, *, output: storage.Output | None = None) -> TrainResult:
    """The training ``state`` (from the last checkpoint) -> its best weights -> test evaluation -> artifact in
    ``out_dir`` (committed into ``output`` when the caller holds it open); config.yaml, confusion.png and
    history.json (last: the run folder's finished marker) in ``run_dir``."""
    table = prepared.table
    features_dir, genres, synthetic = table.dir, table.genres, table.synthetic
    loaded = best_model(prepared, cfg, state)
    model, hparams = loaded.module, loaded.hparams
    test = evaluate(loaded, table)
    best = next(r for r in state["history"] if r["epoch"] == state["best_epoch"])
    check = eval_mode_check(loaded, *prepared.arrays["train"], train_acc=best["train_acc"], seed=cfg.seed)
    if check["warning"]:
        logging.getLogger(__name__).warning(check["warning"])
    metrics = {"test": {k: v for k, v in test.items() if k not in ("genres", "synthetic")},
               "best_epoch": state["best_epoch"], "val_loss": best["val_loss"], "val_acc": best["val_acc"],
               "train_acc": best["train_acc"], "train_eval_acc": check["train_eval_acc"],
               "epochs_run": len(state["history"]), "stopped_early": state["stopped_early"]}
    save_model(out_dir, model, name=cfg.model, hparams=hparams, features=table.params, genres=genres,
               mean=prepared.mean, std=prepared.std, metrics=metrics, synthetic=synthetic,
               extra={"features_dir": storage.redact(str(features_dir)), "run_dir": storage.redact(str(run_dir))},
               output=output)  # redacted: model folders get shared, credentials in a URI must not travel
    config = to_dict(cfg)
    storage.write_text_atomic(storage.join(run_dir, "config.yaml"), yaml.safe_dump(config, sort_keys=False),
                              root=run_dir)
    history = {"features_dir": storage.redact(str(features_dir)), "model_dir": storage.redact(str(out_dir)),
               "synthetic": synthetic,
               "best_epoch": state["best_epoch"], "stopped_early": state["stopped_early"],
               "resumed_from": state["resumed_from"], "history": state["history"], "test": metrics["test"],
               "eval_check": check}
    plot_confusion(test["confusion"], genres, storage.join(run_dir, "confusion.png"),
                   f"{cfg.model.upper()} test segments, accuracy {test['segment_accuracy']:.1%}", synthetic=synthetic,
                   root=run_dir)
    storage.write_json_atomic(storage.join(run_dir, "history.json"), history, root=run_dir)
    return TrainResult(run_dir=run_dir, model_dir=str(out_dir), history=state["history"],
                       best_epoch=state["best_epoch"], stopped_early=state["stopped_early"],
                       resumed_from=list(state["resumed_from"]), test=test, config=config,
                       seconds=round(time.time() - (t0 or time.time()), 2), synthetic=synthetic,
                       eval_check=check, extra={"segments": prepared.counts})


def eval_mode_check(model: LoadedModel, x: np.ndarray, y: np.ndarray, *, train_acc: float, seed: int = 0,
                    sample: int = CHECK_SAMPLE) -> dict[str, Any]:
    """The exported model in eval mode on a seeded sample of the train split, next to its train-mode accuracy.

    ``x`` raw MFCC (N, frames, n_mfcc), ``y`` labels (N,); ``train_acc`` is the best epoch's training-pass
    accuracy (dropout on, BatchNorm on batch statistics). Eval mode has no dropout, so it should match or beat
    that; far below means the exported statistics are wrong (the collapse this check was written for).
    Returns {"train_acc", "train_eval_acc", "gap", "segments", "warning" (str or None)}.
    """
    rows = np.sort(np.random.default_rng([seed, 0xE7A1]).permutation(len(y))[:sample])
    acc = float((model.predict_proba(x[rows]).argmax(1) == y[rows]).mean()) if len(rows) else float("nan")
    gap = train_acc - acc
    warning = None
    if gap > EVAL_GAP_WARN:
        warning = (f"the exported model scores {acc:.1%} in eval mode on the train split but {train_acc:.1%} while "
                   f"training: its BatchNorm statistics or dropout behave differently in eval mode (check "
                   f"bn_recompute/bn_momentum in the train config)")
    return {"train_acc": float(train_acc), "train_eval_acc": acc, "gap": float(gap), "segments": int(len(rows)),
            "warning": warning}


# ----------------------------------------------------------------------------------------------- worker side
def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def _fault_hook(config: dict[str, Any], epoch: int, rank: int, world: int) -> Callable[[int], None] | None:
    """Test hook: in epoch ``fault_kill_epoch``, rank 1 (or the only rank) SIGKILLs itself after one batch, once."""
    marker = config.get("fault_marker")
    if config.get("fault_kill_epoch") != epoch or rank != min(1, world - 1) or not marker or storage.exists(marker):
        return None

    def kill(batch_index: int) -> None:
        if batch_index == 0:
            # Ray Train takes in a report when its controller next polls the workers; a worker dying before
            # that loses the last report. Wait until the previous epoch's checkpoint is committed, so the test
            # checks resuming from it rather than that race.
            ray.train.get_all_reported_checkpoints(
                consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=120)
            storage.write_text_atomic(marker, f"killed rank {rank} (pid {os.getpid()}) in epoch {epoch}\n")
            os.kill(os.getpid(), signal.SIGKILL)

    return kill


def epoch_rows(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """This rank's train rows for one epoch, in step order: int64 (n // world,).

    A contiguous 1/world slice of a fresh permutation of all ``n`` rows, seeded with (seed, epoch): a uniform
    random sample of the split, different every epoch and identical on a resumed run. Every rank gets the
    same count (DDP steps in lock-step); at most world - 1 rows sit out an epoch, other ones each epoch.
    """
    per_rank = n // world
    return np.random.default_rng([seed, epoch]).permutation(n)[rank * per_rank:(rank + 1) * per_rank]


def bn_rows(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """This rank's share of the ``BN_SAMPLE`` train rows BatchNorm statistics are recomputed over this epoch.

    Drawn from a fresh permutation of the WHOLE split: the first BN_SAMPLE rows of the table would be one or
    two genres (featurize writes genre by genre), and statistics of blues alone put the eval-mode cnn 10 points
    below its train-mode accuracy on the built-in set (84 % vs 95 %; the eval-mode check caught it).
    """
    return epoch_rows(n, seed + 1, epoch, rank, world)[: max(1, BN_SAMPLE // world)]


# A split is copied to a GPU whole (once per run) when it takes at most this share of the device's free memory;
# larger ones stream each batch through pinned host memory. FMA-large's train split is ~5.5 GB: resident on an
# 80 GB H100 with room for the model, the activations and other workers' contexts.
RESIDENT_FRACTION = 0.5
_CHUNK_ROWS = 4096  # rows per host-to-device copy while a split goes to the GPU (bounded pinned buffers)


def on_device(x: np.ndarray, y: np.ndarray, device: torch.device) -> tuple[np.ndarray | torch.Tensor, ...]:
    """One split (x: (n, frames, n_mfcc) float32, y: (n,) int64; usually memory maps) as the loop reads it.

    CPU: unchanged (batches are gathered from the maps: the single-process twin and one worker stay exact).
    CUDA: copied to the device once, in ``_CHUNK_ROWS`` chunks through pinned memory (the host never holds a
    second copy), when it fits in ``RESIDENT_FRACTION`` of the free device memory; then every batch is an
    on-device gather and no step waits on the host. Otherwise the maps are kept and ``_batches`` pins each batch.
    """
    if device.type != "cuda":
        return x, y
    free, _total = torch.cuda.mem_get_info(device)
    if x.nbytes + y.nbytes > RESIDENT_FRACTION * free:
        return x, y
    xd = torch.empty(x.shape, dtype=torch.float32, device=device)
    yd = torch.empty(y.shape, dtype=torch.int64, device=device)
    for i in range(0, len(x), _CHUNK_ROWS):
        xd[i:i + _CHUNK_ROWS].copy_(torch.from_numpy(np.ascontiguousarray(x[i:i + _CHUNK_ROWS])).pin_memory(),
                                    non_blocking=True)
        yd[i:i + _CHUNK_ROWS].copy_(torch.from_numpy(np.ascontiguousarray(y[i:i + _CHUNK_ROWS])))
    return xd, yd


def _batches(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor | None, rows: np.ndarray, batch: int,
             device: torch.device, mean: torch.Tensor, std: torch.Tensor
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Standardised (batch, frames, n_mfcc) float32 inputs and int64 labels (None without ``y``) for ``rows``,
    in order. ``x``/``y`` from ``on_device``: tensors on the device (gathered there; the epoch's row order is
    copied once), or host arrays (gathered on the host; pinned before an asynchronous copy to a GPU)."""
    if isinstance(x, torch.Tensor):
        order = torch.from_numpy(np.ascontiguousarray(rows)).to(x.device, non_blocking=True)
        for i in range(0, len(rows), batch):
            r = order[i:i + batch]
            yield (x.index_select(0, r) - mean) / std, (None if y is None else y.index_select(0, r))
        return
    pin = device.type == "cuda"
    for i in range(0, len(rows), batch):
        r = rows[i:i + batch]
        xb, yb = torch.from_numpy(x[r]), None if y is None else torch.from_numpy(y[r])
        if pin:
            xb, yb = xb.pin_memory(), None if yb is None else yb.pin_memory()
        xb = xb.to(device, non_blocking=True)
        yield (xb - mean) / std, None if yb is None else yb.to(device, non_blocking=True)


def run_epoch(model: torch.nn.Module, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, rows: np.ndarray,
              config: dict[str, Any],
              device: torch.device, mean: torch.Tensor, std: torch.Tensor, batch: int,
              optimizer: torch.optim.Optimizer | None = None,
              on_batch: Callable[[int], None] | None = None) -> dict[str, float]:
    """One pass over ``rows`` of (x, y) on this rank: trains when ``optimizer`` is given, else evaluates.

    ``batch`` is this rank's share of the global batch. Returns mean cross-entropy (without the L2 term) and
    accuracy over the rows of ALL ranks (sums all-reduced).
    """
    training = optimizer is not None
    net = model if training else unwrap(model)  # evaluation needs no DDP gradient sync
    net.train(training)
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, correct: on the device, no step waits
    count = 0  # on the host: a device tensor made from it each step would be a synchronising copy
    with torch.set_grad_enabled(training):
        for i, (xb, yb) in enumerate(_batches(x, y, rows, batch, device, mean, std)):
            logits = net(xb)
            loss = F.cross_entropy(logits, yb)
            if training:
                total = loss
                if config["weight_decay"]:
                    total = total + config["weight_decay"] * unwrap(model).l2_penalty()
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
            sums += torch.stack([loss.detach().double() * len(yb), (logits.argmax(1) == yb).sum().double()])
            count += len(yb)
            if on_batch is not None:
                on_batch(i)
    totals = torch.cat([sums, torch.tensor([float(count)], dtype=torch.float64, device=device)])
    loss_sum, correct, count = _all_reduce(totals).tolist()
    return {"loss": loss_sum / max(count, 1.0), "acc": correct / max(count, 1.0), "count": int(count)}


@torch.no_grad()
def recompute_batchnorm(model: torch.nn.Module, x: np.ndarray | torch.Tensor, rows: np.ndarray, device: torch.device,
                        mean: torch.Tensor, std: torch.Tensor, batch: int, world: int = 1) -> bool:
    """Set every BatchNorm's running statistics to the average over ``rows`` of x, then average across ranks.

    A cumulative average (``momentum=None``) of the per-batch statistics in train mode, dropout off; each rank
    passes its own ``rows`` (equal counts), then means and variances are all-reduced and divided by ``world``,
    so every rank holds the same statistics, those of the whole sample. Returns False for models without
    BatchNorm (nothing done).
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return False
    momenta = [m.momentum for m in norms]
    was_training = model.training
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for xb, _ in _batches(x, None, rows, batch, device, mean, std):
        model(xb)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
        if world > 1:
            m.running_mean.copy_(_all_reduce(m.running_mean.clone()) / world)
            m.running_var.copy_(_all_reduce(m.running_var.clone()) / world)
    model.train(was_training)
    return True


def _fresh_state() -> dict[str, Any]:
    return {"epoch": 0, "best_val_acc": -math.inf, "best_val_loss": math.inf, "best_epoch": 0, "best_state": None,
            "bad_epochs": 0, "stopped_early": False, "history": [], "resumed_from": []}


def fit_loop(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
             data: dict[str, tuple[np.ndarray, np.ndarray]], config: dict[str, Any], device: torch.device,
             report: Callable[[dict[str, Any]], None], rank: int = 0, world: int = 1) -> dict[str, Any]:
    """Epochs ``state["epoch"] + 1 .. config["epochs"]``: train, recompute BatchNorm, validate, keep the best.

    The one loop of every trainer: Ray Train workers (``model`` wrapped in DDP, ``world`` ranks) and
    ``train_local`` (one process). ``data``: {"train": (x, y), "val": (x, y)}, raw MFCC and labels.
    ``report(metrics)`` is called after every epoch, once ``state`` holds it (checkpoints read ``state``).
    """
    mean = torch.tensor(config["mean"], dtype=torch.float32, device=device)
    std = torch.tensor(config["std"], dtype=torch.float32, device=device)
    (xtr, ytr), (xva, yva) = on_device(*data["train"], device), on_device(*data["val"], device)
    local_batch = max(1, config["batch_size"] // world)
    val_rows = np.arange(rank, len(yva), world)
    for epoch in range(state["epoch"] + 1, config["epochs"] + 1):
        if state["stopped_early"]:
            break
        t0 = time.time()
        torch.manual_seed(config["seed"] * 1_000_003 + epoch * 1009 + rank)  # dropout: same on resume
        tr = run_epoch(model, xtr, ytr, epoch_rows(len(ytr), config["seed"], epoch, rank, world), config, device,
                       mean, std, local_batch, optimizer=optimizer, on_batch=_fault_hook(config, epoch, rank, world))
        if config["bn_recompute"]:
            sample = bn_rows(len(ytr), config["seed"], epoch, rank, world)
            recompute_batchnorm(unwrap(model), xtr, sample, device, mean, std, 256, world)
        va = run_epoch(model, xva, yva, val_rows, config, device, mean, std, max(local_batch, 256))
        if (va["acc"], -va["loss"]) > (state["best_val_acc"], -state["best_val_loss"]):
            state.update(best_val_acc=va["acc"], best_val_loss=va["loss"], best_epoch=epoch, bad_epochs=0,
                         best_state={k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()})
        else:
            state["bad_epochs"] += 1
        state["stopped_early"] = (epoch >= config["min_epochs"] and state["bad_epochs"] >= config["patience"]
                                  and epoch < config["epochs"])
        row = {"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"], "val_loss": va["loss"],
               "val_acc": va["acc"], "seconds": round(time.time() - t0, 3)}
        state["history"].append(row)
        state["epoch"] = epoch
        report({**row, "best_epoch": state["best_epoch"], "best_val_acc": state["best_val_acc"],
                "best_val_loss": state["best_val_loss"], "stopped_early": state["stopped_early"],
                "resumed_from_epoch": state["resumed_from"][-1] if state["resumed_from"] else 0})
    return state


def new_model(config: dict[str, Any]) -> torch.nn.Module:
    """A fresh model for ``fit_loop``: seeded initial weights, the configured BatchNorm momentum."""
    torch.manual_seed(config["seed"])
    return build_model(config["model"], config["frames"], config["n_mfcc"], config["n_genres"],
                       hidden=config["hidden"], dropout=config["dropout"], bn_momentum=config["bn_momentum"])


def train_local(prepared: Prepared, progress_callback: Callable[[dict[str, Any]], None] | None = None,
                device: str = "cpu") -> dict[str, Any]:
    """The single-process twin of ``train``'s Ray Train run: the same ``fit_loop`` in this process, no Ray.

    ``prepared`` from ``prepare``. Returns the final training state (``history``,
    ``best_epoch``, ``best_state``, ...), which ``finish`` turns into an artifact like a Ray Train run's.
    One Ray Train worker with the same config gives the same numbers (tests hold them to it).
    """
    config = prepared.loop_config
    model = new_model(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    return fit_loop(model, optimizer, _fresh_state(), prepared.arrays, config, torch.device(device),
                    progress_callback or (lambda _m: None))


def _save_and_report(metrics: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     state: dict[str, Any], rank: int) -> None:
    """Every rank reports (it is a barrier); rank 0 attaches the checkpoint."""
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "state": state},
                   Path(d) / STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def _quiet_report_logs() -> None:
    """Keep Ray Train's per-report INFO line ("Reporting training result ...") off the driver's console.

    Ray 2.60 logs it under a logger named after its source file, which ``LoggingConfig``'s ``ray.train``
    filter does not match; the driver prints its own epoch line instead.
    """
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker: build, resume if a checkpoint exists, then ``fit_loop`` with a report per epoch."""
    _quiet_report_logs()
    torch.set_num_threads(config.get("threads") or 1)  # as many as CPUs held (Ray's OMP default is not torch's)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if config["deterministic"]:  # before the model is built: seeds, deterministic kernels, cuDNN benchmark off
        ray.train.torch.enable_reproducibility(seed=config["seed"])
    model = ray.train.torch.prepare_model(new_model(config))  # to device; DDP when world > 1
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])

    state = _fresh_state()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a replaced worker group: continue after the last reported epoch
        saved = read_checkpoint(checkpoint)
        unwrap(model).load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = saved["state"]
        state["resumed_from"].append(state["epoch"])
    data = config["splits"].arrays()  # memory maps of this node's split files (built here if missing)
    fit_loop(model, optimizer, state, data, config, device,
             lambda metrics: _save_and_report(metrics, model, optimizer, state, rank), rank, world)
