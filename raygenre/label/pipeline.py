"""``raygenre label``: batch inference over an audio library of any size and layout, on Ray Data.

Pipeline (every stage streams; nothing holds the library's list of files)::

    LibraryScan (read tasks, 0 CPU, 2 at a time)   scan.scan_shard: walk the library, yield small blocks of paths
      -> decode_batch (tasks)                        header, evenly spread windows (seeking decode, in a decoder
                                                     child under a time limit), mono, model's rate, MFCC
      -> Predictor (actor pool, model loaded once)   softmax per segment, mean over a file's segments
      -> driver                                      rows written in parts (parts.PartWriter) as they complete,
                                                     consolidated into OUT at the end (parts.consolidate)

Bad files never stop a run: each gets a row whose ``error`` says why. Model actors that die are restarted and
their batches retried, up to ``label.actor_restarts`` restarts in all; then the run stops (``LabelStopped``),
keeping every row so far, and the same command resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data import ActorPoolStrategy, DataContext, TaskPoolStrategy
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask
from tqdm.auto import tqdm

from raygenre import storage, workspace
from raygenre.config import FeatureParams, LabelConfig
from raygenre.label import index
from raygenre.label.parts import (
    FORMATS,
    PartWriter,
    check_label_output,
    consolidate,
    next_part_index,
    output_schema,
    parts_dir_of,
    prepare_parts,
    run_lock,
    with_threshold,
)
from raygenre.label.predict import Predictor, decode_batch, model_id
from raygenre.label.scan import (
    SCAN_BLOCK_ROWS,
    SCAN_SCHEMA,
    SCAN_SHARDS,
    library_root,
    scan_shard,
    spread_depth,
    stat_files,
)
from raygenre.label.watchdog import ActorWatchdog
from raygenre.model.artifact import load_model
from raygenre.runtime import ensure_ray, wait_for_resources
from raygenre.workspace import progress_bars_wanted

SCAN_CONCURRENCY = 2  # scan tasks running at once (they take no CPU slot: see _build_dataset)


class NoModelError(FileNotFoundError):
    """There is no model to label with (none given and none in the workspace)."""


class LabelStopped(RuntimeError):
    """The run could not go on (its model actors kept dying); every row so far is kept in ``OUT.parts/``."""


@dataclass
class LabelResult:
    """What a label run produced. Counts cover the whole output (this run's rows and resumed ones)."""

    out: str  # the consolidated output file
    format: str  # parquet | csv | jsonl
    files: int  # rows in the output (one per file)
    new: int  # rows labelled by this run
    errors: int  # rows whose ``error`` is set
    genres: list[tuple[str, int]]  # (genre, files) for labelled rows, most common first
    audio_hours: float  # audio labelled by this run
    seconds: float  # wall time of this run
    model: str  # model id written in the ``model`` column
    synthetic: bool  # the model was trained on synthetic data
    error_examples: list[tuple[str, str]] = field(default_factory=list)  # (path, error), a few
    set_aside: list[str] = field(default_factory=list)  # unreadable parts moved to PARTS/broken/ (relabelled)
    warnings: list[str] = field(default_factory=list)  # printed on stderr as found: ignored entries, set-aside parts
    unchanged: bool = False  # nothing new, changed or deleted: the output was left as it was, Ray never started

    @property
    def resumed(self) -> int:
        """Rows that came from earlier runs (skipped this time)."""
        return self.files - self.new


def resolve_model_dir(model_dir: str | None) -> str:
    """The model folder to use: ``model_dir``, else the workspace's best model. Raises ``NoModelError``."""
    hint = ("Train one with `raygenre train --model cnn` (or find the best with `raygenre tune`), "
            "or pass --model MODEL_DIR.")
    if model_dir is None:
        best = workspace.default_model_dir()
        if not (best / "model.json").exists():
            raise NoModelError(f"no model to label with: the workspace has no trained model at {best}. {hint}")
        return str(best)
    if not storage.exists(storage.join(model_dir, "model.json")):
        raise NoModelError(f"no model at {model_dir} (it has no model.json). {hint}")
    return str(model_dir)


class LibraryScan(Datasource):
    """A Ray Data source over a library folder: ``SCAN_SHARDS`` read tasks, each streaming its shard."""

    def __init__(self, root: str, exts: frozenset[str], parts_dir: str | None, shards: int = SCAN_SHARDS,
                 model: str | None = None) -> None:
        super().__init__()
        self.root, self.exts, self.parts_dir, self.shards, self.model = root, exts, parts_dir, shards, model
        self.depth = spread_depth(root, shards)  # decided once, here: every shard and load_done use the same

    def get_name(self) -> str:
        return "ScanLibrary"

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None)
        return [ReadTask(functools.partial(scan_shard, self.root, k, self.shards, self.exts, self.parts_dir,
                                           model=self.model, depth=self.depth),
                         meta, schema=SCAN_SCHEMA, per_task_row_limit=per_task_row_limit)
                for k in range(self.shards)]


