"""``msrvtt``: MSR-VTT annotations -> one manifest line per video with its captions.

Sources, any of (each recognised by its content):

- a JSON file ``{"videos": [{"video_id": "video0", "split": "train", ...}], "sentences":
  [{"video_id": "video0", "caption": "..."}]}`` (MSRVTT_data.json, or a train_9k JSON): every
  caption of each video, the split from the video's ``split`` (``validate`` -> ``val``;
  ``train`` when absent);
- a CSV ``video_id`` list (MSRVTT_train.9k.csv): ``train`` is then exactly these videos, with
  their captions from the JSON (the 9K training split of the 1k-A protocol);
- the 1k-A test CSV ``key,vid_key,video_id,sentence`` (MSRVTT_JSFUSION_test.csv): ``test``,
  one caption per video.

Videos are found at ``MEDIA_ROOT/<video_id>.mp4`` (or .webm, .mkv, .avi).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from modaloom.core.convert import ConvertedItem, captions, read_csv, read_json, require
from modaloom.core.errors import DataError
from modaloom.core.hookspecs import hookimpl
from modaloom.core.registry import Registry

VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "avi")
JSON_LAYOUT = '{"videos": [{video_id, split}], "sentences": [{video_id, caption}]}'
TEST_COLUMNS = ("key", "vid_key", "video_id", "sentence")
SPLITS = {"train": "train", "validate": "val", "val": "val", "test": "test"}


def video_media(video_id: str) -> dict[str, tuple[str, ...]]:
    """The candidate files of a video."""
    return {"video": tuple(f"{video_id}.{ext}" for ext in VIDEO_EXTENSIONS)}


def json_videos(path: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(video id -> split, video id -> captions) of an MSR-VTT JSON (raises `DataError`)."""
    data = require(
        read_json(path, "an MSR-VTT JSON"), ["videos", "sentences"], str(path), JSON_LAYOUT
    )
    splits: dict[str, str] = {}
    for index, video in enumerate(_list(data, "videos", path)):
        require(video, ["video_id"], f"{path}: videos[{index}]", JSON_LAYOUT)
        split = str(video.get("split", "train"))
        if split not in SPLITS:
            raise DataError(
                f"{path}: videos[{index}] has split {split!r}; expected one of {list(SPLITS)}"
            )
        splits[str(video["video_id"])] = SPLITS[split]
    texts: dict[str, list[str]] = {video: [] for video in splits}
    for index, sentence in enumerate(_list(data, "sentences", path)):
        require(sentence, ["video_id", "caption"], f"{path}: sentences[{index}]", JSON_LAYOUT)
        texts.setdefault(str(sentence["video_id"]), []).extend(captions(sentence["caption"]))
    for video in set(texts) - set(splits):
        splits[video] = "train"  # captioned videos the list omits
    return splits, texts


def _list(data: dict[str, Any], name: str, path: Path) -> list[Any]:
    if not isinstance(data[name], list):
        raise DataError(f"{path}: {name!r} is not a list; expected {JSON_LAYOUT}")
    return data[name]


def csv_header(path: Path) -> list[str]:
    """The header row of a CSV file (raises `DataError` when unreadable)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return next(csv.reader(handle), [])
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc})") from None


def convert_msrvtt(sources: Sequence[Path]) -> Iterator[ConvertedItem]:
    """Items of MSR-VTT JSON and CSV files (see the module docstring)."""
    splits: dict[str, str] = {}
    texts: dict[str, list[str]] = {}
    train_list: list[str] | None = None
    tests: list[ConvertedItem] = []
    for path in map(Path, sources):
        if path.suffix.lower() == ".json":
            more_splits, more_texts = json_videos(path)
            splits.update(more_splits)
            for video, found in more_texts.items():
                texts.setdefault(video, []).extend(found)
        elif "sentence" in csv_header(path):
            rows = read_csv(path, TEST_COLUMNS, "MSR-VTT's 1k-A test CSV")
            for row in rows:
                video = row["video_id"]
                tests.append(
                    ConvertedItem(
                        "test", video, video_media(video), {"text": captions(row["sentence"])}
                    )
                )
        else:
            rows = read_csv(path, ["video_id"], "a list of MSR-VTT videos (MSRVTT_train.9k.csv)")
            train_list = [*(train_list or []), *(row["video_id"] for row in rows)]
    if train_list is not None:
        absent = [video for video in train_list if video not in texts]
        if absent:
            raise DataError(
                f"{len(absent)} videos of the training list have no caption in the JSON "
                f"(first: {absent[:3]}); pass MSRVTT_data.json with the list"
            )
        splits = {video: "train" for video in train_list}
    for video, split in splits.items():
        if texts.get(video):  # every MSR-VTT video has 20 captions; a bare id is of no use
            yield ConvertedItem(split, video, video_media(video), {"text": texts[video]})
    yield from tests


@hookimpl
def modaloom_register_converters(registry: Registry) -> None:
    """Register the MSR-VTT format."""
    registry.add_converter(
        "msrvtt",
        convert_msrvtt,
        description="MSR-VTT: JSON videos+sentences (splits), train_9k list, 1k-A test CSV",
    )
