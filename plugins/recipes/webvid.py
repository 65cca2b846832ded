"""``webvid``: WebVid-2M/10M result CSVs (``videoid,contentUrl,duration,page_dir,name``) -> one
manifest line per video with its caption (``name``).

The split is named by the file (``results_2M_val.csv`` -> ``val``, any other -> ``train``);
videos are found where WebVid's download script puts them, ``MEDIA_ROOT/<page_dir>/<videoid>.mp4``
(or directly under ``MEDIA_ROOT``). Rows are streamed, so a 10M-row file needs no memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from modaloom.core.convert import ConvertedItem, captions, read_csv, split_of
from modaloom.core.hookspecs import hookimpl
from modaloom.core.registry import Registry

COLUMNS = ("videoid", "name", "page_dir", "contentUrl")


def convert_webvid(sources: Sequence[Path]) -> Iterator[ConvertedItem]:
    """Items of WebVid CSV files (raises `DataError` for another header)."""
    for path in map(Path, sources):
        split = split_of(path)
        for row in read_csv(path, COLUMNS, "a WebVid results CSV"):
            video, page = row["videoid"], row["page_dir"]
            media = {"video": (f"{page}/{video}.mp4", f"{video}.mp4")}
            yield ConvertedItem(split, video, media, {"text": captions(row["name"])})


@hookimpl
def modaloom_register_converters(registry: Registry) -> None:
    """Register the WebVid format."""
    registry.add_converter(
        "webvid",
        convert_webvid,
        description="WebVid-2M/10M result CSVs (videoid, name, page_dir, contentUrl)",
    )
