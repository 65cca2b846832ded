"""``valor``: VALOR-32K annotations (``desc_train.json``, ``desc_val.json``, ``desc_test.json``:
``[{"video_id": ..., "desc": ...}]``) -> one manifest line per clip with its caption(s).

The split is named by the file. VALOR's captions describe what is seen and heard, so each line
reads the clip twice: ``video`` and ``audio`` name the same file,
``MEDIA_ROOT/<video_id>.mp4`` (or .mkv, .webm, .avi).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from modaloom.core.convert import ConvertedItem, captions, read_json, require, split_of
from modaloom.core.errors import DataError
from modaloom.core.hookspecs import hookimpl
from modaloom.core.registry import Registry

LAYOUT = 'a list [{"video_id": ..., "desc": "caption" or [captions]}]'
VIDEO_EXTENSIONS = ("mp4", "mkv", "webm", "avi")


def convert_valor(sources: Sequence[Path]) -> Iterator[ConvertedItem]:
    """Items of VALOR-32K JSON files (raises `DataError` for another layout)."""
    for path in map(Path, sources):
        split = split_of(path)
        records = read_json(path, f"VALOR-32K's desc_{split}.json")
        if not isinstance(records, list):
            raise DataError(f"{path} holds a {type(records).__name__}; expected {LAYOUT}")
        texts: dict[str, list[str]] = {}
        for index, record in enumerate(records):
            require(record, ["video_id", "desc"], f"{path}: [{index}]", LAYOUT)
            texts.setdefault(str(record["video_id"]), []).extend(captions(record["desc"]))
        for video, found in texts.items():
            files = tuple(f"{video}.{ext}" for ext in VIDEO_EXTENSIONS)
            yield ConvertedItem(split, video, {"video": files, "audio": files}, {"text": found})


@hookimpl
def modaloom_register_converters(registry: Registry) -> None:
    """Register the VALOR-32K format."""
    registry.add_converter(
        "valor",
        convert_valor,
        description="VALOR-32K audio-visual captions (video_id, desc); video and audio per clip",
    )
