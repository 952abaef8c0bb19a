"""What each command does, as library functions: the CLI parses flags, calls one of these, prints the result.

Tests call the same functions. Each one checks its outputs before any work, connects to Ray, falls back to the
built-in SYNTHETIC data when given none (and says so through ``say``), runs, and returns a result object;
printing is ``raygenre.report``'s job. The top floor: it may import every other module; only the CLI imports it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from raygenre import storage, workspace
from raygenre.config import FeaturizeConfig, LabelConfig, TrainConfig, TuneConfig, load_config
from raygenre.data.builtin import ensure_dataset, ensure_features
from raygenre.data.featurize import FeaturizeResult, featurize
from raygenre.data.synth.library import make_library
from raygenre.label.pipeline import label_library
from raygenre.model.artifact import files_dir, load_model, set_default_model
from raygenre.runtime import ensure_ray
from raygenre.training.evaluate import evaluate, plot_confusion
from raygenre.training.train import TrainResult, resolve_workers, train
from raygenre.training.tune import TUNE_DONE, TuneResult, check_tune_out, tune_models, tune_run_dir

Say = Callable[[str], None]


def features_or_builtin(features: str | None, address: str | None, say: Say = print) -> str:
    """``features``, or the built-in synthetic feature table (featurized on first use)."""
    return features or ensure_features(address, say)


def featurize_dataset(dataset: str | None, out: str, cfg: FeaturizeConfig, *, address: str | None = None,
                      overwrite: bool = False, say: Say = print) -> FeaturizeResult:
    """`raygenre featurize`: ``dataset`` (default: the built-in synthetic one) -> the feature table ``out``."""
    if dataset is None:
        dataset = ensure_dataset(say)
    return featurize(dataset, out, cfg, address=address, overwrite=overwrite)


def train_model(features: str | None, cfg: TrainConfig, out: str | None, *, overwrite: bool = False,
                storage_path: str | None = None, set_default: bool = True, address: str | None = None,
                say: Say = print, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """`raygenre train`: train ``cfg.model`` on ``features`` (default: built-in), export it to ``out``.

    ``out`` defaults to ``$RAYGENRE_HOME/models/<model>``, which is always replaced; another ``out`` holding a
    model needs ``overwrite``. ``storage_path`` (Ray Train's run folder) defaults to ``OUT/../runs`` when ``out``
    is a URI. ``set_default`` also makes the model `raygenre label`'s default (``result.default_model_dir``).
    ``on_epoch(metrics)`` is called after every epoch.
    """
    replace = overwrite or out is None  # the workspace's own model folder is always replaced
    out = out or str(workspace.home() / "models" / cfg.model)
    storage.check_output(out, "model", overwrite=replace)  # before any work; train() claims it
    if set_default:
        storage.check_output(str(workspace.default_model_dir()), "model", overwrite=True)
    ensure_ray(address)
    cfg = resolve_workers(cfg)
    feats = features_or_builtin(features, address, say)
    say(f"training {cfg.model} on {storage.redact(feats)} with {cfg.workers} Ray Train worker"
        f"{'s' if cfg.workers != 1 else ''} ...")
    if storage_path is None and storage.is_uri(out):
        storage_path = storage.join(out.rstrip("/").rsplit("/", 1)[0], "runs")
    result = train(feats, cfg, out, storage_path=storage_path, progress_callback=on_epoch, overwrite=replace)
    if set_default:
        result.default_model_dir = set_default_model(out)
    return result


@dataclass
class Evaluation:
    """What `raygenre evaluate` produced."""

    result: dict[str, Any]  # evaluate()'s metrics (with "confusion", "synthetic")
    features_dir: str
    metrics_path: str  # metrics.json, in the attempt folder that the model's model.json names
    confusion_path: str  # confusion.png, beside it


def evaluate_model(model_dir: str, features: str | None = None, split: str = "test", *,
                   address: str | None = None, say: Say = print) -> Evaluation:
    """`raygenre evaluate`: score the model on ``split`` of ``features`` (default: the table it was trained on if
    it still exists, else the built-in one); write metrics.json and confusion.png beside the model's weights."""
    loaded = load_model(model_dir)
    where = files_dir(model_dir, loaded.meta)
    metrics_path = storage.join(where, "metrics.json")
    png = storage.join(where, "confusion.png")
    for path in (metrics_path, png):  # before any work: a planted link (-> ~/.bashrc) or a folder that leads
        storage.check_inside(path, model_dir)  # out of the model folder refuses the run; the writers check again
        storage.refuse_link(path)
    ensure_ray(address)
    feats = features or loaded.meta.get("features_dir")
    if not feats or not storage.exists(storage.join(str(feats), "features.json")):
        feats = features_or_builtin(None, address, say)
    result = evaluate(loaded, feats, split=split)
    metrics = {k: v for k, v in result.items() if k != "confusion"}
    metrics["confusion"] = [list(map(int, row)) for row in result["confusion"]]
    metrics["features_dir"] = storage.redact(str(feats))  # a model folder is shared: no credentials in it
    storage.write_json_atomic(metrics_path, metrics, root=model_dir)  # never through a link (-> ~/.bashrc)
    plot_confusion(result["confusion"], loaded.genres, png,
                   f"{loaded.name.upper()} {split} segments, accuracy {result['segment_accuracy']:.1%}",
                   synthetic=result["synthetic"], root=model_dir)
    return Evaluation(result=result, features_dir=str(feats), metrics_path=metrics_path, confusion_path=png)


def tune_search(features: str | None, cfg: TuneConfig, out: str | None = None, *, resume: bool = False,
                overwrite: bool = False, set_default: bool = True, address: str | None = None,
                say: Say = print) -> TuneResult:
    """`raygenre tune`: ``tune_models`` in ``out`` (default: a new workspace run, or with ``resume`` the latest),
    after checking ``out`` and holding its lease (a second search on the same ``out`` is refused)."""
    out = out or tune_run_dir(resume)
    check_tune_out(out, resume=resume, overwrite=overwrite)  # before any work
    if set_default:
        storage.check_output(str(workspace.default_model_dir()), "model", overwrite=True)
    ensure_ray(address)
    feats = features_or_builtin(features, address, say)
    say(f"tuning {', '.join(cfg.models)}: {cfg.num_samples} trials each, up to {cfg.max_epochs} epochs, "
        f"ASHA; results in {storage.redact(out)}")
    lease = storage.Lease.acquire(out, "tune")  # a second `raygenre tune --out` on it is refused
    try:
        if overwrite:
            done = storage.join(out, TUNE_DONE)
            storage.check_inside(done, out)  # remove() unlinks a link itself; a symlinked parent is refused
            storage.remove(done)  # un-finish it first: it is being redone
        return tune_models(feats, cfg, out, resume=resume, address=address, set_default=set_default)
    finally:
        lease.release()


def agreement(labels_path: str, library: os.PathLike[str] | str, truth: dict[str, str]) -> tuple[float, int] | None:
    """Share of files whose best guess (``top_genre``: before ``min_confidence`` turns it into "unknown") equals
    the generator's genre (``truth``: path relative to ``library`` -> genre), over the files labelled without
    error: (accuracy, files), or None when none could be scored."""
    rows = pq.read_table(labels_path).to_pylist()
    rel = {r["path"]: os.path.relpath(r["path"], library) if os.path.isabs(r["path"]) else r["path"] for r in rows}
    scored = [(truth[rel[r["path"]]], r["top_genre"]) for r in rows if r["error"] is None and rel[r["path"]] in truth]
    if not scored:
        return None
    return sum(a == b for a, b in scored) / len(scored), len(scored)


def demo(library_files: int = 40, address: str | None = None, say: Say = print) -> Iterator[tuple[str, Any]]:
    """`raygenre demo`, the whole pipeline on the built-in SYNTHETIC data, as ``(step, value)`` pairs to show:
    ``rule`` (a heading), ``featurized`` ((FeaturizeResult, folder)), ``tuned`` (TuneResult), ``library``
    ((folder, LibraryResult)), ``labelled`` (LabelResult), ``agreement`` ((accuracy, files)), ``done`` (the
    default model's folder)."""
    ensure_ray(address)
    yield "rule", "1/3 featurize the built-in synthetic dataset"
    dataset = ensure_dataset(say)
    feats = str(workspace.builtin_features_dir())
    yield "featurized", (featurize(dataset, feats, load_config(FeaturizeConfig), address=address), feats)

    yield "rule", "2/3 raygenre tune (small budget)"
    out = str(workspace.new_run_dir("tune"))
    yield "tuned", tune_models(feats, load_config(TuneConfig), out, address=address, verbose=0)

    yield "rule", "3/3 raygenre label a synthetic music library"
    lib = workspace.home() / "demo-library"
    made = make_library(lib, library_files, seed=1, min_seconds=30.0, max_seconds=150.0)
    yield "library", (lib, made)
    labels = label_library(str(lib), str(workspace.home() / "demo-labels.parquet"), load_config(LabelConfig),
                           address=address, resume=False)
    yield "labelled", labels
    score = agreement(labels.out, lib, made.genres)
    if score is not None:
        yield "agreement", score
    yield "done", workspace.default_model_dir()
