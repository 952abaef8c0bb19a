"""The ``raygenre`` command line: a thin layer over the library functions (which the tests call too).

Every command connects to a Ray cluster when ``--address``/``RAY_ADDRESS`` is set, else runs Ray locally.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from raygenre import __version__

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="raygenre",
    help="Music genre classification at scale on Ray: synthesize or featurize a GTZAN-layout dataset, "
    "train and tune the tutorial's ANN/CNN/LSTM on Ray Train/Tune, and label whole audio libraries.\n\n"
    "Quick start:  raygenre tune   then   raygenre label /path/to/music",
    no_args_is_help=True,
    rich_markup_mode="rich",
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Off a terminal (CI, `ray job logs`, a pipe) rich would wrap at 80 columns; tables read better wider.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ADDRESS_HELP = "Ray cluster to use (e.g. auto, ray://head:10001). Default: $RAY_ADDRESS, else a local Ray."
CONFIG_HELP = "YAML file overriding the packaged defaults (raygenre/configs/; flags override both)."


def friendly_errors(fn: F) -> F:
    """Print known, user-fixable errors as one clear line (exit 2) instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from raygenre.config import ConfigError
        from raygenre.data.gtzan import DatasetError
        from raygenre.data.table import FeatureMismatchError

        # FileExistsError covers storage.OutputExistsError: an --out that is foreign, finished or being written.
        known: tuple[type[BaseException], ...] = (ConfigError, DatasetError, FeatureMismatchError, FileExistsError,
                                                  FileNotFoundError, NotADirectoryError, ValueError)
        try:
            from raygenre.model.artifact import ArtifactError

            known = (*known, ArtifactError)
        except ImportError:  # pragma: no cover
            pass
        try:
            return fn(*args, **kwargs)
        except known as exc:
            err.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        console.print(f"raygenre {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """raygenre: genre classification at scale on Ray."""


# --------------------------------------------------------------------------------------------------- synth
@app.command()
@friendly_errors
def synth(
    out_dir: Path = typer.Argument(..., help="Folder to write the dataset into (GTZAN layout)."),
    tracks_per_genre: int | None = typer.Option(None, help="Tracks per genre (default: 100)."),
    seconds: float | None = typer.Option(None, help="Length of each track in seconds (default: 30)."),
    seed: int | None = typer.Option(None, help="Random seed; the same seed gives byte-identical files (default: 0)."),
    faults: bool | None = typer.Option(None, "--faults/--no-faults",
                                       help="Add GTZAN's real faults: a corrupt jazz.00054.wav, a truncated "
                                       "file, lengths that vary around --seconds (default: off)."),
    difficulty: str | None = typer.Option(None, help="hard: genres overlap like real ones (each track borrows "
                                          "rhythm, instruments, harmony or mix from other genres, louder noise), so "
                                          "a correct model lands well below 100 %; easy: each genre keeps its own "
                                          "recipe (default: hard)."),
    config: Path | None = typer.Option(None, help=CONFIG_HELP),
) -> None:
    """Write the built-in SYNTHETIC dataset: OUT_DIR/genres_original/<genre>/<genre>.000NN.wav.

    Ten GTZAN genres, 22050 Hz mono 16-bit WAV, procedurally generated (drums, harmony, timbre and tempo drawn
    per track from overlapping per-genre ranges). It is NOT real music: use it to try the pipeline, and
    the real GTZAN (or your own `<genre>/<file>` tree) for results that mean something.
    """
    from raygenre.config import SynthConfig, load_config
    from raygenre.data.synth import synthesize

    cfg = load_config(SynthConfig, config, {"tracks_per_genre": tracks_per_genre, "seconds": seconds,
                                        "seed": seed, "faults": faults, "difficulty": difficulty})
    result = synthesize(out_dir, cfg)
    console.print(f"Wrote {result.tracks} synthetic {cfg.difficulty} tracks (seed {cfg.seed}) to "
                  f"{out_dir}/genres_original in {result.seconds:.1f} s. [dim](synthetic: not real music)[/]")


# ----------------------------------------------------------------------------------------------- featurize
def print_feature_summary(manifest: dict[str, Any], out: str) -> None:
    """The end-of-run table: tracks and segments per genre and split, then rejects."""
    counts = manifest["counts"]
    label = " (SYNTHETIC data)" if manifest.get("synthetic") else ""
    table = Table(title=f"Feature table {out}{label}")
    table.add_column("genre")
    splits = ["train", "val", "test"]
    for s in splits:
        table.add_column(f"{s} tracks", justify="right")
    table.add_column("segments", justify="right")
    for g in manifest["genres"]:
        segs = sum(counts["segments"].get(s, {}).get(g, 0) for s in splits)
        table.add_row(g, *[str(counts["tracks"].get(s, {}).get(g, 0)) for s in splits], str(segs))
    table.add_row("[bold]total", *[str(sum(counts["tracks"].get(s, {}).values())) for s in splits],
                  f"[bold]{counts['segments_total']}")
    console.print(table)
    f = manifest["features"]
    console.print(f"{counts['tracks_total']} tracks -> {counts['segments_total']} segments of "
                  f"{f['segment_seconds']:g} s ({manifest['frames']} x {f['n_mfcc']} MFCC); "
                  f"{counts['dropped_segments']} short segments dropped; "
                  f"{counts['excluded_tracks']} tracks in no split list; {counts['rejected_tracks']} rejected.")
    for r in manifest["rejects"]:
        console.print(f"  [yellow]rejected[/] {r['track_id']}: {r['reason']}")


@app.command()
@friendly_errors
def featurize(
    dataset: str | None = typer.Argument(None, help="Dataset root: holds genres_original/<genre>/*.wav, "
                                         "genres/<genre>/*.au, or <genre>/<files>. Default: the built-in "
                                         "synthetic dataset."),
    out: str = typer.Option(..., "--out", "-o", help="Output folder (local path or s3://, gs://, file:// URI)."),
    segments: int | None = typer.Option(None, help="Segments cut from each track, back to back (default: 10)."),
    segment_seconds: float | None = typer.Option(None, help="Segment length in seconds (default: 3)."),
    split: str | None = typer.Option(None, help="stratified (seeded, per genre) or lists (default: stratified)."),
    split_lists: str | None = typer.Option(None, help="Folder with train_filtered.txt, valid_filtered.txt, "
                                           "test_filtered.txt (GTZAN fault-filtered split); implies --split lists."),
    seed: int | None = typer.Option(None, help="Seed of the stratified split (default: 0)."),
    overwrite: bool = typer.Option(False, help="Replace the feature table OUT already holds (without it, a table "
                                   "with the same parameters is kept and one with others is refused). Never "
                                   "replaces anything but a raygenre feature table."),
    address: str | None = typer.Option(None, help=ADDRESS_HELP),
    config: Path | None = typer.Option(None, help=CONFIG_HELP),
) -> None:
    """Decode, segment and MFCC a dataset with Ray Data; write a Parquet table + features.json.

    Splits are assigned per TRACK (never per segment), so no song is in two splits. Corrupt, empty,
    truncated, too-short or non-audio files are listed as rejects with their reason and the run goes on; the
    exit status is non-zero only when nothing usable was found. The table appears at OUT only when complete.
    """
    from raygenre.config import FeaturizeConfig, load_config
    from raygenre.data.builtin import ensure_dataset
    from raygenre.data.featurize import featurize as run

    method = "lists" if split_lists else split
    cfg = load_config(FeaturizeConfig, config, {
        "segments": segments,
        "features": {"segment_seconds": segment_seconds},
        "split": {"method": method, "lists_dir": split_lists, "seed": seed},
    })
    if dataset is None:
        dataset = ensure_dataset(console.print)
    result = run(dataset, out, cfg, address=address, overwrite=overwrite)
    if result.skipped:
        console.print(f"{out} already holds a finished table with these parameters (use --overwrite to redo).")
    print_feature_summary(result.manifest, out)


# ---------------------------------------------------------------------------------------------------- label
def print_label_summary(result: Any) -> None:
    """The end-of-run summary of `raygenre label`: counts, speed, top genres, a few errors."""
    from raygenre.workspace import SYNTHETIC_NOTICE

    rate = result.new / result.seconds if result.seconds else 0.0
    console.print(f"Labelled {result.new} files this run ({result.audio_hours:.2f} h of audio, {rate:.1f} files/s, "
                  f"{result.audio_hours * 3600 / max(result.seconds, 1e-9):.0f}x real time); "
                  f"{result.resumed} were already labelled. {result.files} rows, {result.errors} with errors, "
                  f"written to {result.out} ({result.format}). Model: {result.model}.")
    if result.set_aside:
        console.print(f"[bold yellow]warning:[/] {len(result.set_aside)} unreadable result part(s) from an earlier run "
                      f"were moved to {result.out}.parts/broken/ and their files labelled again: "
                      f"{', '.join(result.set_aside)}")
    labelled = sum(n for _, n in result.genres)
    if result.genres:
        table = Table(title="Top genres")
        for col in ("genre", "files", "share"):
            table.add_column(col, justify="left" if col == "genre" else "right")
        for genre, n in result.genres[:5]:
            table.add_row(genre, str(n), f"{100 * n / labelled:.1f}%")
        console.print(table)
    if result.errors:
        console.print(f"[yellow]{result.errors} files could not be labelled[/] (column `error`), e.g.:")
        for path, reason in result.error_examples:
            console.print(f"  {path}: {reason}")
    if result.synthetic:
        console.print(f"[bold yellow]note:[/] this model was trained on SYNTHETIC data ({SYNTHETIC_NOTICE}).")


@app.command()
@friendly_errors
def label(
    library: str = typer.Argument(..., help="Folder of audio files, scanned recursively (hidden folders skipped)."),
    model: str | None = typer.Option(None, "--model", help="Model folder. Default: the workspace's best model "
                                     "(written by `raygenre tune` or `raygenre train`)."),
    out: str | None = typer.Option(None, "--out", "-o", help="Output file (local path or URI). Default: "
                                   "labels.parquet / labels.csv / labels.jsonl in the current folder, by --format."),
    fmt: str | None = typer.Option(None, "--format", help="parquet | csv | jsonl. Default: from --out's "
                                   "extension, else parquet."),
    segments_per_track: int | None = typer.Option(None, help="3 s segments spread evenly across each file; "
                                                  "the label averages their probabilities (default: 10)."),
    batch_size: int | None = typer.Option(None, help="Files per model batch (default: 64)."),
    gpu: bool | None = typer.Option(None, "--gpu/--cpu", help="Run the model on GPUs, one actor per GPU "
                                    "(default: CPU)."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip files already in OUT.parts/ "
                                "(same path, size and mtime) and append the rest; --no-resume labels everything."),
    address: str | None = typer.Option(None, help=ADDRESS_HELP),
    config: Path | None = typer.Option(None, help=CONFIG_HELP),
) -> None:
    """Label every audio file under LIBRARY with a genre: one row per file, streamed through Ray Data.

    Each file gives --segments-per-track windows spread across it (only those are decoded where the format
    can seek, so hour-long mixes are cheap); the model runs in a pool of Ray actors. Rows: path, genre,
    confidence, p_<genre> for every genre, duration_s, segments_used, error, model, size, mtime.

    Results are saved in parts (OUT.parts/, each written atomically) as they complete, so an interrupted run
    loses nothing: run the same command again to finish it. OUT is written at the end, atomically.
    Bad files (corrupt, empty, unreadable, too short, not audio) get a row whose `error` says why.

    Exit status: 0 all files labelled, 1 some files had errors (the run finished), 2 usage error (e.g. no model).
    """
    import dataclasses

    from raygenre.config import LabelConfig, load_config
    from raygenre.label import default_out, format_of, label_library

    cfg = load_config(LabelConfig, config, {"format": fmt, "segments_per_track": segments_per_track,
                                        "batch_size": batch_size, "gpu": gpu})
    if fmt is None and out is not None and format_of(out):
        cfg = dataclasses.replace(cfg, format=format_of(out))
    result = label_library(library, out or default_out(cfg.format), cfg, model_dir=model, address=address,
                           resume=resume, progress=True)
    print_label_summary(result)
    if result.errors:
        raise typer.Exit(1)


# --------------------------------------------------------------------------------------------------- train
def _features_or_builtin(features: str | None, address: str | None) -> str:
    from raygenre.data.builtin import ensure_features

    return features or ensure_features(address, console.print)


def _synthetic_tag(synthetic: bool) -> str:
    return " [bold yellow](SYNTHETIC data: not real music)[/]" if synthetic else ""


def print_eval_check(check: dict[str, Any]) -> None:
    """Eval mode vs train mode on the train split: the line that would have caught a broken BatchNorm."""
    if not check:
        return
    console.print(f"train split: {check['train_acc']:.1%} while training, {check['train_eval_acc']:.1%} in eval mode "
                  f"(exported model, {check['segments']} segments)")
    if check.get("warning"):
        console.print(f"[bold red]warning:[/] {check['warning']}")


def print_test_metrics(test: dict[str, Any], synthetic: bool) -> None:
    console.print(f"test: segment accuracy {test['segment_accuracy']:.1%}, track accuracy "
                  f"{test['track_accuracy']:.1%}, macro F1 {test['macro_f1']:.3f} "
                  f"({test.get('segments', '?')} segments, {test.get('tracks', '?')} tracks)"
                  + _synthetic_tag(synthetic))


@app.command()
@friendly_errors
def train(
    model: str | None = typer.Option(None, "--model", "-m", help="ann | cnn | lstm (default: cnn)."),
    features: str | None = typer.Option(None, help="Feature table from `raygenre featurize` (local path or URI). "
                                        "Default: the built-in synthetic dataset, featurized on first use."),
    epochs: int | None = typer.Option(None, help="Maximum epochs (default: 30; early stopping may end sooner)."),
    workers: int | None = typer.Option(None, help="Ray Train workers, data-parallel (default: 2)."),
    gpu: bool | None = typer.Option(None, "--gpu/--cpu", help="One GPU per worker (NCCL) or CPU (gloo)."),
    lr: float | None = typer.Option(None, help="Adam learning rate (default: 1e-3; the tutorial's is 1e-4)."),
    batch_size: int | None = typer.Option(None, help="Global batch: segments per optimizer step, split evenly "
                                          "across the workers, so any worker count trains alike (default: 32)."),
    dropout: float | None = typer.Option(None, help="Dropout (default: 0.3)."),
    weight_decay: float | None = typer.Option(None, help="L2 on dense weights (default: the tutorial's, "
                                              "1e-3 for ann, 0 for cnn/lstm)."),
    hidden: int | None = typer.Option(None, help="Width: ann first dense layer, cnn dense, lstm size "
                                      "(default: the tutorial's)."),
    min_epochs: int | None = typer.Option(None, help="Early stopping never ends a run before this epoch "
                                          "(default: 10)."),
    patience: int | None = typer.Option(None, help="Then stop after this many epochs without a new best "
                                        "validation accuracy (default: 10)."),
    seed: int | None = typer.Option(None, help="Seed for data order and initialisation (default: 0)."),
    out: str | None = typer.Option(None, help="Model artifact folder, local or URI (default: "
                                   "$RAYGENRE_HOME/models/<model>, replaced on every run)."),
    overwrite: bool = typer.Option(False, help="Replace the model --out already holds (never anything else)."),
    storage_path: str | None = typer.Option(None, "--storage", help="Where Ray Train keeps the run folder "
                                            "(checkpoints): on a multi-node cluster, a URI or shared mount every "
                                            "node sees. Default: OUT/../runs when --out is a URI, else "
                                            "$RAYGENRE_HOME/runs."),
    set_default: bool = typer.Option(True, help="Also make this model the default for `raygenre label`."),
    address: str | None = typer.Option(None, help=ADDRESS_HELP),
    config: Path | None = typer.Option(None, help=CONFIG_HELP),
) -> None:
    """Train one of the tutorial's models data-parallel on Ray Train, then test it.

    Prints a table per epoch (train/val loss and accuracy), then test-split metrics: segment accuracy, track
    accuracy (argmax of a track's mean segment probabilities) and macro F1. Writes the model artifact
    (model.safetensors + model.json) and, in the run folder, config.yaml, history.json and confusion.png.
    A worker that dies is replaced and training resumes from the last epoch's checkpoint.
    """
    from raygenre import workspace
    from raygenre.config import TrainConfig, load_config
    from raygenre.runtime import ensure_ray
    from raygenre.training.train import train as run

    cfg = load_config(TrainConfig, config, {"model": model, "epochs": epochs, "workers": workers, "gpu": gpu, "lr": lr,
                                        "batch_size": batch_size, "dropout": dropout, "weight_decay": weight_decay,
                                        "hidden": hidden, "min_epochs": min_epochs, "patience": patience,
                                        "seed": seed})
    from raygenre import storage

    replace = overwrite or out is None  # the workspace's own model folder is always replaced
    out = out or str(workspace.home() / "models" / cfg.model)
    storage.check_output(out, "model", overwrite=replace)  # before any work; train() claims it
    if set_default:
        storage.check_output(str(workspace.default_model_dir()), "model", overwrite=True)
    ensure_ray(address)
    feats = _features_or_builtin(features, address)
    table = Table(title=f"raygenre train --model {cfg.model} ({cfg.workers} workers, {'GPU' if cfg.gpu else 'CPU'})")
    for col in ("epoch", "train loss", "train acc", "val loss", "val acc", "s"):
        table.add_column(col, justify="right")
    console.print(f"training {cfg.model} on {feats} with {cfg.workers} Ray Train workers ...")

    def on_epoch(m: dict[str, Any]) -> None:
        console.print(f"  epoch {m['epoch']:>3}  train loss {m['train_loss']:.4f} acc {m['train_acc']:.3f}  "
                      f"val loss {m['val_loss']:.4f} acc {m['val_acc']:.3f}  ({m['seconds']:.1f} s)"
                      + ("  [dim](resumed after a worker failure)[/]" if m.get("resumed_from_epoch") else ""))

    if storage_path is None and storage.is_uri(out):
        storage_path = storage.join(out.rstrip("/").rsplit("/", 1)[0], "runs")
    result = run(feats, cfg, out, storage_path=storage_path, progress_callback=on_epoch, overwrite=replace)
    for r in result.history:
        table.add_row(str(r["epoch"]), f"{r['train_loss']:.4f}", f"{r['train_acc']:.3f}", f"{r['val_loss']:.4f}",
                      f"{r['val_acc']:.3f}", f"{r['seconds']:.1f}")
    console.print(table)
    stop = " (early stop)" if result.stopped_early else ""
    console.print(f"best epoch {result.best_epoch}{stop}; {len(result.history)} epochs in {result.seconds:.0f} s")
    print_eval_check(result.eval_check)
    print_test_metrics(result.test, result.synthetic)
    if set_default:
        from raygenre.model.artifact import copy_model

        copy_model(out, str(workspace.default_model_dir()), overwrite=True)
    console.print(f"model: {out}   run folder: {result.run_dir}"
                  + (f"\ndefault model for `raygenre label`: {workspace.default_model_dir()}" if set_default else ""))


@app.command()
@friendly_errors
def evaluate(
    model_dir: str = typer.Argument(..., help="Model artifact folder (from train or tune)."),
    features: str | None = typer.Option(None, help="Feature table (default: the one the model was trained on, "
                                        "if it still exists, else the built-in synthetic one)."),
    split: str = typer.Option("test", help="Split to score: train, val or test."),
    address: str | None = typer.Option(None, help=ADDRESS_HELP),
) -> None:
    """Recompute a model's metrics on a split; write metrics.json and confusion.png beside the model's weights.

    They go in the attempt folder that MODEL_DIR/model.json names, so they are replaced with the model.

    The confusion matrix has true genres as rows and predicted genres as columns, both named.
    """
    from raygenre import load_model, storage
    from raygenre.model.artifact import files_dir
    from raygenre.runtime import ensure_ray
    from raygenre.training.evaluate import evaluate as run
    from raygenre.training.evaluate import plot_confusion

    ensure_ray(address)
    loaded = load_model(model_dir)
    feats = features or loaded.meta.get("features_dir")
    if not feats or not storage.exists(storage.join(str(feats), "features.json")):
        feats = _features_or_builtin(None, address)
    result = run(loaded, feats, split=split)
    metrics = {k: v for k, v in result.items() if k != "confusion"}
    metrics["confusion"] = [list(map(int, row)) for row in result["confusion"]]
    metrics["features_dir"] = str(feats)
    where = files_dir(model_dir, loaded.meta)
    storage.write_json_atomic(storage.join(where, "metrics.json"), metrics)
    png = storage.join(where, "confusion.png")
    plot_confusion(result["confusion"], loaded.genres, png,
                   f"{loaded.name.upper()} {split} segments, accuracy {result['segment_accuracy']:.1%}",
                   synthetic=result["synthetic"])
    print_test_metrics(result, result["synthetic"])
    console.print(f"wrote {storage.join(where, 'metrics.json')} and {png}")


# ---------------------------------------------------------------------------------------------------- tune
TUNE_DONE = "tune.json"  # written last by tune_models: the search is finished
TUNE_NAMES = {"tune", "train", "models", "trials.csv", "trials.parquet", TUNE_DONE}


def check_tune_out(out: str, *, resume: bool, overwrite: bool) -> None:
    """Refuse a tune --out that is a file, holds something other than a raygenre tune run, or holds a finished
    search (unless ``resume`` or ``overwrite``). Raises ``storage.OutputExistsError``."""
    from raygenre import storage

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

def print_trials(trials: Any, synthetic: bool) -> None:
    """The end-of-search table: one row per trial."""
    from rich import box

    table = Table(title="raygenre tune: trials" + (" (SYNTHETIC data)" if synthetic else ""),
                  box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    for col in ("model", "trial", "lr", "batch", "dropout", "wd", "width", "epochs", "best val loss",
                "best val acc", "stopped"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for r in trials.to_dict("records"):
        ok = r.get("best_val_loss") == r.get("best_val_loss") and r.get("best_val_loss") is not None
        table.add_row(r["model"], str(r["trial_id"])[-5:], f"{r['lr']:.1e}", str(r["batch_size"]),
                      f"{r['dropout']:.2f}", f"{r['weight_decay']:.1e}", str(r["hidden"]), str(r["epochs"]),
                      f"{r['best_val_loss']:.4f}" if ok else "failed", f"{r['best_val_acc']:.3f}" if ok else "",
                      str(r["stopped_by"]) if ok and r["stopped_early"] else "")
    console.print(table)


@app.command()
@friendly_errors
def tune(
    models: str | None = typer.Option(None, help="Comma-separated models to search (default: ann,cnn,lstm)."),
    num_samples: int | None = typer.Option(None, help="Trials per model (default: 2)."),
    max_epochs: int | None = typer.Option(None, help="Epochs a trial may run (default: 12; ASHA stops bad ones)."),
    grace_period: int | None = typer.Option(None, help="Epochs every trial runs before ASHA may stop it "
                                            "(default: half of --max-epochs)."),
    features: str | None = typer.Option(None, help="Feature table (default: the built-in synthetic dataset)."),
    workers_per_trial: int | None = typer.Option(None, help="Ray Train workers per trial (default: 1)."),
    gpus_per_trial: float | None = typer.Option(None, help="GPUs per trial, may be fractional (default: 0)."),
    max_concurrent: int | None = typer.Option(None, help="Trials at once; 0 = as many as the cluster holds."),
    out: str | None = typer.Option(None, help="Run folder, local or a URI all nodes share "
                                   "(default: $RAYGENRE_HOME/runs/tune-<time>; with --resume: the latest)."),
    resume: bool = typer.Option(False, help="Continue an interrupted search in --out (finished trials are kept)."),
    overwrite: bool = typer.Option(False, help="Search again in an --out that holds a finished search (its models "
                                   "and trial tables are replaced; never anything but raygenre tune output)."),
    set_default: bool = typer.Option(True, help="Make the overall best model the default for `raygenre label`."),
    address: str | None = typer.Option(None, help=ADDRESS_HELP),
    config: Path | None = typer.Option(None, help=CONFIG_HELP + " Search spaces and the trials' `train:` "
                                       "settings live in raygenre/configs/tune.yaml."),
) -> None:
    """Search hyperparameters of the models on Ray Tune (ASHA), each trial a Ray Train run.

    Prints one row per trial, exports the best trial of each model (tested on the test split) to
    OUT/models/<model>, and the overall best (highest validation accuracy) to OUT/models/best and to the default
    model that `raygenre label` uses. TensorBoard: tensorboard --logdir OUT/tune
    """
    from raygenre import workspace
    from raygenre.config import TuneConfig, load_config
    from raygenre.runtime import ensure_ray
    from raygenre.training.tune import tune_models

    cfg = load_config(TuneConfig, config, {
        "models": [m.strip() for m in models.split(",")] if models else None, "num_samples": num_samples,
        "max_epochs": max_epochs, "grace_period": grace_period, "workers_per_trial": workers_per_trial,
        "gpus_per_trial": gpus_per_trial, "max_concurrent": max_concurrent})
    from raygenre import storage

    if out is None:
        runs = sorted((workspace.home() / "runs").glob("tune-*")) if resume else []
        out = str(runs[-1]) if runs else str(workspace.new_run_dir("tune"))
    check_tune_out(out, resume=resume, overwrite=overwrite)  # before any work
    if set_default:
        storage.check_output(str(workspace.default_model_dir()), "model", overwrite=True)
    ensure_ray(address)
    feats = _features_or_builtin(features, address)
    console.print(f"tuning {', '.join(cfg.models)}: {cfg.num_samples} trials each, up to {cfg.max_epochs} epochs, "
                  f"ASHA; results in {out}")
    lease = storage.Lease.acquire(out, "tune")  # a second `raygenre tune --out` on it is refused
    try:
        if overwrite:
            storage.remove(storage.join(out, TUNE_DONE))  # un-finish it first: it is being redone
        # --config is a tune YAML; trials start from its `train:` section (train.yaml's defaults) plus the space.
        result = tune_models(feats, cfg, out, resume=resume, address=address,
                             set_default=set_default)
    finally:
        lease.release()
    print_trials(result.trials, result.synthetic)
    for m, b in result.best.items():
        t = b["test"]
        console.print(f"best {m}: val acc {b['val_acc']:.3f} -> test segment acc {t['segment_accuracy']:.1%}, "
                      f"track acc {t['track_accuracy']:.1%}, macro F1 {t['macro_f1']:.3f}   {b['model_dir']}")
    console.print(f"overall best: [bold]{result.best_model}[/] -> {result.best_model_dir}"
                  + _synthetic_tag(result.synthetic))
    if set_default:
        console.print(f"default model for `raygenre label`: {result.default_model_dir}")
    console.print(f"trial table: {out}/trials.csv   TensorBoard: tensorboard --logdir {out}/tune")


# ---------------------------------------------------------------------------------------------------- demo
@app.command()
@friendly_errors
def demo(
    library_files: int = typer.Option(40, help="Files in the synthetic library labelled at the end."),
    address: str | None = typer.Option(None, help=ADDRESS_HELP),
) -> None:
    """The whole pipeline end to end on the built-in SYNTHETIC data (what `make demo` runs).

    1. generate the synthetic GTZAN-layout dataset (once) and featurize it with Ray Data;
    2. `raygenre tune` with the small default budget (raygenre/configs/tune.yaml): all three models, ASHA;
    3. label a synthetic music library (another seed than training; WAV/FLAC/MP3/OGG at 22.05/44.1/48 kHz,
       stereo, nested folders, a few broken files) with the best model, and print the summary.
    Every number printed comes from synthetic audio, not real music.
    """
    from raygenre import workspace
    from raygenre.config import FeaturizeConfig, LabelConfig, TuneConfig, load_config
    from raygenre.data.builtin import ensure_dataset
    from raygenre.data.featurize import featurize as run_featurize
    from raygenre.data.synth import make_library
    from raygenre.label import label_library
    from raygenre.runtime import ensure_ray
    from raygenre.training.tune import tune_models

    ensure_ray(address)
    console.rule("[bold]1/3 featurize the built-in synthetic dataset")
    dataset = ensure_dataset(console.print)
    feats = str(workspace.builtin_features_dir())
    result = run_featurize(dataset, feats, load_config(FeaturizeConfig), address=address)
    print_feature_summary(result.manifest, feats)

    console.rule("[bold]2/3 raygenre tune (small budget)")
    out = str(workspace.new_run_dir("tune"))
    tuned = tune_models(feats, load_config(TuneConfig), out, address=address, verbose=0)
    print_trials(tuned.trials, tuned.synthetic)
    for m, b in tuned.best.items():
        t = b["test"]
        console.print(f"best {m}: test segment acc {t['segment_accuracy']:.1%}, track acc {t['track_accuracy']:.1%}, "
                      f"macro F1 {t['macro_f1']:.3f}")
    console.print(f"overall best: [bold]{tuned.best_model}[/] -> {tuned.default_model_dir}"
                  + _synthetic_tag(tuned.synthetic))

    console.rule("[bold]3/3 raygenre label a synthetic music library")
    lib = workspace.home() / "demo-library"
    made = make_library(lib, library_files, seed=1, min_seconds=30.0, max_seconds=150.0)
    console.print(f"library: {lib} ({len(made.files)} files: {len(made.genres)} songs + {len(made.bad)} broken on "
                  f"purpose; synthetic)")
    labels = label_library(str(lib), str(workspace.home() / "demo-labels.parquet"), load_config(LabelConfig),
                           address=address, resume=False)
    print_label_summary(labels)
    import os

    import pyarrow.parquet as pq

    rows = pq.read_table(labels.out).to_pylist()
    rel = {r["path"]: os.path.relpath(r["path"], lib) if os.path.isabs(r["path"]) else r["path"] for r in rows}
    scored = [(made.genres[rel[r["path"]]], r["genre"]) for r in rows
              if r["error"] is None and rel[r["path"]] in made.genres]
    if scored:
        acc = sum(a == b for a, b in scored) / len(scored)
        console.print(f"agreement with the generator's genres: {acc:.1%} of {len(scored)} files "
                      "[bold yellow](SYNTHETIC data: not real music)[/]")
    console.print(f"\ndone. Try: raygenre label <your music folder>   (model: {workspace.default_model_dir()})")


if __name__ == "__main__":
    app()
