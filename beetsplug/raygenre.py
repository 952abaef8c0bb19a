"""beets plugin: genres from raygenre's model, for the items of a beets library.

Enable it with ``plugins: raygenre`` in the beets config; beets 2 imports ``beetsplug.raygenre`` from the
``beetsplug`` namespace package (no ``beetsplug/__init__.py``, so beets' own plugins and this one share it).

``beet raygenre [QUERY]`` labels the matching items; with ``raygenre: auto: yes``, ``beet import`` labels each
import task's items as they are added (the ``import_task_files`` event: once per task, after the items are stored
at their final paths, so one label call per task).

Design: a beets item's file may be anywhere on disk (``import -C`` leaves files where they are), so labelling
beets' ``directory`` would miss items and label files beets does not know. The plugin hands the items' paths to
``raygenre.label.pipeline.label_files``: ``raygenre label``'s own pipeline (model loading, decoding in a child
under a time limit, the model actor pool, the watchdog, ``min_confidence``) with the folder walk replaced by
the list. Nothing is written by raygenre: the rows go into beets' database, which is the record, so a re-run
relabels the matched items (narrow it with a query). Per item it stores, as flexible attributes:

* ``raygenre_genre``: the best guess (``top_genre``), ``raygenre_confidence``: its probability (0..1),
  ``raygenre_model``: the model id;
* beets' genre field (``genres``: beets 2.14 keeps genres as a list; ``beet write`` writes it to the file's
  genre tag) set to ``[raygenre_genre]`` when ``raygenre_confidence >= min_confidence`` and the item has no
  genre yet (or ``force: yes``).

A file that cannot be labelled is one warning line naming it and why; the other items are stored as usual.

Config (``raygenre:`` in the beets config): ``model`` (a model folder; default the raygenre workspace's best
model, ``$RAYGENRE_HOME``), ``min_confidence`` (0.5), ``force`` (no), ``auto`` (no), ``label_config`` (a
``raygenre label --config`` YAML file for the pipeline's own settings, e.g. ``segments_per_track``; optional).

raygenre (torch, Ray) is imported only when items are labelled: every other beet command stays as fast as before.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

from beets import ui
from beets.dbcore import types
from beets.library import Item, Library
from beets.plugins import BeetsPlugin
from beets.util import displayable_path


class RaygenrePlugin(BeetsPlugin):
    """``beet raygenre [QUERY]`` and, with ``auto``, labelling on import."""

    def __init__(self) -> None:
        super().__init__()
        self.config.add({"model": None, "min_confidence": 0.5, "force": False, "auto": False, "label_config": None})
        # Typed, so that queries compare numbers (`beet ls raygenre_confidence:0.8..`) and unset fields print empty.
        self.item_types = {"raygenre_genre": types.STRING, "raygenre_confidence": types.NULL_FLOAT,
                           "raygenre_model": types.STRING}
        if self.config["auto"].get(bool):
            self.register_listener("import_task_files", self.imported)

    def commands(self) -> list[ui.Subcommand]:
        cmd = ui.Subcommand("raygenre", help="label genres with raygenre's model")
        cmd.parser.add_option("-f", "--force", action="store_true", default=None,
                              help="replace an existing genre (config: raygenre.force)")
        cmd.func = self.command
        return [cmd]

    def command(self, lib: Library, opts: Any, args: list[str]) -> None:
        """``beet raygenre [QUERY]``: label the items matching ``args``."""
        if opts.force is not None:
            self.config["force"].set(opts.force)
        items = list(lib.items(args))
        if not items:
            self._log.info("no items match")
            return
        self.label(items)

    def imported(self, session: Any, task: Any) -> None:
        """``import_task_files``: label the task's new items in one call (``auto: yes``)."""
        items = list(task.imported_items())
        if items:
            self.label(items)

    def label(self, items: Sequence[Item]) -> None:
        """Label ``items`` with one ``label_files`` call; store each item's row (flexible attributes, genre)."""
        from raygenre.label.parts import safe_str

        rows = self._label_files([os.fsdecode(item.path) for item in items])
        by_path = {row["path"]: row for row in rows}
        threshold = self.config["min_confidence"].as_number()
        force = self.config["force"].get(bool)
        labelled = 0
        for item in items:
            row = by_path.get(safe_str(os.path.abspath(os.fsdecode(item.path)))[0])
            if row is None or row["error"] is not None or row["top_genre"] is None:
                why = "no row came back" if row is None else row["error"] or "no genre"
                self._log.warning("{}: not labelled: {}", displayable_path(item.path), why)
                continue
            item["raygenre_genre"] = row["top_genre"]
            item["raygenre_confidence"] = float(row["confidence"])
            item["raygenre_model"] = row["model"]
            if row["confidence"] >= threshold and (force or not item.genres):
                item.genres = [row["top_genre"]]
            item.store()
            labelled += 1
            self._log.debug("{}: {} ({:.2f})", displayable_path(item.path), row["top_genre"], row["confidence"])
        self._log.info("labelled {} of {} items", labelled, len(items))

    def _label_files(self, paths: list[str]) -> list[dict[str, Any]]:
        """Rows of ``label_files`` for ``paths`` (dicts), in a Ray that is shut down again when this started it."""
        from raygenre.config import LabelConfig, load_config
        from raygenre.label.pipeline import label_files

        file = self.config["label_config"].get()
        cfg = load_config(LabelConfig, os.path.expanduser(file) if file else None)
        model = self.config["model"].get()
        try:
            with _own_ray():
                table = label_files(paths, cfg, model_dir=os.path.expanduser(model) if model else None)
        except (OSError, ValueError) as exc:  # no model, a bad config or cluster: one line, not a traceback
            raise ui.UserError(f"raygenre: {exc}") from None
        return table.to_pylist()


@contextlib.contextmanager
def _own_ray() -> Iterator[None]:
    """Shut down the Ray that the body started (a local one ends with it), leaving one already running alone."""
    import ray

    started = not ray.is_initialized()
    try:
        yield
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
