"""The loop's two ways to feed a model (issue #20): host gathers from memory maps, or a split held whole as a
tensor and gathered there (what ``on_device`` gives a GPU). Both must give the same batches and the same run.

CI has no GPU: the resident path is driven here with CPU tensors, which is the code a CUDA device runs (the
gather, the per-epoch row order, the host-side count); only the copy to the device is not exercised.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from raygenre.training.train import _batches, _fresh_state, fit_loop, new_model, on_device


def _split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n).astype(np.int64)
    x = (rng.normal(0, 1, (n, 130, 13)) + y[:, None, None]).astype(np.float32)  # learnable: the mean is the genre
    return x, y


def test_cpu_keeps_the_host_arrays() -> None:
    x, y = _split(8, 0)
    dx, dy = on_device(x, y, torch.device("cpu"))
    assert dx is x and dy is y  # the single-process twin and one Ray worker read exactly what they read before


def test_resident_batches_equal_host_batches() -> None:
    x, y = _split(100, 1)
    rows = np.random.default_rng(2).permutation(100)[:77]  # a ragged last batch
    mean, std = torch.full((13,), 0.5), torch.full((13,), 2.0)
    host = list(_batches(x, y, rows, 16, torch.device("cpu"), mean, std))
    resident = list(_batches(torch.from_numpy(x), torch.from_numpy(y), rows, 16, torch.device("cpu"), mean, std))
    assert len(host) == len(resident) == 5
    for (hx, hy), (rx, ry) in zip(host, resident, strict=True):
        assert torch.equal(hx, rx) and torch.equal(hy, ry)
    assert all(b is None for _, b in _batches(torch.from_numpy(x), None, rows, 16, torch.device("cpu"), mean, std))


def _config() -> dict[str, Any]:
    return {"model": "cnn", "frames": 130, "n_mfcc": 13, "n_genres": 4, "hidden": 16, "dropout": 0.3,
            "bn_momentum": 0.1, "bn_recompute": True, "seed": 0, "lr": 1e-3, "weight_decay": 0.0, "batch_size": 32,
            "epochs": 3, "min_epochs": 0, "patience": 10, "mean": [0.0] * 13, "std": [1.0] * 13,
            "fault_kill_epoch": None, "fault_marker": None}


def _run(data: dict[str, tuple[Any, Any]]) -> list[dict[str, Any]]:
    config = _config()
    model = new_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    state = fit_loop(model, optimizer, _fresh_state(), data, config, torch.device("cpu"), lambda _m: None)
    return [{k: v for k, v in row.items() if k != "seconds"} for row in state["history"]]


def test_a_resident_split_trains_exactly_like_the_maps() -> None:
    train, val = _split(300, 3), _split(90, 4)
    history = _run({"train": train, "val": val})
    resident = _run({"train": tuple(map(torch.from_numpy, train)), "val": tuple(map(torch.from_numpy, val))})
    assert history == resident
    assert history[-1]["val_acc"] > 0.5  # it learned (4 genres: chance is 0.25), so the equality means something


def test_the_gpu_batch_rule_raises_small_shares_and_scales_lr_by_the_square_root() -> None:
    from raygenre.config import TrainConfig, load_config
    from raygenre.training.train import gpu_batch

    base = load_config(TrainConfig, overrides={"workers": 4, "batch_size": 32, "lr": 1e-3, "min_gpu_batch": 256})
    assert gpu_batch(base) == base  # CPU runs keep their batch and lr
    gpu = gpu_batch(dataclasses.replace(base, gpu=True))
    assert (gpu.batch_size, gpu.lr) == (1024, pytest.approx(1e-3 * 32 ** 0.5))  # 256 per GPU; sqrt(1024 / 32)
    big = dataclasses.replace(base, gpu=True, batch_size=2048)
    assert gpu_batch(big) == big  # each GPU already gets 512
    assert gpu_batch(dataclasses.replace(base, gpu=True, lr=0.5)).lr == 1.0  # kept inside lr's range
