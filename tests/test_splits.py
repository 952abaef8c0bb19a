"""The memory-mapped split files (raygenre.data.splits): the same rows as the in-memory reader, built once per
node (one builder at a time), never half-written, and old entries evicted without touching anything else."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import tree_of, write_feature_table

from raygenre import storage
from raygenre.config import TrainConfig, load_config
from raygenre.data import splits
from raygenre.data.table import open_table, read_split_arrays


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> str:
    out = tmp_path_factory.mktemp("splits") / "t"
    write_feature_table(out, tracks={"train": 9, "val": 3, "test": 2}, blocks=5, seed=3)  # 5 Parquet files
    return str(out)


def test_split_files_hold_exactly_the_sorted_rows_and_statistics(table: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(splits, "BATCH_ROWS", 7)  # many batches, boundaries inside files and splits
    cache = splits.open_splits(open_table(table), str(tmp_path / "cache"))
    arrays = cache.arrays()
    for split in ("train", "val"):
        x, y = read_split_arrays(table, split)
        mx, my = arrays[split]
        assert isinstance(mx, np.memmap) and not mx.flags.writeable
        assert mx.dtype == np.float32 and my.dtype == np.int64
        np.testing.assert_array_equal(mx, x)  # same rows at the same indices: a seed means one run either way
        np.testing.assert_array_equal(my, y)
        assert cache.counts[split] == len(y)
    mean, std = splits.load_stats(read_split_arrays(table, "train")[0])
    assert cache.mean == [float(v) for v in mean] and cache.std == [float(v) for v in std]
    assert sorted(os.listdir(cache.dir)) == ["meta.json", "train.x.npy", "train.y.npy", "val.x.npy", "val.y.npy"]


def test_built_once_per_node_by_one_builder(table: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[str] = []
    real = splits.build

    def counting(t, folder):  # noqa: ANN001, ANN202
        builds.append(folder)
        real(t, folder)

    monkeypatch.setattr(splits, "build", counting)
    root = str(tmp_path / "cache")
    got: list[splits.SplitCache] = []
    threads = [threading.Thread(target=lambda: got.append(splits.open_splits(open_table(table), root)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len(got) == 3 and len({c.key for c in got}) == 1  # the others waited, then read
    before = tree_of(Path(got[0].dir))
    again = splits.open_splits(open_table(table), root)
    assert len(builds) == 1 and tree_of(Path(again.dir)) == before  # a second run only maps them


def test_a_failed_build_leaves_nothing_half_written(table: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = splits._mfcc_array

    def failing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(splits, "BATCH_ROWS", 7)
    monkeypatch.setattr(splits, "_mfcc_array", failing)
    root = tmp_path / "cache"
    with pytest.raises(OSError, match="disk full"):
        splits.open_splits(open_table(table), str(root))
    assert sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) == []
    monkeypatch.setattr(splits, "_mfcc_array", real)
    assert splits.open_splits(open_table(table), str(root)).counts["train"] > 0  # the next run builds it


def test_eviction_keeps_the_newest_and_never_touches_foreign_entries_or_links(table: str, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "keep.txt").write_text("user data")
    (root / "notes").mkdir()
    (root / "notes" / "mine.txt").write_text("not raygenre's")
    os.symlink(victim, root / "linked")
    (root / "linked-meta").mkdir()
    os.symlink(victim / "sub" / "keep.txt", root / "linked-meta" / "meta.json")  # not raygenre's format
    foreign = tree_of(root / "notes"), tree_of(victim)
    for i in range(splits.KEEP + 2):  # entries of older tables, each with a finished meta.json
        old = root / f"old{i}"
        old.mkdir()
        (old / "meta.json").write_text(f'{{"format": "{splits.FORMAT}"}}')
        os.utime(old, (1_000_000 + i, 1_000_000 + i))
    cache = splits.open_splits(open_table(table), str(root))
    kept = sorted(p.name for p in root.iterdir() if p.name.startswith("old"))
    assert kept == [f"old{i}" for i in range(3, splits.KEEP + 2)]  # the newest KEEP - 1 old ones + this one
    # (and the evicted entries' lock files went with them)
    assert Path(cache.dir).is_dir()
    assert (tree_of(root / "notes"), tree_of(victim)) == foreign and (root / "linked").is_symlink()
    assert (root / "linked-meta" / "meta.json").is_symlink()


def test_a_linked_cache_root_is_refused(table: str, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, tmp_path / "cache")
    with pytest.raises(storage.UnsafePathError, match="symlink"):
        splits.open_splits(open_table(table), str(tmp_path / "cache"))
    assert list(elsewhere.iterdir()) == []


def test_what_travels_to_trials_holds_no_data(table: str, tmp_path: Path) -> None:
    """One copy for a whole search: a trial receives (tune.with_parameters pickles it into the object store)
    the config, the statistics and the split files' names, a few KB whatever the table's size."""
    import ray

    from raygenre.training.train import prepare

    prepared = prepare(table, load_config(TrainConfig, overrides={"workers": 1}), cache_root=str(tmp_path / "c"))
    x = prepared.arrays["train"][0]
    assert x.nbytes > 500_000 and not x.flags.writeable
    sent = ray.cloudpickle.dumps(prepared)
    assert len(sent) < 50_000, len(sent)
    assert prepared.loop_config["splits"] == prepared.splits
