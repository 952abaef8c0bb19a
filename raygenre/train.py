"""``raygenre train``: one model trained data-parallel on Ray Train (V2), then exported and tested.

Driver (``train``)
    read the feature table's manifest -> per-coefficient mean/std over every frame of the TRAIN split
    (one streaming Ray Data pass, ``load_stats``) -> ``TorchTrainer`` with datasets {"train", "val"} ->
    best epoch's weights -> test-split evaluation -> model artifact (``out_dir``) + ``config.yaml``,
    ``history.json`` and ``confusion.png`` in the run folder (where Ray Train keeps its checkpoints).

Workers (``train_loop_per_worker``)
    each reads only its own shard of train and of val (``ray.train.get_dataset_shard``; Ray Train splits
    both with ``streaming_split(equal=True)``, so every rank gets the same number of batches and DDP never
    waits on a rank with fewer; at most ``workers - 1`` rows of each split are left out per epoch).
    Per-rank sums of loss/correct/count are all-reduced, so every rank computes the same validation loss
    and takes the same early-stopping decision. DDP on gloo (CPU) or NCCL (GPU), chosen by Ray Train from
    ``ScalingConfig(use_gpu)``. The loss adds the tutorial's L2 term, ``weight_decay * l2_penalty()``.

Fault tolerance
    every epoch rank 0 reports a checkpoint holding the model, the optimiser, the best weights so far, the
    early-stopping counter and the per-epoch history. A replaced worker group (``FailureConfig
    (max_failures)``) resumes from the last committed epoch via ``ray.train.get_checkpoint()``; dropout
    and data order are seeded per epoch, so a resumed run continues with the numbers an uninterrupted one
    gets. (Ray Train commits a report when its controller next polls the workers: a worker that dies
    right after reporting can lose that epoch, which is then run again.)
    ``RAYGENRE_FAULT_KILL_EPOCH=N`` (tests) makes one worker SIGKILL itself once, during epoch N.

Reproducibility
    ``seed`` fixes the initial weights (``torch.manual_seed`` on every worker), dropout (re-seeded per
    epoch and rank), and the data order: a seeded ``randomize_block_order`` (the same permutation every
    epoch) plus a local shuffle buffer seeded with (seed, epoch) so batches differ between epochs.
    Ingest runs with ``preserve_order``. Same seed + same worker count = same metrics on CPU.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from raygenre import storage
from raygenre.artifact import LoadedModel, save_model
from raygenre.config import TrainConfig, to_dict
from raygenre.evaluate import evaluate, plot_confusion, read_split, table_info
from raygenre.models import MODELS, build_model, resolve_hparams

FAULT_ENV = "RAYGENRE_FAULT_KILL_EPOCH"
STATE_FILE = "train_state.pt"
SHUFFLE_BUFFER = 2048  # rows (~14 MB at 130x13) in each worker's local shuffle buffer, reseeded every epoch


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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def resumed_from_epoch(self) -> int | None:
        return self.resumed_from[-1] if self.resumed_from else None


# ----------------------------------------------------------------------------------------------- driver side
def load_stats(train_ds: Any, n_mfcc: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-coefficient mean and std (population) over every frame of ``train_ds``'s ``mfcc``: float32 (n_mfcc,).

    One streaming pass: each batch yields (count, mean, M2), merged on the driver with Chan's parallel formula
    (no catastrophic cancellation, unlike sum of squares).
    """

    def moments(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = np.asarray(batch["mfcc"], dtype=np.float64).reshape(-1, n_mfcc)
        m = x.mean(0)
        return {"count": np.array([x.shape[0]]), "mean": m[None], "m2": ((x - m) ** 2).sum(0)[None]}

    parts = train_ds.select_columns(["mfcc"]).map_batches(moments, batch_format="numpy").take_all()
    count, mean, m2 = 0, np.zeros(n_mfcc), np.zeros(n_mfcc)
    for p in parts:
        n_b, mean_b, m2_b = int(p["count"]), np.asarray(p["mean"]), np.asarray(p["m2"])
        if n_b == 0:
            continue
        delta = mean_b - mean
        total = count + n_b
        mean = mean + delta * n_b / total
        m2 = m2 + m2_b + delta**2 * count * n_b / total
        count = total
    if count == 0:
        raise ValueError("the train split is empty: nothing to compute standardisation statistics from")
    std = np.sqrt(m2 / count)
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def effective_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``hidden``/``weight_decay`` None replaced by the tutorial's values for the model."""
    if cfg.model not in MODELS:
        raise ValueError(f"unknown model {cfg.model!r}: choose one of {', '.join(MODELS)}")
    hidden, wd = resolve_hparams(cfg.model, cfg.hidden, cfg.weight_decay)
    return dataclasses.replace(cfg, hidden=hidden, weight_decay=wd)


def cpus_per_worker(workers: int) -> float:
    """CPUs to reserve per training worker: at most 1, leaving at least one CPU of the cluster for Ray Data.

    On a 2-CPU machine with 2 workers that is 0.5 each: workers that took every CPU would starve the read
    and shuffle tasks that feed them, and training would hang.
    """
    import ray

    total = float(ray.cluster_resources().get("CPU", 1.0))
    spare = max(total - 1.0, total / 2)
    return max(0.01, min(1.0, math.floor(100 * spare / max(workers, 1)) / 100))


def prepare(features_dir: str, cfg: TrainConfig) -> dict[str, Any]:
    """Check the feature table, compute the train-split statistics, build the datasets and the loop config.

    The pieces every trainer on this table needs (``raygenre tune`` reuses them with ``build_trainer`` and
    ``finish``). Returns a dict: ``cfg`` (effective TrainConfig), ``manifest`` (features.json), ``params``
    (FeatureParams), ``datasets`` ({"train": shuffled, "val"}: materialized Ray Datasets of mfcc + label),
    ``loop_config`` (``train_loop_per_worker``'s config, holding the statistics), ``mean``/``std`` (float32
    (n_mfcc,)) and ``counts`` (segments per split).
    """
    cfg = effective_config(cfg)
    manifest, params = table_info(features_dir)
    # Read, filtered and held once in Ray's object store (spilled to disk when it does not fit): every epoch
    # after that streams blocks from memory. Re-reading the Parquet files each epoch cost ~3 s of a ~9 s cnn
    # epoch on 2 cores (bench/train.py).
    train_ds = read_split(features_dir, "train", ["mfcc", "label"]).materialize()
    val_ds = read_split(features_dir, "val", ["mfcc", "label"]).materialize()
    counts = {"train": train_ds.count(), "val": val_ds.count()}
    for split, n in counts.items():
        if n < cfg.workers:
            raise ValueError(f"{features_dir} has {n} {split} segments, fewer than the {cfg.workers} workers; "
                             f"featurize with a {split} split (it needs at least one segment per worker)")
    mean, std = load_stats(train_ds, params.n_mfcc)
    genres = list(manifest["genres"])
    loop_config = {
        "model": cfg.model, "frames": int(manifest["frames"]), "n_mfcc": params.n_mfcc, "n_genres": len(genres),
        "hidden": cfg.hidden, "dropout": cfg.dropout, "weight_decay": cfg.weight_decay, "lr": cfg.lr,
        "batch_size": cfg.batch_size, "epochs": cfg.epochs, "patience": cfg.patience, "seed": cfg.seed,
        "mean": mean.tolist(), "std": std.tolist(), "fault_kill_epoch": None, "fault_marker": None,
    }
    # Block order shuffled with a fixed seed + a seeded local buffer per epoch: deterministic, and no all-to-all
    # random_shuffle, whose shuffle actors cannot get CPUs when concurrent tune trials fill a small cluster.
    datasets = {"train": train_ds.randomize_block_order(seed=cfg.seed), "val": val_ds}
    return {"cfg": cfg, "manifest": manifest, "params": params, "datasets": datasets, "loop_config": loop_config,
            "mean": mean, "std": std, "counts": counts}


def build_trainer(prepared: dict[str, Any], cfg: TrainConfig, storage_path: str, name: str,
                  callbacks: list[Any] | None = None, cpus: float | None = None) -> Any:
    """A ``TorchTrainer`` for ``prepare``'s output; ``callbacks`` are Ray Train ``UserCallback``s (e.g. Tune's).

    ``cpus``: CPUs per worker on CPU runs (default ``cpus_per_worker``); GPU runs take 1 CPU + 1 GPU each.
    """
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"CPU": 1.0, "GPU": 1.0} if cfg.gpu else {"CPU": cpus or cpus_per_worker(cfg.workers)}
    # DataConfig.default_ingest_options() copies the deprecated exclude_resources (a warning per trial in 2.60)
    base = ray.data.DataContext.get_current().execution_options
    ingest = ray.data.ExecutionOptions(resource_limits=base.resource_limits, verbose_progress=base.verbose_progress,
                                       preserve_order=True)  # deterministic block order and shards: reproducible
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=prepared["loop_config"],
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
        datasets=prepared["datasets"],
        dataset_config=DataConfig(execution_options=ingest),  # splits train AND val across the workers
    )


