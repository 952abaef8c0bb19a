"""The GTZAN dataset layouts: genre names, track discovery, and track-level train/val/test splits.

Supported layouts, relative to a dataset root:

* Kaggle copy:  ``genres_original/<genre>/<genre>.000NN.wav`` (often under ``Data/``)
* original:     ``genres/<genre>/<genre>.000NN.au``
* plain tree:   ``<genre>/<any audio file>`` (one folder per genre)

Labels are the index of the genre in the *sorted* genre names, never filesystem order.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from raygenre.config import SplitConfig

GENRES: tuple[str, ...] = (
    "blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock",
)  # fmt: skip
AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".au", ".flac", ".mp3", ".ogg", ".opus", ".aiff", ".aif", ".m4a")
SPLITS: tuple[str, ...] = ("train", "val", "test")
LIST_FILES: dict[str, str] = {
    "train": "train_filtered.txt",
    "val": "valid_filtered.txt",
    "test": "test_filtered.txt",
}


class DatasetError(ValueError):
    """The dataset folder has no layout we recognise, or no usable tracks."""


@dataclass(frozen=True)
class Track:
    """One audio file of a genre dataset."""

    path: str  # absolute path
    track_id: str  # path relative to the dataset root, POSIX separators, no extension
    genre: str


def _require_local(root: Path | str) -> None:
    """Decoders seek in files, so audio is read from disk (or a mount), never streamed from a bucket."""
    if "://" in str(root):
        raise DatasetError(f"{root}: the dataset must be a local folder or a shared mount (on a cluster, one every "
                           f"node sees at the same path), not a URI. Copy or mount it, e.g. with s3fs or a PVC.")


def find_genre_root(root: Path | str) -> Path:
    """Return the folder whose sub-folders are the genres (``genres_original``, ``genres``, or ``root``)."""
    _require_local(root)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder. Pass the dataset root (the folder holding "
                           f"genres_original/, genres/, or one folder per genre).")
    for candidate in (root / "genres_original", root / "Data" / "genres_original", root / "genres"):
        if candidate.is_dir():
            return candidate
    return root


def discover(root: Path | str) -> tuple[list[Track], list[str]]:
    """Find every audio file of a genre dataset; return (tracks sorted by track_id, sorted genre names).

    Files with unknown extensions are ignored; hidden files and folders are skipped. Raises
    ``DatasetError`` when no genre folder with audio is found.
    """
    _require_local(root)
    root = Path(root).resolve()
    genre_root = find_genre_root(root)
    tracks: list[Track] = []
    for genre_dir in sorted(p for p in genre_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(genre_dir.rglob("*")):
            rel_parts = f.relative_to(genre_dir).parts
            if any(part.startswith(".") for part in rel_parts):
                continue
            if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS:
                track_id = f.relative_to(root).with_suffix("").as_posix()
                tracks.append(Track(path=str(f), track_id=track_id, genre=genre_dir.name))
    if not tracks:
        raise DatasetError(
            f"No audio files found under {genre_root}. Expected genres_original/<genre>/*.wav, "
            f"genres/<genre>/*.au, or <genre>/<files> (extensions: {', '.join(AUDIO_EXTENSIONS)})."
        )
    genres = sorted({t.genre for t in tracks})
    return sorted(tracks, key=lambda t: t.track_id), genres


def _list_key(track: Track) -> str:
    """``<genre>/<stem>``: how the public split lists name a track, whatever the extension or root."""
    return f"{track.genre}/{Path(track.track_id).name}"


def assign_splits(tracks: Iterable[Track], cfg: SplitConfig) -> tuple[dict[str, str], int]:
    """Assign every track (never a segment) to a split; return ({track_id: split}, excluded count).

    ``stratified``: within each genre, a seeded shuffle cut at the train/val/test fractions.
    ``lists``: the public fault-filtered GTZAN lists; tracks in no list are excluded and counted.
    """
    tracks = list(tracks)
    if cfg.method == "stratified":
        total = cfg.train + cfg.val + cfg.test
        if abs(total - 1.0) > 1e-6 or min(cfg.train, cfg.val, cfg.test) < 0:
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {cfg.train}/{cfg.val}/{cfg.test}")
        by_genre: dict[str, list[Track]] = defaultdict(list)
        for t in tracks:
            by_genre[t.genre].append(t)
        out: dict[str, str] = {}
        for genre in sorted(by_genre):
            items = sorted(by_genre[genre], key=lambda t: t.track_id)
            random.Random(f"{cfg.seed}:{genre}").shuffle(items)
            n = len(items)
            n_test = int(round(n * cfg.test))
            n_val = int(round(n * cfg.val))
            if n >= 3:  # every split gets at least one track of the genre when there are enough
                n_test, n_val = max(n_test, 1 if cfg.test > 0 else 0), max(n_val, 1 if cfg.val > 0 else 0)
            for i, t in enumerate(items):
                out[t.track_id] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
        return out, 0
    if cfg.method == "lists":
        if not cfg.lists_dir:
            raise ValueError("split method 'lists' needs --split-lists DIR (see ../shared/gtzan/)")
        membership: dict[str, str] = {}
        for split, name in LIST_FILES.items():
            path = Path(cfg.lists_dir) / name
            if not path.is_file():
                raise FileNotFoundError(f"split list {path} not found; expected {', '.join(LIST_FILES.values())}")
            for line in path.read_text().splitlines():
                line = line.strip()
                if line:
                    key = str(Path(line).with_suffix("")).replace("\\", "/")
                    membership["/".join(key.split("/")[-2:])] = split
        out = {}
        excluded = 0
        for t in tracks:
            split = membership.get(_list_key(t))
            if split is None:
                excluded += 1
            else:
                out[t.track_id] = split
        return out, excluded
    raise ValueError(f"unknown split method {cfg.method!r}: use 'stratified' or 'lists'")
