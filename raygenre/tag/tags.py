"""The genre tag and raygenre's confidence tag of one audio file, per format, through mutagen.

| format | genre | confidence (raygenre's own) |
| --- | --- | --- |
| MP3, WAV, AIFF (ID3v2; in WAV/AIFF an ``id3 `` chunk) | ``TCON`` | ``TXXX:RAYGENRE_CONFIDENCE`` |
| FLAC, OGG Vorbis, Opus (Vorbis comment) | ``GENRE`` | ``RAYGENRE_CONFIDENCE`` |
| M4A/MP4 (iTunes atoms) | ``\\xa9gen`` | ``----:com.raygenre:confidence`` (freeform, UTF-8) |

Values are kept as mutagen gives them (lists of strings: a tag may hold several genres), so an undo writes back
exactly what was there. Only the tag block is rewritten: mutagen never re-encodes audio. ID3 tags are saved in
the version they were read in (v2.3 stays v2.3), so other frames are not converted. Pure: no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mutagen
from mutagen.aiff import AIFF
from mutagen.flac import FLAC
from mutagen.id3 import TCON, TXXX
from mutagen.mp3 import MP3
from mutagen.mp4 import MP4, MP4FreeForm
from mutagen.oggopus import OggOpus
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE

CONFIDENCE_ID3 = "RAYGENRE_CONFIDENCE"  # TXXX description
CONFIDENCE_VORBIS = "RAYGENRE_CONFIDENCE"
CONFIDENCE_MP4 = "----:com.raygenre:confidence"
GENRE_MP4 = "\xa9gen"

# The mutagen classes raygenre writes, and which tag family each carries.
KINDS: dict[type[Any], str] = {MP3: "id3", WAVE: "id3", AIFF: "id3", FLAC: "vorbis", OggVorbis: "vorbis",
                               OggOpus: "vorbis", MP4: "mp4"}


class TagError(Exception):
    """The file cannot be read or written as a tagged audio file; the message says why (one line)."""


@dataclass(frozen=True)
class TagState:
    """What a file holds: its genre values (``None``: no genre tag), raygenre's confidence values (``None``: no
    confidence tag) and whether it had a tag block at all (``False``: an undo removes the block again)."""

    genre: tuple[str, ...] | None
    confidence: tuple[str, ...] | None
    had_tags: bool

    def to_json(self) -> dict[str, Any]:
        return {"genre": None if self.genre is None else list(self.genre),
                "confidence": None if self.confidence is None else list(self.confidence), "had_tags": self.had_tags}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TagState:
        genre, conf = obj.get("genre"), obj.get("confidence")
        return cls(None if genre is None else tuple(str(g) for g in genre),
                   None if conf is None else tuple(str(c) for c in conf), bool(obj.get("had_tags")))


def open_audio(path: str, cls: type[Any] | None = None) -> Any:
    """The mutagen file object for ``path`` (``cls``: that class, else mutagen's guess). Raises ``TagError``
    for a file mutagen cannot parse or a format raygenre does not tag (AU, raw PCM, ...)."""
    try:
        audio = cls(path) if cls is not None else mutagen.File(path)
    except (mutagen.MutagenError, OSError, ValueError, EOFError) as exc:
        raise TagError(f"mutagen cannot read it: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from None
    if audio is None:
        raise TagError("mutagen does not recognise it as an audio file it can tag")
    if type(audio) not in KINDS:
        raise TagError(f"raygenre does not write genre tags to {type(audio).__name__} files")
    return audio


def read_state(audio: Any) -> TagState:
    """The genre and confidence tags of an opened file (``open_audio``)."""
    tags, kind = audio.tags, KINDS[type(audio)]
    if tags is None:
        return TagState(None, None, False)
    if kind == "id3":
        genre = [t for frame in tags.getall("TCON") for t in frame.text]
        conf = [t for frame in tags.getall(f"TXXX:{CONFIDENCE_ID3}") for t in frame.text]
        return TagState(tuple(str(g) for g in genre) if tags.getall("TCON") else None,
                        tuple(str(c) for c in conf) if tags.getall(f"TXXX:{CONFIDENCE_ID3}") else None, True)
    if kind == "vorbis":
        genre_v, conf_v = tags.get("GENRE"), tags.get(CONFIDENCE_VORBIS)
        return TagState(None if genre_v is None else tuple(genre_v), None if conf_v is None else tuple(conf_v), True)
    genre_m, conf_m = tags.get(GENRE_MP4), tags.get(CONFIDENCE_MP4)
    return TagState(None if genre_m is None else tuple(str(g) for g in genre_m),
                    None if conf_m is None else tuple(bytes(c).decode("utf-8", "replace") for c in conf_m), True)


def _empty(audio: Any) -> bool:
    """Whether the file's tag block holds nothing at all (then a file that had none loses the block again)."""
    return audio.tags is None or len(audio.tags.keys()) == 0


def write_state(audio: Any, state: TagState) -> None:
    """Set the genre and confidence tags of an opened file to ``state`` (``None`` deletes the tag) and save it.

    Other tags are left as they are. When ``state.had_tags`` is false and nothing else is left in the block,
    the block itself is removed (an undo of a file that had no tags leaves it without any).
    """
    kind = KINDS[type(audio)]
    if audio.tags is None:
        if state.genre is None and state.confidence is None:
            return
        audio.add_tags()
    tags = audio.tags
    if kind == "id3":
        version = 3 if tags.version[:2] == (2, 3) else 4  # keep the file's ID3 version (v2.3 players exist)
        tags.delall("TCON")
        tags.delall(f"TXXX:{CONFIDENCE_ID3}")
        if state.genre is not None:
            tags.add(TCON(encoding=3, text=list(state.genre)))
        if state.confidence is not None:
            tags.add(TXXX(encoding=3, desc=CONFIDENCE_ID3, text=list(state.confidence)))
        if not state.had_tags and _empty(audio):
            audio.delete()
            return
        audio.save(v2_version=version)
        return
    keys = ("GENRE", CONFIDENCE_VORBIS) if kind == "vorbis" else (GENRE_MP4, CONFIDENCE_MP4)
    for key, values in zip(keys, (state.genre, state.confidence), strict=True):
        if key in tags:
            del tags[key]
        if values is not None:
            tags[key] = ([MP4FreeForm(v.encode("utf-8")) for v in values] if key == CONFIDENCE_MP4
                         else list(values))
    if not state.had_tags and _empty(audio) and not isinstance(audio, OggVorbis | OggOpus):  # Ogg: always has one
        audio.delete()
        return
    audio.save()
