"""``audiocaps``: AudioCaps CSVs (``audiocap_id,youtube_id,start_time,caption``) -> one manifest
line per clip with its captions (1 in train, 5 in val and test).

The split is named by the file (``train.csv``, ``val.csv``, ``test.csv``). Clips are found under
``MEDIA_ROOT`` (or ``MEDIA_ROOT/<split>/``) by the names download tools use:
``<youtube_id>.wav``, ``Y<youtube_id>.wav``, ``<youtube_id>_<start_time>.wav`` (also .flac,
.mp3, .m4a, .ogg).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from modaloom.core.convert import ConvertedItem, captions, read_csv, split_of
from modaloom.core.hookspecs import hookimpl
from modaloom.core.registry import Registry

COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
AUDIO_EXTENSIONS = ("wav", "flac", "mp3", "m4a", "ogg")


def clip_files(youtube_id: str, start: str, split: str) -> tuple[str, ...]:
    """Candidate paths of a clip, most common first."""
    stems = (youtube_id, f"Y{youtube_id}", f"{youtube_id}_{start}")
    names = tuple(f"{stem}.{ext}" for ext in AUDIO_EXTENSIONS for stem in stems)
    return names + tuple(f"{split}/{name}" for name in names)


def convert_audiocaps(sources: Sequence[Path]) -> Iterator[ConvertedItem]:
    """Items of AudioCaps CSV files, captions of one clip grouped (raises `DataError`)."""
    for path in map(Path, sources):
        split = split_of(path)
        clips: dict[str, tuple[str, list[str]]] = {}
        for row in read_csv(path, COLUMNS, "an AudioCaps CSV"):
            start = row["start_time"].strip()
            start = start[:-2] if start.endswith(".0") else start
            clip = clips.setdefault(row["youtube_id"], (start, []))
            clip[1].extend(captions(row["caption"]))
        for youtube_id, (start, texts) in clips.items():
            media = {"audio": clip_files(youtube_id, start, split)}
            yield ConvertedItem(split, youtube_id, media, {"text": texts})


@hookimpl
def modaloom_register_converters(registry: Registry) -> None:
    """Register the AudioCaps format."""
    registry.add_converter(
        "audiocaps",
        convert_audiocaps,
        description="AudioCaps CSVs (audiocap_id, youtube_id, start_time, caption)",
    )