def _progress_callback(fn: Callable[[dict[str, Any]], None]) -> tuple[Any, Callable[[], None]]:
    """A Ray Train callback forwarding rank 0's per-epoch metrics to ``fn`` on this (driver) process.

    Ray Train callbacks run in the controller actor, so the metrics travel through a Ray queue that a
    driver thread drains. Returns (callback, stop); ``stop()`` drains what is left and ends the thread.
    """
    import ray
    from ray.train import UserCallback
    from ray.util.queue import Empty, Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

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
        import ray

        ray.kill(queue.actor)

    return Forward(queue), stop


def _read_state(checkpoint: Any) -> dict[str, Any]:
    with checkpoint.as_directory() as d:
        return torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)


def run_location(model: str, storage_path: str | None = None, name: str | None = None) -> tuple[str, str]:
    """(storage_path, run name) for Ray Train: default ``$RAYGENRE_HOME/runs`` and ``train-<model>-<time>-<id>``.

    Local paths are made absolute (Ray Train requires it); URIs are kept.
    """
    from raygenre.workspace import home

    storage_path = storage_path or str(home() / "runs")
    if not storage.is_uri(storage_path):
        storage_path = str(Path(storage_path).expanduser().resolve())
    return storage_path, name or f"train-{model}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def train(features_dir: str, cfg: TrainConfig, out_dir: str, *, storage_path: str | None = None,
          progress_callback: Callable[[dict[str, Any]], None] | None = None, name: str | None = None) -> TrainResult:
    """Train ``cfg.model`` on a feature table, export the best epoch to ``out_dir``, test it; see the module doc.

    ``storage_path`` (local path or URI shared by all nodes) holds the run folder ``<name>/`` with Ray Train's
    checkpoints (default: ``$RAYGENRE_HOME/runs``). ``progress_callback(metrics)`` is called on this process
    after every epoch with rank 0's metrics.
    """
    from raygenre.runtime import ensure_ray

    t0 = time.time()
    cfg = effective_config(cfg)  # fail fast: unknown model, unfinished or malformed table
    table_info(features_dir)
    ensure_ray()
    prepared = prepare(features_dir, cfg)
    storage_path, run_name = run_location(cfg.model, storage_path, name)
    run_dir = storage.join(storage_path, run_name)
    fault = os.environ.get(FAULT_ENV)
    if fault:
        prepared["loop_config"].update(fault_kill_epoch=int(fault),
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
        raise RuntimeError(f"training finished without a checkpoint (see {run_dir})")
    state = _read_state(result.checkpoint)["state"]
    return finish(features_dir, prepared, cfg, state, out_dir, run_dir, t0)


def finish(features_dir: str, prepared: dict[str, Any], cfg: TrainConfig, state: dict[str, Any], out_dir: str,
           run_dir: str, t0: float | None = None) -> TrainResult:
    """The training ``state`` (from the last checkpoint) -> its best weights -> test evaluation -> artifact in
    ``out_dir``; config.yaml, history.json and confusion.png in ``run_dir``."""
    manifest, params, loop = prepared["manifest"], prepared["params"], prepared["loop_config"]
    genres = list(manifest["genres"])
    synthetic = bool(manifest.get("synthetic", False))
    model = build_model(cfg.model, loop["frames"], params.n_mfcc, len(genres), hidden=cfg.hidden,
                        dropout=cfg.dropout)
    model.load_state_dict(state["best_state"])
    hparams = {k: getattr(cfg, k) for k in ("hidden", "dropout", "weight_decay", "lr", "batch_size", "epochs",
                                             "patience", "workers", "seed")}
    loaded = LoadedModel(module=model.eval(), name=cfg.model, hparams=hparams, features=params, genres=genres,
                         mean=torch.as_tensor(prepared["mean"]), std=torch.as_tensor(prepared["std"]),
                         meta={"frames": loop["frames"]})
    test = evaluate(loaded, features_dir)
    best = next(r for r in state["history"] if r["epoch"] == state["best_epoch"])
    metrics = {"test": {k: v for k, v in test.items() if k not in ("genres", "synthetic")},
               "best_epoch": state["best_epoch"], "val_loss": best["val_loss"], "val_acc": best["val_acc"],
               "epochs_run": len(state["history"]), "stopped_early": state["stopped_early"]}
    save_model(out_dir, model, cfg.model, hparams, {**manifest["features"], "frames": loop["frames"]}, genres,
               prepared["mean"], prepared["std"], metrics, synthetic,
               extra={"features_dir": str(features_dir), "run_dir": str(run_dir)})
    config = to_dict(cfg)
    storage.write_text_atomic(storage.join(run_dir, "config.yaml"), yaml.safe_dump(config, sort_keys=False))
    history = {"features_dir": str(features_dir), "model_dir": str(out_dir), "synthetic": synthetic,
               "best_epoch": state["best_epoch"], "stopped_early": state["stopped_early"],
               "resumed_from": state["resumed_from"], "history": state["history"], "test": metrics["test"]}
    storage.write_json_atomic(storage.join(run_dir, "history.json"), history)
    plot_confusion(test["confusion"], genres, storage.join(run_dir, "confusion.png"),
                   f"{cfg.model.upper()} test segments, accuracy {test['segment_accuracy']:.1%}", synthetic=synthetic)
    return TrainResult(run_dir=run_dir, model_dir=str(out_dir), history=state["history"],
                       best_epoch=state["best_epoch"], stopped_early=state["stopped_early"],
                       resumed_from=list(state["resumed_from"]), test=test, config=config,
                       seconds=round(time.time() - (t0 or time.time()), 2), synthetic=synthetic,
                       extra={"segments": prepared["counts"]})


# ----------------------------------------------------------------------------------------------- worker side
def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DistributedDataParallel (what gets saved and regularised)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

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
            import ray.train

            # Ray Train takes in a report when its controller next polls the workers; a worker dying before
            # that loses the last report. Wait until the previous epoch's checkpoint is committed, so the test
            # checks resuming from it rather than that race.
            ray.train.get_all_reported_checkpoints(
                consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=120)
            storage.write_text_atomic(marker, f"killed rank {rank} (pid {os.getpid()}) in epoch {epoch}\n")
            os.kill(os.getpid(), signal.SIGKILL)

    return kill


def run_epoch(model: torch.nn.Module, shard: Any, config: dict[str, Any], device: torch.device,
              mean: torch.Tensor, std: torch.Tensor, optimizer: torch.optim.Optimizer | None = None,
              shuffle_seed: int | None = None, on_batch: Callable[[int], None] | None = None) -> dict[str, float]:
    """One pass over this worker's shard: trains when ``optimizer`` is given, else evaluates.

    Returns mean cross-entropy (without the L2 term) and accuracy over the shards of ALL workers.
    """
    training = optimizer is not None
    net = model if training else _unwrap(model)  # evaluation needs no DDP gradient sync
    net.train(training)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    extra = ({"local_shuffle_buffer_size": max(SHUFFLE_BUFFER, 4 * config["batch_size"]),
              "local_shuffle_seed": shuffle_seed} if training else {})
    batches = shard.iter_torch_batches(batch_size=config["batch_size"], device=device,
                                       dtypes={"mfcc": torch.float32, "label": torch.long}, **extra)
    with torch.set_grad_enabled(training):
        for i, batch in enumerate(batches):
            x, y = (batch["mfcc"] - mean) / std, batch["label"]
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            if training:
                total = loss
                if config["weight_decay"]:
                    total = total + config["weight_decay"] * _unwrap(model).l2_penalty()
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
            sums += torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double(),
                                 torch.tensor(float(len(y)), dtype=torch.float64, device=device)])
            if on_batch is not None:
                on_batch(i)
    loss_sum, correct, count = _all_reduce(sums).tolist()
    return {"loss": loss_sum / max(count, 1.0), "acc": correct / max(count, 1.0), "count": int(count)}


