"""Shared fixtures: an isolated environment and ONE real local Ray runtime (num_cpus=2) for the session.

Nothing lands in the real home: HOME, RAY_TMPDIR and RAYGENRE_HOME point into a temporary folder before
Ray starts. Tests that need their own Ray cluster (job submit, multi-node) start and stop it by pid.
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
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
os.environ.setdefault("RAYGENRE_PROGRESS", "0")  # no redrawn progress bars in test logs
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
for var in ("HOME", "RAY_TMPDIR", "RAYGENRE_HOME"):
    Path(os.environ[var]).mkdir(parents=True, exist_ok=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# S3 for the `s3` fixture: a moto server on loopback. The variables are set here, before Ray starts, because
# Ray workers (which write Parquet and parts) read them in their own processes; they point every s3:// URI at
# this port, where nothing listens unless a test uses `s3`, so no test can reach a real bucket.
S3_PORT = _free_port()
os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{S3_PORT}", AWS_ACCESS_KEY_ID="raygenre-test",
                  AWS_SECRET_ACCESS_KEY="raygenre-test", AWS_DEFAULT_REGION="us-east-1",
                  AWS_EC2_METADATA_DISABLED="true")
for _var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
    os.environ.pop(_var, None)
S3_BUCKET = "raygenre-test"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3 endpoint (moto's server, 127.0.0.1 only) with bucket ``S3_BUCKET``; yields its URL."""
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    boto3.client("s3").create_bucket(Bucket=S3_BUCKET)
    yield os.environ["AWS_ENDPOINT_URL"]
    server.stop()


@pytest.fixture
def s3(s3_server: str) -> str:
    """A fresh ``s3://`` prefix for one test in the moto bucket."""
    return f"s3://{S3_BUCKET}/{uuid.uuid4().hex[:10]}"


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


def tree_of(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root`` (links not followed): file bytes, ``"-> target"`` for a link, ``"dir"`` for a
    folder. The "victim byte-for-byte unchanged" tests compare it before and after."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            out[rel] = (f"-> {os.readlink(p)}" if p.is_symlink() else "dir" if p.is_dir() else p.read_bytes())
    return out


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


def write_nan_track(path: Path, seconds: float, sr: int = 22050) -> None:
    """A float WAV that decodes but holds NaN samples (every 0.5 s), as damaged float data does."""
    y = (0.1 * np.random.default_rng(0).standard_normal(int(seconds * sr))).astype(np.float32)
    y[:: sr // 2] = np.nan
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, y, sr, subtype="FLOAT")


def write_lying_header(path: Path) -> None:
    """A tiny WAV whose header claims 1 Hz: 100 samples that would read as a 100-second track."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.full(100, 0.1, dtype=np.float32), 1, subtype="PCM_16", format="WAV")


def write_feature_table(out: Path, genres: tuple[str, ...] = ("blues", "classical", "jazz", "metal"),
                        tracks: dict[str, int] | None = None, segments: int = 3, seconds: float = 3.0,
                        n_mfcc: int = 13, seed: int = 0, synthetic: bool = True, blocks: int = 4) -> dict:
    """Write a small feature table exactly as ``raygenre featurize`` lays it out (needs Ray: ``ray_local``).

    ``OUT/segments/*.parquet`` (track_id, genre, label int32, segment int32, split, mfcc float32 tensor
    (frames, n_mfcc)) + ``OUT/features.json`` written last. MFCCs are random but genre-dependent (raw-MFCC-like
    scale: a large shared offset, a per-genre pattern, per-frame noise), so a model can learn them.
    ``tracks``: tracks per genre and split (default train 4, val 2, test 2). Returns the manifest.
    """
    import dataclasses
    import json

    import ray

    from raygenre.config import FeatureParams

    tracks = tracks or {"train": 4, "val": 2, "test": 2}
    params = FeatureParams(sample_rate=22050, n_mfcc=n_mfcc, n_fft=2048, hop_length=512, n_mels=128,
                           segment_seconds=seconds)
    rng = np.random.default_rng(seed)
    offset = np.concatenate([[-250.0, 80.0], rng.normal(0, 20, n_mfcc - 2)]).astype(np.float32)
    pattern = rng.normal(0, 12, (len(genres), n_mfcc)).astype(np.float32)
    t = np.arange(params.frames)[:, None]
    rows, counts = [], {"tracks": {}, "segments": {}}
    for split, per_genre in tracks.items():
        for label, genre in enumerate(genres):
            counts["tracks"].setdefault(split, {})[genre] = per_genre
            counts["segments"].setdefault(split, {})[genre] = per_genre * segments
            for k in range(per_genre):
                track_id = f"genres_original/{genre}/{genre}.{split}{k:03d}"
                for s in range(segments):
                    wobble = 5 * np.sin(2 * np.pi * (label + 1) * t / params.frames + s)
                    mfcc = offset + pattern[label] + wobble + rng.normal(0, 15, (params.frames, n_mfcc))
                    rows.append({"track_id": track_id, "genre": genre, "label": np.int32(label),
                                 "segment": np.int32(s), "split": split, "mfcc": mfcc.astype(np.float32)})
    out = Path(out)
    ray.data.from_items(rows, override_num_blocks=blocks).write_parquet(str(out / "segments"))
    manifest = {
        "raygenre_version": "test", "created": "2026-01-01T00:00:00", "dataset": "synthetic-test-table",
        "synthetic": synthetic, "features": dataclasses.asdict(params), "segments": segments,
        "split": {"method": "stratified"}, "frames": params.frames, "genres": list(genres),
        "columns": ["track_id", "genre", "label", "segment", "split", "mfcc"],
        "counts": {**counts, "tracks_total": len({r["track_id"] for r in rows}), "segments_total": len(rows),
                   "dropped_segments": 0, "excluded_tracks": 0, "rejected_tracks": 0},
        "rejects": [], "config": {}, "seconds": 0.0,
    }
    (out / "features.json").write_text(json.dumps(manifest, indent=2))
    return manifest
