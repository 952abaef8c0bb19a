"""The ``raygenre`` command line: each command parses its flags, calls ONE library function (which the tests
call too; most live in ``raygenre.workflow``) and prints the result through ``raygenre.report``.

Every command connects to a Ray cluster when ``--address``/``RAY_ADDRESS`` is set, else runs Ray locally.
The only module that defers imports: the library (Ray, torch) is imported inside each command, so that
``raygenre --help`` stays fast (``bench/cli_help.py`` measures it). Help texts take their defaults from the
packaged configs (``raygenre/configs/``), so a default lives in exactly one place.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from raygenre import __version__, report
from raygenre.config import (
    ConfigError,
    FeaturizeConfig,
    LabelConfig,
    SynthConfig,
    TrainConfig,
    TuneConfig,
    load_config,
)

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="raygenre",
    help="Music genre classification at scale on Ray: synthesize or featurize a GTZAN-layout dataset, "
    "train and tune the tutorial's ANN/CNN/LSTM on Ray Train/Tune, and label whole audio libraries.\n\n"
    "Quick start:  raygenre tune   then   raygenre label /path/to/music",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = report.console

# The packaged defaults, for the help texts (the flags' own defaults are None: "not given, use the config").
SYNTH = load_config(SynthConfig)
FEAT = load_config(FeaturizeConfig)
LABEL = load_config(LabelConfig)
TRAIN = load_config(TrainConfig)
TUNE = load_config(TuneConfig)

ADDRESS_HELP = "Ray cluster to use (e.g. auto, ray://head:10001). Default: $RAY_ADDRESS, else a local Ray."
CONFIG_HELP = "YAML file overriding the packaged defaults (raygenre/configs/; flags override both)."


def _or_tutorial(value: object) -> str:
    """A train default that may be null (= the tutorial's value for the model, see raygenre/model/networks.py)."""
    return "the tutorial's, per model" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _int_option(value: str, flag: str) -> int:
    """A whole number given to ``flag`` (which also takes a word such as ``auto``), or a one-line error."""
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{flag} {value!r}: expected a whole number or auto") from None


def friendly_errors(fn: F) -> F:
    """Print known, user-fixable errors as one clear line (exit 2) instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from raygenre.data.gtzan import DatasetError
        from raygenre.data.table import FeatureMismatchError  # pyarrow: only once a command runs

        # FileExistsError covers storage.OutputExistsError: an --out that is foreign, finished or being written.
        known: tuple[type[BaseException], ...] = (ConfigError, DatasetError, FeatureMismatchError, FileExistsError,
                                                  FileNotFoundError, NotADirectoryError, ValueError)
        try:
            from raygenre.model.artifact import ArtifactError  # torch: only once a command runs

            known = (*known, ArtifactError)
        except ImportError:  # pragma: no cover
            pass
        try:
            return fn(*args, **kwargs)
        except known as exc:
            report.error(exc)
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
    tracks_per_genre: int | None = typer.Option(None, help=f"Tracks per genre (default: {SYNTH.tracks_per_genre})."),
    seconds: float | None = typer.Option(None, help=f"Length of each track in seconds (default: {SYNTH.seconds:g})."),
    seed: int | None = typer.Option(None, help="Random seed; the same seed gives byte-identical files "
                                    f"(default: {SYNTH.seed})."),
    faults: bool | None = typer.Option(None, "--faults/--no-faults",
                                       help="Add GTZAN's real faults: a corrupt jazz.00054.wav, a truncated "
                                       "file, lengths that vary around --seconds "
                                       f"(default: {'on' if SYNTH.faults else 'off'})."),
    difficulty: str | None = typer.Option(None, help="hard: genres overlap like real ones (each track borrows "
                                          "rhythm, instruments, harmony or mix from other genres, louder noise), so "
                                          "a correct model lands well below 100 %; easy: each genre keeps its own "
                                          f"recipe (default: {SYNTH.difficulty})."),
    config: Path | None = typer.Option(None, help=CONFIG_HELP),
) -> None:
    """Write the built-in SYNTHETIC dataset: `OUT_DIR/genres_original/<genre>/<genre>.000NN.wav`.

    Ten GTZAN genres, 22050 Hz mono 16-bit WAV, procedurally generated (drums, harmony, timbre and tempo drawn
    per track from overlapping per-genre ranges). It is NOT real music: use it to try the pipeline, and
    the real GTZAN (or your own `<genre>/<file>` tree) for results that mean something.
    """
    from raygenre.data.synth.dataset import synthesize

    cfg = load_config(SynthConfig, config, {"tracks_per_genre": tracks_per_genre, "seconds": seconds,
                                            "seed": seed, "faults": faults, "difficulty": difficulty})
    report.synth_done(synthesize(out_dir, cfg), cfg, out_dir)


# ----------------------------------------------------------------------------------------------- featurize
@app.command()
@friendly_errors
def featurize(
    dataset: str | None = typer.Argument(None, help="Dataset root: holds `genres_original/<genre>/*.wav`, "
                                         "`genres/<genre>/*.au`, or `<genre>/<files>`. Default: the built-in "
                                         "synthetic dataset."),
    out: str = typer.Option(..., "--out", "-o", help="Output folder (local path or s3://, gs://, file:// URI)."),
    segments: int | None = typer.Option(None, help="Segments cut from each track, back to back "
                                        f"(default: {FEAT.segments})."),
    segment_seconds: float | None = typer.Option(None, help="Segment length in seconds "
                                                 f"(default: {FEAT.features.segment_seconds:g})."),
    split: str | None = typer.Option(None, help="stratified (seeded, per genre) or lists "
                                     f"(default: {FEAT.split.method})."),
    split_lists: str | None = typer.Option(None, help="Folder with train_filtered.txt, valid_filtered.txt, "
                                           "test_filtered.txt (GTZAN fault-filtered split); implies --split lists."),
    seed: int | None = typer.Option(None, help=f"Seed of the stratified split (default: {FEAT.split.seed})."),
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
    from raygenre.workflow import featurize_dataset

    method = "lists" if split_lists else split
    cfg = load_config(FeaturizeConfig, config, {
        "segments": segments,
        "features": {"segment_seconds": segment_seconds},
        "split": {"method": method, "lists_dir": split_lists, "seed": seed},
    })
    result = featurize_dataset(dataset, out, cfg, address=address, overwrite=overwrite, say=report.say)
    report.featurize_done(result, out)


# ---------------------------------------------------------------------------------------------------- label
@app.command()
@friendly_errors
def label(
    library: str = typer.Argument(..., help="Folder of audio files, scanned recursively (hidden folders skipped)."),
    model: str | None = typer.Option(None, "--model", help="Model folder. Default: the workspace's best model "
                                     "(written by `raygenre tune` or `raygenre train`)."),
    out: str | None = typer.Option(None, "--out", "-o", help="Output file (local path or URI). Default: "
                                   "labels.parquet / labels.csv / labels.jsonl in the current folder, by --format."),
    fmt: str | None = typer.Option(None, "--format", help="parquet | csv | jsonl. Default: from --out's "
                                   f"extension, else {LABEL.format}."),
    segments_per_track: int | None = typer.Option(None, help="3 s segments spread evenly across each file; "
                                                  "the label averages their probabilities "
                                                  f"(default: {LABEL.segments_per_track})."),
    batch_size: int | None = typer.Option(None, help=f"Files per model batch (default: {LABEL.batch_size})."),
    gpu: bool | None = typer.Option(None, "--gpu/--cpu", help="Run the model on GPUs, one actor per GPU "
                                    f"(default: {'GPU' if LABEL.gpu else 'CPU'})."),
    min_confidence: float | None = typer.Option(None, help="A file whose top probability is below this gets genre "
                                                "\"unknown\"; its best guess stays in top_genre. Changing it "
                                                f"relabels nothing (default: {LABEL.min_confidence:g})."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip files already in OUT.parts/ "
                                "(same path, size and mtime) and append the rest; --no-resume labels everything."),
    keep_deleted: bool = typer.Option(False, "--keep-deleted", help="Keep the rows of files that were labelled "
                                      "by an earlier run but are no longer in LIBRARY (default: drop them)."),
    overwrite: bool = typer.Option(False, help="Replace --out even when it is not a label table raygenre wrote "
                                   "(a label table from an earlier run is replaced without it). A symlink at --out "
                                   "is replaced itself, its target left untouched; a folder never is."),
    address: str | None = typer.Option(None, help=ADDRESS_HELP),
    config: Path | None = typer.Option(None, help=CONFIG_HELP),
) -> None:
    """Label every audio file under LIBRARY with a genre: one row per file, streamed through Ray Data.

    Each file gives --segments-per-track windows spread across it (only those are decoded where the format
    can seek, so hour-long mixes are cheap); the model runs in a pool of Ray actors. Rows: path, genre,
    top_genre, confidence, `p_<genre>` for every genre, duration_s, segments_used, error, model, size, mtime.
    genre is "unknown" where confidence < --min-confidence; top_genre is always the best guess.

    Results are saved in parts (OUT.parts/, each written atomically) as they complete, so an interrupted run
    loses nothing: run the same command again to finish it. OUT is written at the end, atomically.
    Bad files (corrupt, empty, unreadable, too short, not audio) get a row whose `error` says why.

    Exit status: 0 all files labelled, 1 some files had errors (the run finished), 2 usage error (e.g. no model),
    3 the run stopped early (model actors kept dying): every row so far is kept, the same command resumes.
    """
    import dataclasses

    from raygenre.label.parts import default_out, format_of
    from raygenre.label.pipeline import LabelStopped, label_library

    cfg = load_config(LabelConfig, config, {"format": fmt, "segments_per_track": segments_per_track,
                                            "batch_size": batch_size, "gpu": gpu,
                                            "min_confidence": min_confidence})
    if fmt is None and out is not None and format_of(out):
        cfg = dataclasses.replace(cfg, format=format_of(out))
    try:
        result = label_library(library, out or default_out(cfg.format), cfg, model_dir=model, address=address,
                               resume=resume, keep_deleted=keep_deleted, overwrite=overwrite, progress=True)
    except LabelStopped as exc:  # not a user mistake (exit 2): the run could not go on; its rows are kept
        report.error(exc)
        raise typer.Exit(3) from None
    report.label_summary(result)
    if result.errors:
        raise typer.Exit(1)


# --------------------------------------------------------------------------------------------------- train
@app.command()
@friendly_errors
def train(
    model: str | None = typer.Option(None, "--model", "-m", help=f"ann | cnn | lstm (default: {TRAIN.model})."),
    features: str | None = typer.Option(None, help="Feature table from `raygenre featurize` (local path or URI). "
                                        "Default: the built-in synthetic dataset, featurized on first use."),
    epochs: int | None = typer.Option(None, help=f"Maximum epochs (default: {TRAIN.epochs}; early stopping may "
                                      "end sooner)."),
    workers: str | None = typer.Option(None, help="Ray Train workers, data-parallel: a number, or `auto` (one per "
                                       "node, each with all its CPUs as torch threads; one per GPU with --gpu). "
                                       f"Default: {TRAIN.workers or 'auto'}."),
    gpu: bool | None = typer.Option(None, "--gpu/--cpu", help="One GPU per worker (NCCL) or CPU (gloo) "
                                    f"(default: {'GPU' if TRAIN.gpu else 'CPU'})."),
    lr: float | None = typer.Option(None, help=f"Adam learning rate (default: {TRAIN.lr:g}; the tutorial's is "
                                    "1e-4)."),
    batch_size: int | None = typer.Option(None, help="Global batch: segments per optimizer step, split evenly "
                                          "across the workers, so any worker count trains alike "
                                          f"(default: {TRAIN.batch_size})."),
    dropout: float | None = typer.Option(None, help=f"Dropout (default: {TRAIN.dropout:g})."),
    weight_decay: float | None = typer.Option(None, help="L2 on dense weights "
                                              f"(default: {_or_tutorial(TRAIN.weight_decay)})."),
    hidden: int | None = typer.Option(None, help="Width: ann first dense layer, cnn dense, lstm size "
                                      f"(default: {_or_tutorial(TRAIN.hidden)})."),
    min_epochs: int | None = typer.Option(None, help="Early stopping never ends a run before this epoch "
                                          f"(default: {TRAIN.min_epochs})."),
    patience: int | None = typer.Option(None, help="Then stop after this many epochs without a new best "
                                        f"validation accuracy (default: {TRAIN.patience})."),
    seed: int | None = typer.Option(None, help=f"Seed for data order and initialisation (default: {TRAIN.seed})."),
    deterministic: bool | None = typer.Option(None, "--deterministic/--no-deterministic", help="Deterministic "
                                              "kernels on every worker (cuDNN included), so a GPU run repeats "
                                              "exactly; slower on GPUs "
                                              f"(default: {'on' if TRAIN.deterministic else 'off'})."),
    out: str | None = typer.Option(None, help="Model artifact folder, local or URI (default: "
                                   "`$RAYGENRE_HOME/models/<model>`, replaced on every run)."),
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
    from raygenre.workflow import train_model

    auto = workers is not None and workers.strip().lower() == "auto"
    count = None if auto or workers is None else _int_option(workers, "--workers")
    cfg = load_config(TrainConfig, config, {
        "model": model, "epochs": epochs, "workers": count, "gpu": gpu, "lr": lr, "batch_size": batch_size,
        "dropout": dropout, "weight_decay": weight_decay, "hidden": hidden, "min_epochs": min_epochs,
        "patience": patience, "seed": seed, "deterministic": deterministic})
    if auto:  # over a config file's number too
        cfg = dataclasses.replace(cfg, workers=None)
    result = train_model(features, cfg, out, overwrite=overwrite, storage_path=storage_path,
                         set_default=set_default, address=address, say=report.say, on_epoch=report.epoch_line)
    report.train_done(result, cfg)


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
    from raygenre.workflow import evaluate_model

    report.evaluate_done(evaluate_model(model_dir, features, split, address=address, say=report.say))


# ---------------------------------------------------------------------------------------------------- tune
@app.command()
@friendly_errors
def tune(
    models: str | None = typer.Option(None, help=f"Comma-separated models to search "
                                      f"(default: {','.join(TUNE.models)})."),
    num_samples: int | None = typer.Option(None, help=f"Trials per model (default: {TUNE.num_samples})."),
    max_epochs: int | None = typer.Option(None, help=f"Epochs a trial may run (default: {TUNE.max_epochs}; "
                                          "ASHA stops bad ones)."),
    grace_period: int | None = typer.Option(None, help="Epochs every trial runs before ASHA may stop it "
                                            "(default: " + ("half of --max-epochs" if TUNE.grace_period is None
                                                            else str(TUNE.grace_period)) + ")."),
    features: str | None = typer.Option(None, help="Feature table (default: the built-in synthetic dataset)."),
    workers_per_trial: int | None = typer.Option(None, help="Ray Train workers per trial "
                                                 f"(default: {TUNE.workers_per_trial})."),
    gpus_per_trial: float | None = typer.Option(None, help="GPUs per trial: a fraction shares a GPU between "
                                                "trials (one worker each); a whole number N > 1 runs N workers, "
                                                f"one GPU each (default: {TUNE.gpus_per_trial:g})."),
    max_concurrent: int | None = typer.Option(None, help="Trials at once; 0 = as many as the cluster holds "
                                              f"(default: {TUNE.max_concurrent})."),
    out: str | None = typer.Option(None, help="Run folder, local or a URI all nodes share "
                                   "(default: `$RAYGENRE_HOME/runs/tune-<time>`; with --resume: the latest)."),
    resume: bool = typer.Option(False, help="Continue an interrupted search in --out (finished trials are kept). "
                                "Resuming loads Ray Tune's pickled state, which runs code: raygenre refuses unless "
                                "tuner.pkl matches the record it wrote when the search started and, on a local "
                                "disk, everything under OUT/tune/<model> is yours and writable by nobody else. On "
                                "an object store, whoever can write the prefix can run code in this process."),
    overwrite: bool = typer.Option(False, help="Search again in an --out that holds a finished search (its models "
                                   "and trial tables are replaced; never anything but raygenre tune output)."),
    set_default: bool = typer.Option(True, help="Make the overall best model the default for `raygenre label`."),
    address: str | None = typer.Option(None, help=ADDRESS_HELP),
    config: Path | None = typer.Option(None, help=CONFIG_HELP + " Search spaces and the trials' `train:` "
                                       "settings live in raygenre/configs/tune.yaml."),
) -> None:
    """Search hyperparameters of the models on Ray Tune (ASHA), each trial a Ray Train run.

    Prints one row per trial, exports the best trial of each model (tested on the test split) to
    `OUT/models/<model>`, and the overall best (highest validation accuracy) to OUT/models/best and to the default
    model that `raygenre label` uses. TensorBoard: tensorboard --logdir OUT/tune
    """
    from raygenre.workflow import tune_search

    cfg = load_config(TuneConfig, config, {
        "models": [m.strip() for m in models.split(",")] if models else None, "num_samples": num_samples,
        "max_epochs": max_epochs, "grace_period": grace_period, "workers_per_trial": workers_per_trial,
        "gpus_per_trial": gpus_per_trial, "max_concurrent": max_concurrent})
    result = tune_search(features, cfg, out, resume=resume, overwrite=overwrite, set_default=set_default,
                         address=address, say=report.say)
    report.tune_done(result, set_default)


# ------------------------------------------------------------------------------------------- tag, playlists
@app.command()
@friendly_errors
def tag(
    labels: str | None = typer.Argument(None, help="Label table written by `raygenre label --out`."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would change (path, old genre, new genre) "
                                 "and write it to LABELS.tag-plan.csv; touch no audio file."),
    replace: bool = typer.Option(False, "--replace", help="Replace existing genre tags (the old value goes in the "
                                 "journal). Default: files that have a genre tag are left as they are."),
    min_confidence: float | None = typer.Option(None, "--min-confidence", help="Tag a file only when its top "
                                                "probability is at least P (0..1), with its best guess. Default: "
                                                "the table's genre decides (unknown is never written)."),
    journal: str | None = typer.Option(None, "--journal", help="Undo journal to create (must not exist). "
                                       "Default: LABELS.tag-journal-TIME.jsonl beside LABELS (TIME: now, UTC)."),
    undo_journal: str | None = typer.Option(None, "--undo", help="Undo the tag run that wrote this journal."),
) -> None:
    """Write each file's label from LABELS into its genre tag (ID3 TCON, Vorbis GENRE, MP4 \u00a9gen), with the
    confidence in raygenre's own tag, and an undo journal. Audio data is never rewritten.

    Files labelled unknown, error rows, links, read-only and changed files are skipped with a reason. Exit status:
    0 done (per-file problems are listed), 2 usage error.
    """
    from raygenre.tag.apply import tag_labels, undo

    if undo_journal is not None:
        if labels is not None or dry_run or replace or min_confidence is not None or journal is not None:
            raise ConfigError("--undo JOURNAL takes no LABELS and no other option")
        report.tag_done(undo(undo_journal), undo=True)
        return
    if labels is None:
        raise ConfigError("give LABELS (a label table), or --undo JOURNAL")
    report.tag_done(tag_labels(labels, dry_run=dry_run, replace=replace, min_confidence=min_confidence,
                               journal=journal), dry_run=dry_run)


@app.command()
@friendly_errors
def playlists(
    labels: str = typer.Argument(..., help="Label table written by `raygenre label --out`."),
    out: str = typer.Option(..., "--out", "-o", help="Folder for the playlists (created if missing)."),
    overwrite: bool = typer.Option(False, help="Replace playlist files raygenre did not write (or that were "
                                   "edited since)."),
) -> None:
    """One extended M3U playlist per genre (GENRE.m3u8, UTF-8, `unknown` included) from LABELS, in --out."""
    from raygenre.tag.playlists import write_playlists

    report.playlists_done(write_playlists(labels, out, overwrite=overwrite))


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
    from raygenre.workflow import demo as run_demo

    for step, value in run_demo(library_files, address, say=report.say):
        report.demo_step(step, value)


if __name__ == "__main__":
    app()
