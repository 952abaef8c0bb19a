"""The feature table's contract, in one place: what ``raygenre featurize`` writes and every reader relies on.

Layout: ``OUT/features.json`` (the manifest, written last) names the committed attempt, and the table is
``OUT/<attempt>/segments/*.parquet`` (``table_path`` resolves it; see ``storage.open_output``). Folders of the
old layout (``OUT/segments`` beside a manifest without ``attempt``) still read.
Table: one row per segment with ``track_id`` (str), ``genre`` (str), ``label`` (int32, index into the manifest's
sorted ``genres``), ``segment`` (int32), ``split`` (train/val/test), ``mfcc`` (float32 tensor (frames, n_mfcc)).
Plain pyarrow reads ``mfcc`` as a flat list column whose field metadata holds the shape; the readers here
reshape it.

``open_table`` reads and checks ``features.json`` once and returns a ``FeatureTable`` that training, tuning and
evaluation pass along (one train run reads the manifest once). Pure: pyarrow and numpy, never Ray; the Ray Data
reader of a split lives with its user (``raygenre.training.evaluate.read_split``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raygenre import storage
from raygenre.config import ConfigError, FeatureParams

MANIFEST = "features.json"
TABLE = "segments"  # the Parquet dataset's folder inside the output; the manifest sits beside it
SPLITS = ("train", "val", "test")


class FeatureMismatchError(ValueError):
    """Features on disk were computed with parameters other than the ones required."""


@dataclass(frozen=True)
class FeatureTable:
    """A finished, checked feature table: its folder (path or URI), manifest and feature parameters."""

    dir: str
    manifest: dict[str, Any]  # features.json
    params: FeatureParams

    @property
    def frames(self) -> int:
        """MFCC frames per segment (130 at the defaults)."""
        return int(self.manifest["frames"])

    @property
    def genres(self) -> list[str]:
        return list(self.manifest["genres"])

    @property
    def synthetic(self) -> bool:
        return bool(self.manifest.get("synthetic", False))

    @property
    def path(self) -> str:
        """The Parquet dataset (pass it to pyarrow or ``ray.data.read_parquet``)."""
        return table_path(self.dir, self.manifest)

    def check_mfcc_shape(self, mfcc_type: pa.DataType) -> None:
        """Refuse a table whose stored ``mfcc`` tensor shape is not the manifest's (frames, n_mfcc)."""
        shape = tuple(getattr(mfcc_type, "shape", ()) or ())
        want = (self.frames, self.params.n_mfcc)
        if shape and shape != want:
            raise FeatureMismatchError(f"{self.dir}: the table's mfcc is {shape} but features.json says {want}; "
                                       f"the table is damaged or mixed: re-run `raygenre featurize --overwrite`")


def read_manifest(features_dir: str) -> dict[str, Any]:
    """Read ``features.json`` of a finished table; a clear error when the table is missing or unfinished."""
    path = storage.join(features_dir, MANIFEST)
    if not storage.exists(path):
        raise FileNotFoundError(
            f"{features_dir} is not a finished feature table (no {MANIFEST}). "
            f"Run `raygenre featurize DATASET --out {features_dir}` first."
        )
    return json.loads(storage.read_text(path))


def open_table(features_dir: str | FeatureTable) -> FeatureTable:
    """The checked ``FeatureTable`` of a finished feature folder (a ``FeatureTable`` is returned as it is).

    Clear errors when it is unfinished (``FileNotFoundError``: run featurize) or malformed
    (``FeatureMismatchError``).
    """
    if isinstance(features_dir, FeatureTable):
        return features_dir
    manifest = read_manifest(features_dir)
    missing = [k for k in ("features", "frames", "genres") if k not in manifest]
    if missing:
        raise FeatureMismatchError(f"{features_dir}/features.json lacks {missing}: not a feature table written by "
                                   f"this raygenre; re-run `raygenre featurize`")
    names = {f.name for f in dataclasses.fields(FeatureParams)}
    got = manifest["features"]
    if not isinstance(got, dict) or set(got) != names:
        raise FeatureMismatchError(f"{features_dir}/features.json has feature parameters {sorted(got)}, expected "
                                   f"{sorted(names)}; re-run `raygenre featurize`")
    try:
        params = FeatureParams.from_dict(got, f"{features_dir}/features.json: features")
    except ConfigError as exc:
        raise FeatureMismatchError(f"{exc}; re-run `raygenre featurize`") from None
    if int(manifest["frames"]) != params.frames:
        raise FeatureMismatchError(f"{features_dir}/features.json says frames={manifest['frames']} but its "
                                   f"parameters give {params.frames}; re-run `raygenre featurize`")
    if not manifest["genres"]:
        raise FeatureMismatchError(f"{features_dir}/features.json lists no genres")
    return FeatureTable(dir=str(features_dir), manifest=manifest, params=params)


