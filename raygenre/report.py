"""Everything the CLI prints: end-of-run tables and summaries (rich), the per-epoch line, the SYNTHETIC tags.

The library functions return results; these functions only render them. No Ray, no torch here (the CLI imports
this module at start-up, and ``raygenre --help`` must stay fast).
"""

from __future__ import annotations

import sys
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from raygenre.redact import redact
from raygenre.workspace import SYNTHETIC_NOTICE


class _RedactingConsole(Console):
    """A rich console that removes credentials from every URI in the text it prints (``raygenre.redact``): the
    last line of defence for a path given as ``s3://KEY:SECRET@bucket/...``, whatever code built the message."""

    def print(self, *objects: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().print(*(redact(o) if isinstance(o, str) else o for o in objects), **kwargs)


# Off a terminal (CI, `ray job logs`, a pipe) rich would wrap at 80 columns; tables read better wider.
console = _RedactingConsole(highlight=False, width=None if sys.stdout.isatty() else 120)
err = _RedactingConsole(stderr=True, highlight=False, soft_wrap=True)

SYNTHETIC_TAG = " [bold yellow](SYNTHETIC data: not real music)[/]"


def say(text: str) -> None:
    """One line on the console (what library functions get as their ``say`` callback)."""
    console.print(text)


def synthetic_tag(synthetic: bool) -> str:
    return SYNTHETIC_TAG if synthetic else ""


def error(message: object) -> None:
    """A known, user-fixable error as one line on stderr."""
    err.print(f"[bold red]error:[/] {message}")  # redacted by the console


# ----------------------------------------------------------------------------------------------- data
def synth_done(result: Any, cfg: Any, out_dir: object) -> None:
    """`raygenre synth`'s last line. ``result``: ``SynthResult``; ``cfg``: ``SynthConfig``."""
    console.print(f"Wrote {result.tracks} synthetic {cfg.difficulty} tracks (seed {cfg.seed}) to "
                  f"{out_dir}/genres_original in {result.seconds:.1f} s. [dim](synthetic: not real music)[/]")


def feature_summary(manifest: dict[str, Any], out: str) -> None:
    """The end-of-run table: tracks and segments per genre and split, then rejects."""
    counts = manifest["counts"]
    label = " (SYNTHETIC data)" if manifest.get("synthetic") else ""
    table = Table(title=f"Feature table {redact(str(out))}{label}")
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


def featurize_done(result: Any, out: str) -> None:
    """`raygenre featurize`'s summary. ``result``: ``FeaturizeResult``."""
    if result.skipped:
        console.print(f"{out} already holds a finished table with these parameters (use --overwrite to redo).")
    feature_summary(result.manifest, out)


# ---------------------------------------------------------------------------------------------- label
def label_summary(result: Any) -> None:
    """The end-of-run summary of `raygenre label`: counts, speed, top genres, a few errors."""
    rate = result.new / result.seconds if result.seconds else 0.0
    if result.unchanged:
        console.print(f"Nothing to label: no file is new, changed or deleted since the last run, so {result.out} "
                      f"stands as it was ({result.files} rows, {result.errors} with errors; checked in "
                      f"{result.seconds:.1f} s). Model: {result.model}.")
    else:
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


# -------------------------------------------------------------------------------------------- training
def epoch_line(m: dict[str, Any]) -> None:
    """One training epoch as rank 0 reported it (the ``progress_callback`` of ``raygenre train``)."""
    console.print(f"  epoch {m['epoch']:>3}  train loss {m['train_loss']:.4f} acc {m['train_acc']:.3f}  "
                  f"val loss {m['val_loss']:.4f} acc {m['val_acc']:.3f}  ({m['seconds']:.1f} s)"
                  + ("  [dim](resumed after a worker failure)[/]" if m.get("resumed_from_epoch") else ""))


def eval_check(check: dict[str, Any]) -> None:
    """Eval mode vs train mode on the train split: the line that would have caught a broken BatchNorm."""
    if not check:
        return
    console.print(f"train split: {check['train_acc']:.1%} while training, {check['train_eval_acc']:.1%} in eval mode "
                  f"(exported model, {check['segments']} segments)")
    if check.get("warning"):
        console.print(f"[bold red]warning:[/] {check['warning']}")


def test_metrics(test: dict[str, Any], synthetic: bool) -> None:
    """Segment and track accuracy and macro F1 of one split (``evaluate``'s dict)."""
    console.print(f"test: segment accuracy {test['segment_accuracy']:.1%}, track accuracy "
                  f"{test['track_accuracy']:.1%}, macro F1 {test['macro_f1']:.3f} "
                  f"({test.get('segments', '?')} segments, {test.get('tracks', '?')} tracks)"
                  + synthetic_tag(synthetic))


def train_done(result: Any, cfg: Any) -> None:
    """`raygenre train`'s summary: the epoch table, best epoch, eval-mode check, test metrics, where things are.

    ``result``: ``TrainResult``; ``cfg``: the ``TrainConfig`` the run was asked for.
    """
    workers = result.config.get("workers", cfg.workers)  # the resolved count (auto -> a number)
    table = Table(title=f"raygenre train --model {cfg.model} ({workers} workers, {'GPU' if cfg.gpu else 'CPU'})")
    for col in ("epoch", "train loss", "train acc", "val loss", "val acc", "s"):
        table.add_column(col, justify="right")
    for r in result.history:
        table.add_row(str(r["epoch"]), f"{r['train_loss']:.4f}", f"{r['train_acc']:.3f}", f"{r['val_loss']:.4f}",
                      f"{r['val_acc']:.3f}", f"{r['seconds']:.1f}")
    console.print(table)
    stop = " (early stop)" if result.stopped_early else ""
    console.print(f"best epoch {result.best_epoch}{stop}; {len(result.history)} epochs in {result.seconds:.0f} s")
    eval_check(result.eval_check)
    test_metrics(result.test, result.synthetic)
    console.print(f"model: {result.model_dir}   run folder: {result.run_dir}"
                  + (f"\ndefault model for `raygenre label`: {result.default_model_dir}"
                     if result.default_model_dir else ""))


def evaluate_done(evaluation: Any) -> None:
    """`raygenre evaluate`'s summary. ``evaluation``: ``workflow.Evaluation``."""
    test_metrics(evaluation.result, evaluation.result["synthetic"])
    console.print(f"wrote {evaluation.metrics_path} and {evaluation.confusion_path}")


def trials(table_df: Any, synthetic: bool) -> None:
    """The end-of-search table: one row per trial (``TuneResult.trials``, a DataFrame)."""
    table = Table(title="raygenre tune: trials" + (" (SYNTHETIC data)" if synthetic else ""),
                  box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    for col in ("model", "trial", "lr", "batch", "dropout", "wd", "width", "epochs", "best val loss",
                "best val acc", "stopped"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for r in table_df.to_dict("records"):
        ok = r.get("best_val_loss") == r.get("best_val_loss") and r.get("best_val_loss") is not None
        table.add_row(r["model"], str(r["trial_id"])[-5:], f"{r['lr']:.1e}", str(r["batch_size"]),
                      f"{r['dropout']:.2f}", f"{r['weight_decay']:.1e}", str(r["hidden"]), str(r["epochs"]),
                      f"{r['best_val_loss']:.4f}" if ok else "failed", f"{r['best_val_acc']:.3f}" if ok else "",
                      str(r["stopped_by"]) if ok and r["stopped_early"] else "")
    console.print(table)


def best_per_model(best: dict[str, Any], *, detail: bool) -> None:
    """One line per model: its best trial's test metrics (with its validation accuracy and folder if ``detail``)."""
    for m, b in best.items():
        t = b["test"]
        head = f"best {m}: val acc {b['val_acc']:.3f} -> test" if detail else f"best {m}: test"
        tail = f"   {b['model_dir']}" if detail else ""
        console.print(f"{head} segment acc {t['segment_accuracy']:.1%}, track acc {t['track_accuracy']:.1%}, "
                      f"macro F1 {t['macro_f1']:.3f}{tail}")


def tune_done(result: Any, set_default: bool) -> None:
    """`raygenre tune`'s summary. ``result``: ``TuneResult``."""
    trials(result.trials, result.synthetic)
    best_per_model(result.best, detail=True)
    console.print(f"overall best: [bold]{result.best_model}[/] -> {result.best_model_dir}"
                  + synthetic_tag(result.synthetic))
    if set_default:
        console.print(f"default model for `raygenre label`: {result.default_model_dir}")
    console.print(f"trial table: {result.out}/trials.csv   TensorBoard: tensorboard --logdir {result.out}/tune")


# ------------------------------------------------------------------------------------------------ demo
def demo_step(step: str, value: Any) -> None:
    """One step of ``workflow.demo`` (it yields ``(step, value)`` pairs; see there)."""
    if step == "rule":
        console.rule(f"[bold]{value}")
    elif step == "featurized":
        result, feats = value
        feature_summary(result.manifest, feats)
    elif step == "tuned":
        trials(value.trials, value.synthetic)
        best_per_model(value.best, detail=False)
        console.print(f"overall best: [bold]{value.best_model}[/] -> {value.default_model_dir}"
                      + synthetic_tag(value.synthetic))
    elif step == "library":
        lib, made = value
        console.print(f"library: {lib} ({len(made.files)} files: {len(made.genres)} songs + {len(made.bad)} broken "
                      f"on purpose; synthetic)")
    elif step == "labelled":
        label_summary(value)
    elif step == "agreement":
        acc, n = value
        console.print(f"agreement with the generator's genres: {acc:.1%} of {n} files "
                      "[bold yellow](SYNTHETIC data: not real music)[/]")
    elif step == "done":
        console.print(f"\ndone. Try: raygenre label <your music folder>   (model: {value})")
    else:  # pragma: no cover - a step the library added without a renderer
        console.print(f"{step}: {value}")


# ------------------------------------------------------------------------------------------------ tagging
def _genres(values: Any) -> str:
    return "(none)" if values is None else "; ".join(values)


def tag_done(result: Any, *, dry_run: bool = False, undo: bool = False) -> None:
    """`raygenre tag` (and `--undo`): one line per file changed (or that would be), refused or failed; skipped
    files counted by reason; then where the journal or the dry run's list is."""
    from collections import Counter

    from rich.markup import escape

    skipped: Counter[str] = Counter()
    for o in result.outcomes:
        if o.action in ("tagged", "would tag"):
            console.print(escape(f"{o.action}: {o.path}: {_genres(o.old)} -> {o.new}"))
        elif o.action == "undone":
            console.print(escape(f"undone: {o.path}: genre back to {_genres(o.old)}"))
        elif o.action in ("error", "refused"):
            err.print(escape(f"{o.action}: {o.path}: {o.reason}"))
        else:
            skipped[o.reason] += 1
    for reason, n in skipped.most_common():
        console.print(escape(f"skipped {n} file(s): {reason}"))
    for line in result.warnings:
        err.print(f"[bold yellow]warning:[/] {escape(line)}")
    if undo:
        console.print(f"Undone: {result.count('undone')} file(s); refused: {result.count('refused')}.")
    elif dry_run:
        console.print(f"Dry run: {result.count('would tag')} file(s) would be tagged, none was touched; the list "
                      f"(path, old_genre, new_genre) is in {escape(str(result.plan))}.")
    else:
        console.print(f"Tagged {result.count('tagged')} file(s) ({result.count('error')} errors, "
                      f"{result.count('skipped')} skipped) in {result.seconds:.1f} s. Undo with: raygenre tag "
                      f"--undo {escape(str(result.journal))}")


def playlists_done(result: Any) -> None:
    """`raygenre playlists`: one line per playlist written, then what was left out."""
    from rich.markup import escape

    for name, n in result.written:
        console.print(escape(f"wrote {name}: {n} track(s)"))
    for name in result.removed:
        console.print(escape(f"removed {name}: raygenre wrote it and its genre has no file now"))
    for line in result.warnings:
        err.print(f"[bold yellow]warning:[/] {escape(line)}")
    console.print(escape(f"{len(result.written)} playlist(s) in {result.out}"))
