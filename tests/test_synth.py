"""The built-in synthetic dataset (``raygenre.data.synth``): GTZAN layout, determinism, faults, the label library.

Tiny configurations (2-3 tracks per genre, 3 s) keep these tests to seconds.
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from raygenre.config import SynthConfig, load_config
from raygenre.data.audio import AudioError
from raygenre.data.audio import load as audio_load
from raygenre.data.gtzan import GENRES, discover
from raygenre.data.synth.compose import compose
from raygenre.data.synth.dataset import _fault_plan, synthesize
from raygenre.data.synth.library import make_library
from raygenre.data.synth.recipes import HARD_NOISE_DB, RECIPES, SCALES, STEP_PROB, chord, track_recipe

SR = 22050


def tiny(**over: object) -> SynthConfig:
    """The default synth config shrunk to 2 tracks/genre of 3 s (overridable)."""
    base = dataclasses.replace(load_config(SynthConfig), tracks_per_genre=2, seconds=3.0, seed=7, faults=False)
    return dataclasses.replace(base, **over)


def files_of(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative POSIX path -> bytes)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny clean dataset written by two worker processes."""
    root = tmp_path_factory.mktemp("synth") / "ds"
    result = synthesize(root, tiny(), workers=2, progress=False)
    assert result.tracks == 20 and not result.skipped
    return root


# ------------------------------------------------------------------------------------------------ recipes
def test_recipes_are_well_formed() -> None:
    assert set(RECIPES) == set(GENRES)
    for genre, r in RECIPES.items():
        for pattern in (r.kick, r.snare, r.hat, r.bass, r.comp):
            assert len(pattern) == 16 and set(pattern) <= set(STEP_PROB), (genre, pattern)
        assert all(s in SCALES for s in r.scales), genre
        for prog in r.progressions:
            assert all(0 <= chord(n)[0] < 12 for n in prog.split()), (genre, prog)
        for lo, hi in (r.tempo, r.swing, r.drive, r.noise, r.tone, r.comp_len):
            assert lo <= hi, genre
    assert chord("bVII5") == (10, (0, 7, 12)) and chord("ii7") == (2, (0, 3, 7, 10))
    with pytest.raises(ValueError):
        chord("IX")


def test_hard_tracks_borrow_traits_from_other_genres() -> None:
    """easy: a track draws from its genre's recipe alone (and no extra random draws: old files stay identical);
    hard: groups of traits come from other genres, and the mix is noisier."""
    rng = np.random.default_rng(0)
    assert track_recipe("jazz", rng, "easy") is RECIPES["jazz"]
    assert rng.random() == np.random.default_rng(0).random()  # easy drew nothing
    borrowed = 0
    for i in range(200):
        r = track_recipe("jazz", np.random.default_rng([1, i]), "hard")
        assert any(r.noise == (g.noise[0] + HARD_NOISE_DB, g.noise[1] + HARD_NOISE_DB) for g in RECIPES.values())
        borrowed += r.tempo != RECIPES["jazz"].tempo or r.kick != RECIPES["jazz"].kick
    assert 10 < borrowed < 60  # some tracks, not most, play another genre's rhythm or drums
    with pytest.raises(ValueError, match="unknown difficulty"):
        track_recipe("jazz", rng, "medium")
    with pytest.raises(ValueError, match="unknown difficulty"):
        synthesize(Path("/nonexistent"), tiny(difficulty="medium"), workers=1, progress=False)


def test_streaming_in_chunks_gives_the_same_samples() -> None:
    """Long library files are written chunk by chunk: the chunk size must not change a sample."""
    total = 5 * SR + 123
    whole = np.concatenate(list(compose("jazz", np.random.default_rng(3), total, SR, 2).chunks(total, total)))
    pieces = np.concatenate(list(compose("jazz", np.random.default_rng(3), total, SR, 2).chunks(total, 9999)))
    assert whole.shape == (total, 2) and whole.dtype == np.float32
    np.testing.assert_array_equal(whole, pieces)
    assert 0.01 < float(np.sqrt(np.mean(whole**2))) < 0.5 and np.abs(whole).max() <= 1.0
    assert not np.array_equal(whole[:, 0], whole[:, 1])  # panned: a real stereo image


# --------------------------------------------------------------------------------------------- synthesize
def test_layout_and_format_are_exactly_gtzan(dataset: Path) -> None:
    expected = {f"genres_original/{g}/{g}.{i:05d}.wav" for g in GENRES for i in range(2)}
    assert set(files_of(dataset)) == expected | {"SYNTHETIC.md", "synth.json"}  # no temp files left
    for rel in expected:
        info = sf.info(str(dataset / rel))
        assert (info.samplerate, info.channels, info.format, info.subtype) == (SR, 1, "WAV", "PCM_16"), rel
        assert info.frames == 3 * SR, rel
    tracks, genres = discover(dataset)
    assert genres == sorted(GENRES) and len(tracks) == 20
    assert tracks[0].track_id == "genres_original/blues/blues.00000"

    marker = json.loads((dataset / "synth.json").read_text())
    assert marker["config"] == dataclasses.asdict(tiny()) and marker["synthetic"] is True
    assert marker["faults"] == {"corrupt": [], "truncated": []} and marker["raygenre_version"]
    note = (dataset / "SYNTHETIC.md").read_text()
    assert "NOT real music" in note and "**7**" in note  # the seed


