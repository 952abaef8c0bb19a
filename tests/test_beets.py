"""The beets plugin (``beetsplug/raygenre.py``) with real beets: a temporary library, ``beet import``,
``beet raygenre``, ``beet write``, the tags read back with mutagen; and ``auto: yes`` labelling on import.

Every ``beet`` runs as a subprocess of this repository's code (``PYTHONPATH``), with ``HOME``, ``BEETSDIR``,
``RAYGENRE_HOME`` and ``RAY_TMPDIR`` in the test's folder; the command that labels starts its own local Ray, which
must be gone when the command ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import REPO, write_tone_track

pytest.importorskip("beets", reason="beets is not installed (pip install 'raygenre[test]'): the plugin needs it")
mutagen = pytest.importorskip("mutagen", reason="mutagen (a beets dependency) reads the tags back")

from test_label import random_model  # noqa: E402 - torch: after the skip

TONES = {"a.wav": "WAV", "b.flac": "FLAC"}  # soundfile writes these; c.mp3 is encoded by ffmpeg from a WAV
SECONDS = 7.0  # two 3 s segments


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A folder with a short path for RAY_TMPDIR: Ray's socket paths must fit AF_UNIX's 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="rgb-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _library(tmp: Path, ray_tmp: Path, **raygenre: object) -> tuple[Path, Path, dict[str, str]]:
    """A beets config in ``tmp`` (library, directory, the plugin with a tiny model; nothing fetched, copied or
    written on import), a folder of short tracks, and the environment for ``beet``. Returns (config, music, env)."""
    music = tmp / "music"
    for i, (name, fmt) in enumerate(TONES.items()):
        write_tone_track(music / name, SECONDS, seed=i, fmt=fmt)
    write_tone_track(tmp / "src.wav", SECONDS, seed=7)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(tmp / "src.wav"), str(music / "c.mp3")],
                   check=True, timeout=60)
    write_tone_track(music / "short.wav", 1.0, seed=3)  # shorter than a segment: an error row, not a crash
    label_cfg = tmp / "label.yaml"
    label_cfg.write_text("segments_per_track: 2\n")
    config = tmp / "beets.yaml"
    config.write_text(yaml.safe_dump({
        "directory": str(tmp / "beets-music"), "library": str(tmp / "library.db"), "plugins": "raygenre",
        "import": {"copy": False, "write": False, "autotag": False},
        "raygenre": {"model": random_model(tmp / "model"), "label_config": str(label_cfg), **raygenre},
    }))
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               HOME=str(tmp / "home"), BEETSDIR=str(tmp / "beetsdir"), RAYGENRE_HOME=str(tmp / "raygenre-home"),
               RAY_TMPDIR=str(ray_tmp), RAYGENRE_PROGRESS="0")
    for var in ("HOME", "BEETSDIR", "RAYGENRE_HOME", "RAY_TMPDIR"):
        Path(env[var]).mkdir(parents=True, exist_ok=True)
    return config, music, env


def _beet(config: Path, env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``beet -c CONFIG ARGS`` with this repository's plugin; fails the test on a non-zero exit."""
    proc = subprocess.run([sys.executable, "-m", "beets", "-c", str(config), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"beet {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _listing(config: Path, env: dict[str, str]) -> dict[str, list[str]]:
    """{file name: [raygenre_genre, genres]} from ``beet ls``, "" for an unset field (beets prints an unset flexible
    attribute as its own ``$name``)."""
    out = _beet(config, env, "ls", "-f", "$path|$raygenre_genre|$genres").stdout
    rows = (line.split("|") for line in out.splitlines() if line.strip())
    return {Path(p).name: [g.replace("$raygenre_genre", ""), gs] for p, g, gs in rows}


def _ray_left(ray_tmp: Path) -> list[str]:
    """Processes still running from the Ray the ``beet`` subprocess started (theirs name its temp folder)."""
    left = []
    for entry in Path("/proc").iterdir():  # Linux, as the tests are; no psutil in the venv
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # not a process, or it ended while we looked
            continue
        if entry.name.isdigit() and str(ray_tmp) in cmd:
            left.append(f"{entry.name}: {cmd[:120]}")
    return left


def _tag_genre(path: Path) -> list[str]:
    """The genre tag of ``path`` as mutagen reads it: ID3 TCON (MP3, WAV: mutagen's easy mode skips WAV's ID3 chunk)
    or a Vorbis comment (FLAC)."""
    tags = mutagen.File(path).tags
    if tags is None:
        return []
    if hasattr(tags, "getall"):  # ID3
        return [str(t) for frame in tags.getall("TCON") for t in frame.text]
    return list(tags.get("genre") or [])


def test_beet_raygenre_labels_stores_and_writes(tmp_path: Path, short_tmp: Path) -> None:
    config, music, env = _library(tmp_path, short_tmp, min_confidence=0.0)
    _beet(config, env, "import", "-A", "-C", "-q", str(music))
    before = _listing(config, env)
    assert sorted(before) == ["a.wav", "b.flac", "c.mp3", "short.wav"]
    assert all(v == ["", ""] for v in before.values()), before  # nothing labelled yet: the check below can fail
    for name in ("a.wav", "b.flac", "c.mp3"):
        assert _tag_genre(music / name) == []

    proc = _beet(config, env, "raygenre")
    assert "short.wav: not labelled: too short" in proc.stderr + proc.stdout
    assert not _ray_left(short_tmp), _ray_left(short_tmp)  # the command's own Ray ended with it

    genres = set(yaml.safe_load((tmp_path / "model" / "model.json").read_text())["genres"])
    after = _listing(config, env)
    for name in ("a.wav", "b.flac", "c.mp3"):
        guess, stored = after[name]
        assert guess in genres, (name, after)
        assert stored == guess, (name, after)  # min_confidence 0: every guess is confident
    assert after["short.wav"] == ["", ""]  # its error was reported, nothing stored

    _beet(config, env, "write")
    for name in ("a.wav", "b.flac", "c.mp3"):
        assert _tag_genre(music / name) == [after[name][0]], name


def test_existing_genre_kept_unless_force_and_threshold(tmp_path: Path, short_tmp: Path) -> None:
    config, music, env = _library(tmp_path, short_tmp, min_confidence=0.0)
    tagged = mutagen.File(music / "b.flac", easy=True)
    tagged["genre"] = "Polka"
    tagged.save()
    _beet(config, env, "import", "-A", "-C", "-q", str(music))
    _beet(config, env, "raygenre", "path::b\\.flac$")
    after = _listing(config, env)
    assert after["b.flac"][1] == "Polka" and after["b.flac"][0] not in ("", "Polka"), after  # guess kept aside
    assert after["a.wav"] == ["", ""], after  # the query matched b.flac only
    _beet(config, env, "raygenre", "--force", "path::b\\.flac$")
    after = _listing(config, env)
    assert after["b.flac"][1] == after["b.flac"][0], after


def test_min_confidence_keeps_genre_empty(tmp_path: Path, short_tmp: Path) -> None:
    config, music, env = _library(tmp_path, short_tmp, min_confidence=1.0)  # softmax of an untrained model: never 1.0
    _beet(config, env, "import", "-A", "-C", "-q", str(music))
    _beet(config, env, "raygenre", "path::a\\.wav$")
    guess, stored = _listing(config, env)["a.wav"]
    assert guess and stored == "", (guess, stored)
    conf = _beet(config, env, "ls", "-f", "$raygenre_confidence", "path::a\\.wav$").stdout.strip()
    assert 0.0 < float(conf) < 1.0


def test_auto_labels_on_import(tmp_path: Path, short_tmp: Path) -> None:
    config, music, env = _library(tmp_path, short_tmp, min_confidence=0.0, auto=True)
    proc = _beet(config, env, "import", "-A", "-C", "-q", str(music))
    assert not _ray_left(short_tmp), _ray_left(short_tmp)
    after = _listing(config, env)
    for name in ("a.wav", "b.flac", "c.mp3"):
        assert after[name][0] and after[name][1] == after[name][0], (name, after, proc.stderr)
    assert after["short.wav"] == ["", ""]


def test_no_model_is_one_line_not_a_traceback(tmp_path: Path, short_tmp: Path) -> None:
    config, music, env = _library(tmp_path, short_tmp)
    config.write_text(config.read_text().replace(str(tmp_path / "model"), str(tmp_path / "no-model")))
    _beet(config, env, "import", "-A", "-C", "-q", str(music))
    proc = subprocess.run([sys.executable, "-m", "beets", "-c", str(config), "raygenre"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "raygenre: no model at" in proc.stderr, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert _listing(config, env)["a.wav"] == ["", ""]