def _fresh_state() -> dict[str, Any]:
    return {"epoch": 0, "best_val_loss": math.inf, "best_epoch": 0, "best_state": None, "bad_epochs": 0,
            "stopped_early": False, "history": [], "resumed_from": []}


def _save_and_report(metrics: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     state: dict[str, Any], rank: int) -> None:
    """Every rank reports (it is a barrier); rank 0 attaches the checkpoint."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save({"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "state": state},
                   Path(d) / STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def _quiet_report_logs() -> None:
    """Keep Ray Train's per-report INFO line ("Reporting training result ...") off the driver's console.

    Ray 2.60 logs it under a logger named after its source file, which ``LoggingConfig``'s ``ray.train``
    filter does not match; the driver prints its own epoch line instead.
    """
    import logging

    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker: build, resume if a checkpoint exists, then train/validate/report each epoch."""
    import ray.train
    import ray.train.torch

    _quiet_report_logs()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(config["seed"])
    model = build_model(config["model"], config["frames"], config["n_mfcc"], config["n_genres"],
                        hidden=config["hidden"], dropout=config["dropout"])
    model = ray.train.torch.prepare_model(model)  # to device; DDP when world > 1
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])

    state = _fresh_state()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a replaced worker group: continue after the last reported epoch
        saved = _read_state(checkpoint)
        _unwrap(model).load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = saved["state"]
        state["resumed_from"].append(state["epoch"])

    mean = torch.tensor(config["mean"], dtype=torch.float32, device=device)
    std = torch.tensor(config["std"], dtype=torch.float32, device=device)
    train_shard, val_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    for epoch in range(state["epoch"] + 1, config["epochs"] + 1):
        if state["stopped_early"]:
            break
        t0 = time.time()
        torch.manual_seed(config["seed"] * 1_000_003 + epoch * 1009 + rank)  # dropout: same on resume
        tr = run_epoch(model, train_shard, config, device, mean, std, optimizer=optimizer,
                       shuffle_seed=config["seed"] * 1009 + epoch,
                       on_batch=_fault_hook(config, epoch, rank, world))
        va = run_epoch(model, val_shard, config, device, mean, std)
        if va["loss"] < state["best_val_loss"]:
            state.update(best_val_loss=va["loss"], best_epoch=epoch, bad_epochs=0,
                         best_state={k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()})
        else:
            state["bad_epochs"] += 1
        state["stopped_early"] = state["bad_epochs"] >= config["patience"] and epoch < config["epochs"]
        row = {"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"], "val_loss": va["loss"],
               "val_acc": va["acc"], "seconds": round(time.time() - t0, 3)}
        state["history"].append(row)
        state["epoch"] = epoch
        _save_and_report({**row, "best_epoch": state["best_epoch"], "best_val_loss": state["best_val_loss"],
                          "stopped_early": state["stopped_early"],
                          "resumed_from_epoch": state["resumed_from"][-1] if state["resumed_from"] else 0},
                         model, optimizer, state, rank)