def test_tracks_are_music_like_and_differ(dataset: Path) -> None:
    arrays = {}
    for g in GENRES:
        y, _ = sf.read(str(dataset / f"genres_original/{g}/{g}.00000.wav"), dtype="float32")
        rms_db = 20 * np.log10(np.sqrt(np.mean(y**2)))
        assert -35 < rms_db < -6, (g, rms_db)  # neither silent nor clipped flat
        assert np.mean(np.abs(y) > 0.999) < 0.01, g
        arrays[g] = y
    spectra = {g: np.abs(np.fft.rfft(y))[: 8000] for g, y in arrays.items()}
    assert not np.allclose(spectra["metal"], spectra["classical"], rtol=0.5)


def test_byte_for_byte_deterministic(dataset: Path, tmp_path: Path) -> None:
    """Same seed -> identical bytes whatever the number of workers; another seed -> other audio."""
    synthesize(tmp_path / "again", tiny(), workers=1, progress=False)
    assert files_of(tmp_path / "again") == files_of(dataset)
    synthesize(tmp_path / "other", tiny(seed=8), workers=1, progress=False)
    ours, theirs = files_of(dataset), files_of(tmp_path / "other")
    wavs = [k for k in ours if k.endswith(".wav")]
    assert all(ours[k] != theirs[k] for k in wavs)


