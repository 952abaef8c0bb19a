"""``raygenre.data.table``: the feature table contract, read with plain pyarrow (no Ray in these tests)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raygenre.config import ConfigError, FeatureParams, FeaturizeConfig, load_config
from raygenre.data.table import (
    FeatureMismatchError,
    FeatureTable,
    check_features,
    open_table,
    read_manifest,
    read_mfcc_table,
    read_split_arrays,
    table_path,
)

PARAMS = load_config(FeaturizeConfig).features  # 130 frames x 13 MFCC


def write_table(root: Path, splits: tuple[str, ...] = ("train", "train", "val", "test"), attempt: bool = True,
                **manifest_over: object) -> np.ndarray:
    """A tiny table as featurize lays it out (pyarrow only; ``mfcc`` as a flat list column); returns its mfcc."""
    rng = np.random.default_rng(0)
    mfcc = rng.normal(size=(len(splits), PARAMS.frames, PARAMS.n_mfcc)).astype(np.float32)
    sub = root / "attempts" / "a1" / "segments" if attempt else root / "segments"
    sub.mkdir(parents=True)
    pq.write_table(pa.table({
        "track_id": [f"t{i}" for i in range(len(splits))], "genre": ["blues", "jazz"] * (len(splits) // 2),
        "label": pa.array([0, 1] * (len(splits) // 2), pa.int32()), "segment": pa.array([0] * len(splits), pa.int32()),
        "split": list(splits), "mfcc": [m.reshape(-1).tolist() for m in mfcc],
    }), sub / "part-0.parquet")
    manifest = {"features": dataclasses.asdict(PARAMS), "frames": PARAMS.frames, "genres": ["blues", "jazz"],
                "synthetic": True, **({"attempt": "attempts/a1"} if attempt else {}), **manifest_over}
    (root / "features.json").write_text(json.dumps(manifest))
    return mfcc


def test_open_table_reads_the_manifest_once_and_exposes_it(tmp_path: Path) -> None:
    write_table(tmp_path)
    table = open_table(str(tmp_path))
    assert isinstance(table, FeatureTable) and open_table(table) is table  # an open table is passed along
    assert table.params == PARAMS and table.frames == 130 and table.genres == ["blues", "jazz"] and table.synthetic
    assert table.path == table_path(str(tmp_path)) == str(tmp_path / "attempts" / "a1" / "segments")
    assert read_manifest(str(tmp_path)) == table.manifest


def test_split_arrays_dtype_and_shape(tmp_path: Path) -> None:
    mfcc = write_table(tmp_path)
    x, y = read_split_arrays(str(tmp_path), "train")
    assert x.dtype == np.float32 and x.shape == (2, 130, 13) and y.dtype == np.int64
    np.testing.assert_array_equal(x, mfcc[:2])
    assert read_split_arrays(open_table(str(tmp_path)), "test")[0].shape == (1, 130, 13)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        read_split_arrays(str(tmp_path), "dev")
    rows, everything = read_mfcc_table(str(tmp_path))
    assert "mfcc" not in rows.column_names and everything.shape == (4, 130, 13)


def test_split_arrays_do_not_depend_on_the_order_rows_were_written(tmp_path: Path) -> None:
    """Ray Data writes rows in whatever order its tasks finish; a seeded run sees one order (genre, track, segment)."""
    mfcc = write_table(tmp_path / "a", splits=("train",) * 4)  # t0 blues, t1 jazz, t2 blues, t3 jazz
    x, y = read_split_arrays(str(tmp_path / "a"), "train")
    np.testing.assert_array_equal(x, mfcc[[0, 2, 1, 3]])
    assert y.tolist() == [0, 0, 1, 1]
    part = tmp_path / "a" / "attempts" / "a1" / "segments" / "part-0.parquet"
    reversed_rows = pq.read_table(part).take([3, 2, 1, 0])
    (tmp_path / "b" / "attempts" / "a1" / "segments").mkdir(parents=True)
    pq.write_table(reversed_rows, tmp_path / "b" / "attempts" / "a1" / "segments" / "part-0.parquet")
    (tmp_path / "b" / "features.json").write_text((tmp_path / "a" / "features.json").read_text())
    x2, y2 = read_split_arrays(str(tmp_path / "b"), "train")
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)


def test_old_layout_still_reads(tmp_path: Path) -> None:
    write_table(tmp_path, attempt=False)
    assert table_path(str(tmp_path)) == str(tmp_path / "segments")
    assert read_split_arrays(str(tmp_path), "val")[0].shape == (1, 130, 13)


@pytest.mark.parametrize(("over", "words"), [
    ({"genres": []}, "lists no genres"),
    ({"frames": 129}, "says frames=129"),
    ({"features": {"n_mfcc": 13}}, "feature parameters"),
    ({"features": {**dataclasses.asdict(PARAMS), "n_mfcc": "13"}}, "expected int"),
])
def test_malformed_manifests_are_refused(tmp_path: Path, over: dict[str, object], words: str) -> None:
    write_table(tmp_path, **over)
    with pytest.raises(FeatureMismatchError, match=words):
        open_table(str(tmp_path))


def test_unfinished_table_says_run_featurize(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a finished feature table.*raygenre featurize"):
        open_table(str(tmp_path))


def test_check_features_names_every_difference() -> None:
    manifest = {"features": dataclasses.asdict(PARAMS)}
    check_features(manifest, PARAMS)
    with pytest.raises(FeatureMismatchError, match="n_mfcc: table has 13, the model needs 20"):
        check_features(manifest, dataclasses.replace(PARAMS, n_mfcc=20), what="the model")


def test_feature_params_from_a_manifest_dict() -> None:
    stored = {**dataclasses.asdict(PARAMS), "frames": 130}  # model.json keeps frames beside them
    assert FeatureParams.from_dict(stored) == PARAMS
    assert FeatureParams.from_dict({**stored, "segment_seconds": 3}).segment_seconds == 3.0  # int -> float
    with pytest.raises(ConfigError, match=r"missing key\(s\) \['n_mels'\]"):
        FeatureParams.from_dict({k: v for k, v in stored.items() if k != "n_mels"})