ACTOR_CPUS = 0.5  # what each model actor declares
DECODE_MIN_CPUS = 1.0  # what the actors must leave free: decode tasks and the 1-CPU repartition tasks


def label_needs(cfg: LabelConfig) -> dict[str, float]:
    """The least a cluster must have for ``_pool_sizes`` to plan a run: the actors ``cfg`` asks for (1 when it
    derives them) at ``ACTOR_CPUS`` each plus ``DECODE_MIN_CPUS``, and with ``cfg.gpu`` one GPU per actor.
    ``label_library`` waits for it on a cluster that starts its workers on demand."""
    actors = cfg.actors or 1
    need = {"CPU": actors * ACTOR_CPUS + DECODE_MIN_CPUS}
    if cfg.gpu:
        need["GPU"] = float(actors)
    return need


def _pool_sizes(cfg: LabelConfig, resources: dict[str, float]) -> tuple[int, float, int, float]:
    """(actors, CPUs per actor, decode tasks at once, CPUs per decode task), leaving room for every stage.

    Actors take 0.5 CPU each. Decoding runs as many tasks as there are CPUs left (rounded), each declaring
    a share small enough that a 1-CPU repartition task (see ``_build_dataset``) can always start beside
    them: 2 CPUs, 1 actor -> 2 decode tasks of 0.25 CPU + the actor's 0.5 + 1.0 kept for repartitioning.
    Had the decode tasks declared the whole 1.5, a repartition task could only start between them, and
    decoding would wait on it (bench/label.py: one core idle a third of the run). A pool that took every
    CPU would starve decoding and hang, so the actors must leave at least 1 CPU.
    """
    cpus = float(resources.get("CPU", 1.0))
    derived = int(resources.get("GPU", 0)) if cfg.gpu else int(cpus // 16)
    actors = cfg.actors or max(1, derived)
    actor_cpus = ACTOR_CPUS
    left = cpus - actors * actor_cpus
    if left < DECODE_MIN_CPUS:  # the decode tasks and the 1-CPU repartition tasks need at least 1 CPU
        raise ValueError(f"{actors} model actors x {actor_cpus} CPU leave no CPU for decoding on this "
                         f"cluster ({cpus:g} CPUs): use fewer actors (label.actors)")
    decoders = max(1, int(left + 0.5))  # one per CPU left: decoding is single-threaded
    decode_cpus = max(0.05, int(20 * (left - 1.0) / decoders) / 20)  # rounded down to 0.05
    return actors, actor_cpus, decoders, decode_cpus


def _build_dataset(root: str, cfg: LabelConfig, params: FeatureParams, model_dir: str, mid: str,
                   parts_dir: str | None, resources: dict[str, float], starts: Any = None) -> Any:
    """The lazy Ray Data pipeline: scan -> decode (tasks) -> model (actor pool)."""
    scan = LibraryScan(root, frozenset(e.lower().lstrip(".") for e in cfg.extensions), parts_dir, model=mid)
    # 0 CPU: scanning is I/O, and a scan task parked by back-pressure must not hold a CPU that decoding needs.
    ds = ray.data.read_datasource(scan, num_cpus=0, compute=TaskPoolStrategy(size=SCAN_CONCURRENCY),
                                  override_num_blocks=SCAN_SHARDS)  # no SplitBlocks: the blocks are small
    return _label_stages(ds, cfg, params, model_dir, mid, resources, starts)


def _label_stages(ds: Any, cfg: LabelConfig, params: FeatureParams, model_dir: str, mid: str,
                  resources: dict[str, float], starts: Any = None) -> Any:
    """Scan rows (``SCAN_SCHEMA``) -> decode (tasks) -> model (actor pool): the lazy stages after the source."""
    actors, actor_cpus, decoders, decode_cpus = _pool_sizes(cfg, resources)
    # A read task's yielded blocks are coalesced (up to 128 MiB), so a whole shard would reach one decode task
    # as a single block: a streaming repartition re-cuts the stream (without materialising it) into blocks of
    # SCAN_BLOCK_ROWS paths. Its tasks are short but take 1 CPU, hence the 1 CPU _pool_sizes keeps free.
    ds = ds.repartition(target_num_rows_per_block=SCAN_BLOCK_ROWS)
    # A file that hangs or crashes its decoder fails alone inside the task (raygenre.data.decoder); a task dies only
    # with its worker (killed, out of memory), and Ray Data runs it again.
    ds = ds.map_batches(decode_batch, fn_kwargs={"params": params, "count": cfg.segments_per_track,
                                                 "timeout_s": cfg.decode_timeout_s},
                        batch_size=SCAN_BLOCK_ROWS, batch_format="numpy", num_cpus=decode_cpus,
                        compute=TaskPoolStrategy(size=decoders))
    gpu_args = {"num_gpus": 1} if cfg.gpu else {}
    # Ray Data restarts a dead actor and retries its batch, without bound. Each start is counted (starts), and
    # the driver stops the run when there were more than actors + label.actor_restarts (see label.watchdog): a
    # model that kills its actor every time (GPU fault, out of memory) would otherwise loop forever. Ray's own
    # max_restarts is no way out: with it spent, Ray Data 2.60 waits on the dead actor forever (measured).
    return ds.map_batches(Predictor, fn_constructor_kwargs={"model_dir": model_dir, "model_id": mid,
                                                            "device": "cuda" if cfg.gpu else "cpu",
                                                            "starts": starts},
                          compute=ActorPoolStrategy(size=actors), batch_size=cfg.batch_size,
                          batch_format="numpy", num_cpus=actor_cpus, **gpu_args)


def _cluster_for(cfg: LabelConfig, address: str | None, gpu_setting: str, gpu_off: str) -> dict[str, float]:
    """Connect to Ray and return its resources once what ``cfg`` needs is there. A cluster whose workers start on
    demand (KubeRay groups at 0 replicas) has next to nothing yet: ask its autoscaler and wait, rather than refuse
    (or plan the pool from the head alone). ``gpu_setting``/``gpu_off``: the GPU setting as the caller's user
    knows it and how to turn it off, said when there is no GPU."""
    ensure_ray(address)
    resources = wait_for_resources(label_needs(cfg), cfg.wait_for_workers_s, "label",
                                   setting="label.wait_for_workers_s")
    if cfg.gpu and resources.get("GPU", 0) < 1:
        raise ValueError(f"{gpu_setting}: the Ray cluster has no GPU; {gpu_off} to label on CPUs")
    return resources


def _commit(parts_dir: str, out: str, cfg: LabelConfig, schema: pa.Schema, settings: dict[str, Any], *,
            keep_deleted: bool, model: str, overwrite: bool) -> Any:
    """Consolidate the parts into ``out`` (``parts.consolidate``), then record the done index for the next
    resume unless parts appeared meanwhile (the next run sets them aside: it must not be a no-op)."""
    tally = consolidate(parts_dir, out, cfg.format, schema, keep_deleted=keep_deleted, model=model,
                        overwrite=overwrite, min_confidence=cfg.min_confidence)
    if not tally.skipped:
        index.write_index(parts_dir, out, settings, pa.concat_tables(tally.keys) if tally.keys else
                          pa.table({"path": [], "size": [], "mtime": []}), tally.summary())
    return tally


def _stopped_message(cause: str, parts_dir: str, rows: int) -> str:
    """One paragraph for a run that could not go on: why, what is kept, what to do."""
    return (f"labelling stopped: {cause}. The {rows} rows written by this run and all earlier ones are kept in "
            f"{storage.redact(parts_dir)}: run the same command again to resume.")


PROGRESS_LINE_SECONDS = 30.0  # without a terminal (ray job logs, CI), one progress line this often


def _progress_bar(enabled: bool) -> Any:
    """A live files/s bar on a terminal (``progress_bars_wanted``); off in logs, where redraws are noise."""
    return tqdm(desc="labelling", unit="file", disable=not (enabled and progress_bars_wanted()), file=sys.stderr,
                dynamic_ncols=True, smoothing=0.1)


def _run_pipeline(ds: Any, writer: PartWriter, progress: bool) -> tuple[int, float]:
    """Drive the pipeline: write parts as results arrive. Returns (rows, audio seconds)."""
    rows, audio_s = 0, 0.0
    t0 = last_line = time.monotonic()
    with _progress_bar(progress) as bar:
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            writer.add(table)
            rows += table.num_rows
            audio_s += float(np.nansum(table.column("duration_s").to_numpy(zero_copy_only=False)))
            now = time.monotonic()
            elapsed = max(now - t0, 1e-9)
            rate = f"{rows / elapsed:.1f} files/s, {audio_s / 3600 / elapsed:.2f} audio-h/s"
            bar.set_postfix_str(rate.split(", ")[1], refresh=False)
            bar.update(table.num_rows)
            if progress and bar.disable and now - last_line >= PROGRESS_LINE_SECONDS:  # logs: a line, not a bar
                print(f"labelling: {rows} files so far ({rate})", file=sys.stderr, flush=True)
                last_line = now
    writer.flush()
    return rows, audio_s


@contextlib.contextmanager
def _quiet_ray_data() -> Iterator[None]:
    """Hide Ray Data's own progress bars and INFO logs while ours runs (datasets copy the context when built)."""
    ctx = DataContext.get_current()
    logger = logging.getLogger("ray.data")
    before = ctx.enable_progress_bars, logger.level
    ctx.enable_progress_bars = False
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*minimum number of concurrent actors.*")
            yield
    finally:
        ctx.enable_progress_bars = before[0]
        logger.setLevel(before[1])


def _warn(text: str) -> None:
    """One warning line on stderr, at once (a run may take hours, and may not reach its summary)."""
    print(f"warning: {text}", file=sys.stderr, flush=True)


def label_library(library: str, out: str, cfg: LabelConfig, *, model_dir: str | None = None,
                  address: str | None = None, resume: bool = True, keep_deleted: bool = False,
                  overwrite: bool = False, progress: bool = True) -> LabelResult:
    """Label every audio file under ``library``; write one row per file to ``out`` in ``cfg.format``.

    ``model_dir`` defaults to the workspace's best model (``NoModelError`` when there is none). With
    ``resume``, files already in ``OUT.parts/`` (same path, size and mtime) are skipped and the rest appended.
    Rows of files no longer in the library are left out of ``out`` unless ``keep_deleted``.
    Before any work (before Ray), ``out`` must be absent or a label table raygenre wrote; ``overwrite`` lets
    it replace another file (never a folder; a symlink is replaced itself): ``parts.check_label_output``.
    Raises ``ValueError`` subclasses (and ``FileExistsError`` ones for ``out``) for usage errors; bad audio files
    never raise (they become error rows).
    """
    t0 = time.monotonic()
    if cfg.format not in FORMATS:
        raise ValueError(f"unknown format {cfg.format!r}: choose one of {', '.join(FORMATS)}")
    if cfg.segments_per_track < 1 or cfg.batch_size < 1:
        raise ValueError("segments_per_track and batch_size must be at least 1")
    check_label_output(out, overwrite=overwrite)
    root = library_root(library)
    model_dir = resolve_model_dir(model_dir)
    model = load_model(model_dir)  # on the driver: its metadata (the actors load their own copy)
    mid, genres = model_id(model, model_dir), list(model.genres)
    parts_dir = parts_dir_of(out)
    run = {"model": mid, "genres": genres, "segments_per_track": cfg.segments_per_track,
           "features": dataclasses.asdict(model.features), "library": root}
    exts = frozenset(e.lower().lstrip(".") for e in cfg.extensions)
    settings = {"run": run, "format": cfg.format, "keep_deleted": keep_deleted,
                "extensions": sorted(exts), "min_confidence": cfg.min_confidence}
    with run_lock(parts_dir):
        found = index.compare(parts_dir, out, settings, root, exts) if resume else None
        if found is not None and found[0] == "rewrite":  # only an output setting changed: no Ray, no labelling
            tally = _commit(parts_dir, out, cfg, output_schema(genres), settings, keep_deleted=keep_deleted,
                            model=mid, overwrite=overwrite)
            if not tally.skipped:
                return LabelResult(out=str(out), format=cfg.format, files=tally.files, new=0, errors=tally.errors,
                                   genres=tally.genres.most_common(), audio_hours=0.0,
                                   seconds=time.monotonic() - t0, model=mid,
                                   synthetic=bool(model.meta.get("synthetic")), error_examples=tally.error_examples)
            found = None  # parts appeared meanwhile: the full run sets them aside
        summary = found[1] if found is not None else None
        if summary is not None:  # nothing new, changed or deleted: the output stands, no Ray is started
            return LabelResult(out=str(out), format=cfg.format, new=0, audio_hours=0.0,
                               seconds=time.monotonic() - t0, model=mid, synthetic=bool(model.meta.get("synthetic")),
                               files=summary["files"], errors=summary["errors"],
                               genres=[tuple(g) for g in summary["genres"]],
                               error_examples=[tuple(e) for e in summary["error_examples"]], unchanged=True)
        resources = _cluster_for(cfg, address, "--gpu", "drop --gpu")
        state = prepare_parts(parts_dir, run, resume)
        warned = list(state.warnings)
        for line in warned:
            _warn(line)
        first = next_part_index(parts_dir)
        schema = output_schema(genres)
        writer = PartWriter(parts_dir, schema, cfg.files_per_part, first)
        with _quiet_ray_data():
            actors = _pool_sizes(cfg, resources)[0]
            watchdog = ActorWatchdog(actors + cfg.actor_restarts)
            ds = _build_dataset(root, cfg, model.features, model_dir, mid, parts_dir if first else None, resources,
                                watchdog.starts)
            try:
                with watchdog:
                    new, audio_s = _run_pipeline(ds, writer, progress)
            except KeyboardInterrupt:
                if not watchdog.tripped.is_set():
                    raise
                writer.flush()  # every row that reached the driver is kept: a rerun resumes after them
                raise LabelStopped(_stopped_message(
                    f"the model actors kept dying ({actors} actor(s) started {watchdog.budget + 1}+ times; "
                    f"label.actor_restarts allows {cfg.actor_restarts} restarts): out of memory, or a GPU fault? "
                    f"Ray's logs say why each died", parts_dir, writer.written)) from None
        tally = _commit(parts_dir, out, cfg, schema, settings, keep_deleted=keep_deleted, model=mid,
                        overwrite=overwrite)
        for name in tally.skipped:  # appeared while the run went on; the next resume sets them aside
            warned.append(f"{storage.redact(parts_dir)}/{name}: not merged into the output")
            _warn(warned[-1])
    return LabelResult(out=str(out), format=cfg.format, files=tally.files, new=new, errors=tally.errors,
                       genres=tally.genres.most_common(), audio_hours=audio_s / 3600,
                       seconds=time.monotonic() - t0, model=mid, synthetic=bool(model.meta.get("synthetic")),
                       error_examples=tally.error_examples, set_aside=state.set_aside.broken, warnings=warned)


def label_files(paths: Sequence[str], cfg: LabelConfig, *, model_dir: str | None = None,
                address: str | None = None, progress: bool = True) -> pa.Table:
    """Label an explicit list of local files: one row per distinct path (``output_schema`` of the model's genres,
    ``cfg.min_confidence`` applied as ``label`` applies it), in the order given, the path made absolute
    (``scan.stat_files``).

    The same pipeline as ``label_library`` with the library walk replaced by the list: the same model loading
    (``model_dir`` defaults to the workspace's best model; ``NoModelError``), decoding, actor pool and watchdog
    (``LabelStopped``). Nothing is written: the caller keeps the rows (the beets plugin stores them in its
    library), so there are no parts and no resume. Bad files never raise: each gets an error row.
    """
    if cfg.segments_per_track < 1 or cfg.batch_size < 1:
        raise ValueError("segments_per_track and batch_size must be at least 1")
    model_dir = resolve_model_dir(model_dir)
    model = load_model(model_dir)  # on the driver: its metadata (the actors load their own copy)
    mid, genres = model_id(model, model_dir), list(model.genres)
    schema = output_schema(genres)
    scan = stat_files(paths)
    if scan.num_rows == 0:
        return schema.empty_table()
    resources = _cluster_for(cfg, address, "gpu", "set label.gpu to false")
    tables = []
    with _quiet_ray_data():
        actors = _pool_sizes(cfg, resources)[0]
        watchdog = ActorWatchdog(actors + cfg.actor_restarts)
        # Blocks of SCAN_BLOCK_ROWS paths, as the library scan yields them: decoding spreads over the tasks.
        ds = ray.data.from_arrow(scan).repartition(target_num_rows_per_block=SCAN_BLOCK_ROWS)
        ds = _label_stages(ds, cfg, model.features, model_dir, mid, resources, watchdog.starts)
        try:
            with watchdog, _progress_bar(progress) as bar:
                for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                    tables.append(table.select(schema.names).cast(schema))
                    bar.update(table.num_rows)
        except KeyboardInterrupt:
            if not watchdog.tripped.is_set():
                raise
            raise LabelStopped(f"labelling stopped: the model actors kept dying ({actors} actor(s) started "
                               f"{watchdog.budget + 1}+ times; label.actor_restarts allows {cfg.actor_restarts} "
                               f"restarts): out of memory, or a GPU fault? Ray's logs say why each died") from None
    rows = with_threshold(pa.concat_tables(tables), cfg.min_confidence)
    order = {p: i for i, p in enumerate(scan.column("path").to_pylist())}  # rows arrive in any order
    ranks = pa.array([order[p] for p in rows.column("path").to_pylist()], type=pa.int64())
    return rows.take(pc.sort_indices(ranks))