def test_idempotent_rerun_and_regeneration(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    synthesize(root, tiny(tracks_per_genre=2), workers=1, progress=False)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    again = synthesize(root, tiny(tracks_per_genre=2), workers=1, progress=False)
    assert again.skipped and again.seconds < 1.0
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before

    smaller = synthesize(root, tiny(tracks_per_genre=1), workers=1, progress=False)  # other config: redo
    assert not smaller.skipped
    assert not (root / "genres_original/blues/blues.00001.wav").exists()  # stale files removed
    assert json.loads((root / "synth.json").read_text())["config"]["tracks_per_genre"] == 1


def test_refuses_to_mix_into_a_real_dataset(tmp_path: Path) -> None:
    real = tmp_path / "gtzan" / "genres_original" / "blues"
    real.mkdir(parents=True)
    (real / "blues.00000.wav").write_bytes(b"not ours")
    with pytest.raises(FileExistsError):
        synthesize(tmp_path / "gtzan", tiny(), workers=1, progress=False)
    assert (real / "blues.00000.wav").read_bytes() == b"not ours"


def test_faults_like_gtzan(tmp_path: Path) -> None:
    cfg = tiny(tracks_per_genre=3, faults=True)
    result = synthesize(tmp_path, cfg, workers=2, progress=False)
    corrupt, truncated = result.faults["corrupt"], result.faults["truncated"]
    assert corrupt == ["genres_original/jazz/jazz.00002.wav"]  # too few tracks for 00054: the last one
    assert len(truncated) == 1 and truncated[0] not in corrupt
    assert json.loads((tmp_path / "synth.json").read_text())["faults"] == result.faults

    bad = tmp_path / corrupt[0]
    assert bad.stat().st_size > 100_000  # looks like a whole track, decodes as nothing
    with pytest.raises(AudioError):
        audio_load(bad, SR)
    with pytest.raises(sf.LibsndfileError):
        sf.read(str(bad))
    import librosa

    with warnings.catch_warnings(), pytest.raises(Exception):  # noqa: B017 - any decoder error will do
        warnings.simplefilter("ignore")
        librosa.load(str(bad), sr=SR)

    short = tmp_path / truncated[0]
    data = short.read_bytes()
    claimed = struct.unpack("<I", data[data.index(b"data") + 4 : data.index(b"data") + 8])[0]
    assert claimed > 2 * 2.9 * SR  # the header still claims the full track...
    assert audio_load(short, SR).size <= 1.5 * SR  # ...but the audio is cut short

    lengths = {sf.info(str(p)).frames for p in tmp_path.rglob("*.wav") if p.relative_to(tmp_path).as_posix()
               not in corrupt + truncated}
    assert len(lengths) > 10  # lengths vary...
    assert all(abs(n / (3 * SR) - 1) <= 0.0201 for n in lengths)  # ...by at most 2 %


def test_fault_plan_matches_the_kaggle_copy() -> None:
    plan = _fault_plan(tiny(tracks_per_genre=100, faults=True))
    assert plan["corrupt"] == ["genres_original/jazz/jazz.00054.wav"]
    assert _fault_plan(tiny(tracks_per_genre=100, faults=False)) == {"corrupt": [], "truncated": []}
    assert _fault_plan(tiny(tracks_per_genre=100, faults=True, seed=1)) == _fault_plan(
        tiny(tracks_per_genre=100, faults=True, seed=1))


# -------------------------------------------------------------------------------------------- the library
LIB = dict(min_seconds=3.5, max_seconds=5.0, progress=False)
NAME = re.compile(r"^Artist \d\d/Album \d\d/\d\d - [A-Za-z ]+\.(wav|flac|mp3|ogg)$")


def test_make_library(tmp_path: Path) -> None:
    result = make_library(tmp_path / "lib", 8, seed=5, workers=2, **LIB)
    root = tmp_path / "lib"
    assert len(result.genres) == 8 and set(result.bad.values()) == {
        "empty", "not_audio", "corrupt", "truncated", "too_short"}
    assert sorted(files_of(root)) == sorted([*result.files, "library.json", "SYNTHETIC.md"])
    manifest = json.loads((root / "library.json").read_text())
    assert {f["path"]: f["genre"] for f in manifest["files"]} == result.genres

    seen_formats, seen_rates = set(), set()
    for rel, genre in result.genres.items():
        assert NAME.match(rel) and genre in GENRES, rel
        info = sf.info(str(root / rel))
        ext = rel.rsplit(".", 1)[1]
        assert info.format == {"wav": "WAV", "flac": "FLAC", "mp3": "MP3", "ogg": "OGG"}[ext], rel
        assert info.channels == 2 and info.samplerate in (44100, 22050, 48000), rel
        assert 3.4 < info.frames / info.samplerate < 5.2, rel  # MP3 may pad a frame
        assert audio_load(root / rel, SR).size > 3 * SR
        seen_formats.add(ext)
        seen_rates.add(info.samplerate)
    assert seen_formats == {"wav", "flac", "mp3", "ogg"} and seen_rates == {44100, 22050, 48000}

    for rel, kind in result.bad.items():
        assert NAME.match(rel), rel
        if kind == "too_short":
            assert audio_load(root / rel, SR).size == SR  # decodes, but 1 s is shorter than a segment
        elif kind == "truncated":
            claimed = sf.info(str(root / rel)).duration
            try:
                got = audio_load(root / rel, SR).size / SR
            except AudioError:
                got = 0.0
            assert got < 0.5 * claimed, rel
        else:
            with pytest.raises(AudioError):
                audio_load(root / rel, SR)
    assert (root / [r for r, k in result.bad.items() if k == "empty"][0]).stat().st_size == 0

    # Deterministic (OGG included: its clock-drawn stream serial is fixed) and idempotent.
    make_library(tmp_path / "again", 8, seed=5, workers=1, **LIB)
    assert files_of(tmp_path / "again") == files_of(root)
    again = make_library(root, 8, seed=5, **LIB)
    assert again.skipped and again.genres == result.genres and again.bad == result.bad


def test_make_library_options(tmp_path: Path) -> None:
    opts = dict(formats=("flac",), sample_rates=(48000,), stereo=False, bad_files=False, workers=1, **LIB)
    result = make_library(tmp_path / "a", 3, seed=1, **opts)
    assert result.bad == {} and len(result.files) == 3
    for rel in result.files:
        info = sf.info(str(tmp_path / "a" / rel))
        assert (info.format, info.samplerate, info.channels) == ("FLAC", 48000, 1)
    make_library(tmp_path / "b", 3, seed=2, **opts)
    assert files_of(tmp_path / "a") != files_of(tmp_path / "b")  # another seed, another library
    with pytest.raises(ValueError):
        make_library(tmp_path / "c", 1, seed=1, formats=("m4a",), **LIB)


def test_make_library_cleans_up_and_refuses_real_collections(tmp_path: Path) -> None:
    opts = dict(formats=("wav",), sample_rates=(22050,), bad_files=False, workers=1, **LIB)
    root = tmp_path / "lib"
    make_library(root, 4, seed=1, **opts)
    smaller = make_library(root, 1, seed=1, **opts)  # other parameters: the extra files must go
    assert sorted(files_of(root)) == sorted([*smaller.files, "library.json", "SYNTHETIC.md"])
    assert not [d for d in root.rglob("*") if d.is_dir() and not any(d.iterdir())]  # no empty folders left

    mine = tmp_path / "my music"
    (mine / "Some Artist").mkdir(parents=True)
    (mine / "Some Artist" / "song.flac").write_bytes(b"real music")
    with pytest.raises(FileExistsError):
        make_library(mine, 1, seed=1, **opts)
    assert sorted(files_of(mine)) == ["Some Artist/song.flac"]
