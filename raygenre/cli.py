"""The ``raygenre`` command line: a thin layer over the library functions (which the tests call too).

Every command connects to a Ray cluster when ``--address``/``RAY_ADDRESS`` is set, else runs Ray locally.
"""

from __future__ import annotations

import functools
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
console = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ADDRESS_HELP = "Ray cluster to use (e.g. auto, ray://head:10001). Default: $RAY_ADDRESS, else a local Ray."
CONFIG_HELP = "YAML file overriding the defaults in configs/ (flags override both)."


def friendly_errors(fn: F) -> F:
    """Print known, user-fixable errors as one clear line (exit 2) instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from raygenre.config import ConfigError
        from raygenre.featurize import FeatureMismatchError
        from raygenre.gtzan import DatasetError

        known: tuple[type[BaseException], ...] = (ConfigError, DatasetError, FeatureMismatchError,
                                                  FileNotFoundError, NotADirectoryError, ValueError)
        try:
            from raygenre.artifact import ArtifactError

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
    config: Path | None = typer.Option(None, help=CONFIG_HELP),
) -> None:
    """Write the built-in SYNTHETIC dataset: OUT_DIR/genres_original/<genre>/<genre>.000NN.wav.

    Ten GTZAN genres, 22050 Hz mono 16-bit WAV, procedurally generated (drums, harmony, timbre and tempo drawn
    per track from overlapping per-genre ranges). It is NOT real music: use it to try the pipeline, and
    the real GTZAN (or your own `<genre>/<file>` tree) for results that mean something.
    """
    from raygenre.config import load_config
    from raygenre.synth import synthesize

    cfg = load_config("synth", config, {"tracks_per_genre": tracks_per_genre, "seconds": seconds,
                                        "seed": seed, "faults": faults})
    result = synthesize(out_dir, cfg)
    console.print(f"Wrote {result.tracks} synthetic tracks (seed {cfg.seed}) to {out_dir}/genres_original "
                  f"in {result.seconds:.1f} s. [dim](synthetic: not real music)[/]")


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
    overwrite: bool = typer.Option(False, help="Recompute even if OUT already holds a finished table."),
    address: str | None = typer.Option(None, help=ADDRESS_HELP),
    config: Path | None = typer.Option(None, help=CONFIG_HELP),
) -> None:
    """Decode, segment and MFCC a dataset with Ray Data; write a Parquet table + features.json.

    Splits are assigned per TRACK (never per segment), so no song is in two splits. Corrupt, empty,
    truncated, too-short or non-audio files are listed as rejects with their reason and the run goes on; the
    exit status is non-zero only when nothing usable was found. The table appears at OUT only when complete.
    """
    from raygenre.builtin import ensure_dataset
    from raygenre.config import load_config
    from raygenre.featurize import featurize as run

    method = "lists" if split_lists else split
    cfg = load_config("featurize", config, {
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


if __name__ == "__main__":
    app()
