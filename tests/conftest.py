"""Shared fixtures: an isolated environment and ONE real local Ray runtime (num_cpus=2) for the session.

Nothing lands in the real home: HOME, RAY_TMPDIR and RAYGENRE_HOME point into a temporary folder before
Ray starts. Tests that need their own Ray cluster (job submit, multi-node) start and stop it by pid.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="raygenre-tests-"))
# Set at import time, before any test module imports ray, so every Ray process inherits them.
os.environ["HOME"] = str(_SESSION_TMP / "home")
os.environ["RAY_TMPDIR"] = str(_SESSION_TMP / "ray")
os.environ["RAYGENRE_HOME"] = str(_SESSION_TMP / "raygenre-home")
os.environ.pop("RAY_ADDRESS", None)
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
for var in ("HOME", "RAY_TMPDIR", "RAYGENRE_HOME"):
    Path(os.environ[var]).mkdir(parents=True, exist_ok=True)


def shared_dir() -> Path:
    """``../shared`` beside the repo, or ``$RAYGENRE_SHARED_DIR``."""
    return Path(os.environ.get("RAYGENRE_SHARED_DIR", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A real local Ray runtime with 2 CPUs, shared by the tests that use the default cluster."""
    import ray

    from raygenre.runtime import ensure_ray

    if ray.is_initialized():
        ray.shutdown()
    ensure_ray(num_cpus=2)
    yield
    ray.shutdown()


def write_tone_track(path: Path, seconds: float, sr: int = 22050, seed: int = 0, channels: int = 1,
                     subtype: str = "PCM_16", fmt: str | None = None) -> np.ndarray:
    """Write a real-looking test signal (harmonics + noise + amplitude envelope); return it (frames, channels)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 110 * 2 ** (rng.integers(0, 24) / 12)
    y = sum(rng.uniform(0.1, 0.5) / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) for k in range(1, 6))
    y = y * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t)) + 0.02 * rng.standard_normal(t.size)
    y = (0.5 * y / np.max(np.abs(y))).astype(np.float32)
    data = np.stack([y] * channels, axis=1) if channels > 1 else y[:, None]
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr, subtype=subtype, format=fmt)
    return data