def check_features(manifest: dict[str, Any], expected: FeatureParams, what: str = "this model") -> None:
    """Refuse features whose parameters differ from ``expected`` (e.g. a model trained on other MFCCs)."""
    have = manifest.get("features", {})
    want = dataclasses.asdict(expected)
    diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
    if diff:
        details = ", ".join(f"{k}: table has {a!r}, {what} needs {b!r}" for k, (a, b) in diff.items())
        raise FeatureMismatchError(f"feature parameters differ ({details}). Re-run `raygenre featurize` "
                                   f"with matching options, or use a model trained on these features.")


def table_path(features_dir: str, manifest: dict[str, Any] | None = None) -> str:
    """The Parquet dataset of a finished feature folder (pass it to ``ray.data.read_parquet`` or pyarrow):
    ``<attempt>/segments`` as its manifest says (read here unless given), ``segments`` for the old layout."""
    if manifest is None:
        manifest = read_manifest(features_dir)
    return storage.committed_path(features_dir, manifest, TABLE)


def _mfcc_array(col: pa.ChunkedArray | pa.Array, rows: int, shape: tuple[int, int]) -> np.ndarray:
    """The ``mfcc`` column as float32 (rows, frames, n_mfcc), whether pyarrow sees a tensor or a list type."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    flat = col.storage.flatten() if isinstance(col.type, pa.ExtensionType) else col.flatten()
    return flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(rows, *shape)


def read_mfcc_table(features_dir: str | FeatureTable) -> tuple[pa.Table, np.ndarray]:
    """Read the table with plain pyarrow (no Ray): (table without ``mfcc``, mfcc float32 (rows, frames, n_mfcc))."""
    ft = features_dir if isinstance(features_dir, FeatureTable) else None
    manifest = ft.manifest if ft else read_manifest(str(features_dir))
    fs, inner = storage.resolve(table_path(str(ft.dir if ft else features_dir), manifest))
    table = pq.read_table(inner, filesystem=fs)
    shape = (manifest["frames"], manifest["features"]["n_mfcc"])
    return table.drop_columns(["mfcc"]), _mfcc_array(table.column("mfcc"), len(table), shape)


def read_split_arrays(features_dir: str | FeatureTable, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split in memory, read with plain pyarrow (no Ray): mfcc float32 (N, frames, n_mfcc), label int64 (N,).

    Rows come sorted by (genre, track_id, segment), whatever order featurize's parallel writers left them in:
    training permutes row indices with a seeded generator, so the same table must give the same rows at the same
    indices for a seed to mean one run (before, two featurizations of one dataset trained differently). Training
    holds its train and val splits this way: a GTZAN-size table is ~70 MB, and a fresh uniform permutation of the
    train split every epoch needs random access to its rows.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    ft = open_table(features_dir)
    fs, inner = storage.resolve(ft.path)
    order = [("genre", "ascending"), ("track_id", "ascending"), ("segment", "ascending")]
    table = pq.read_table(inner, filesystem=fs, columns=["genre", "track_id", "segment", "mfcc", "label"],
                          filters=[("split", "==", split)]).sort_by(order)
    col = table.column("mfcc").combine_chunks()
    ft.check_mfcc_shape(col.type)
    x = _mfcc_array(col, len(table), (ft.frames, ft.params.n_mfcc))
    return x, table.column("label").to_numpy().astype(np.int64)
