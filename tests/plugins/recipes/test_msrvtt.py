"""``msrvtt``: MSRVTT_data.json (videos + sentences), the train_9k list and the 1k-A test CSV,
with their real field names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modaloom.core.convert import convert_dataset
from modaloom.core.errors import DataError
from modaloom.core.plugins import load_plugins
from modaloom.plugins.sources.jsonl import JsonlSource, JsonlSpec

REGISTRY = load_plugins(entry_points=False)


def msrvtt_json(path: Path, splits: dict[str, str]) -> Path:
    """An MSRVTT_data.json: 2 captions per video."""
    videos = [
        {
            "category": 9,
            "url": "https://www.youtube.com/watch?v=x",
            "video_id": video,
            "start time": 1.0,
            "end time": 11.0,
            "split": split,
            "id": index,
        }
        for index, (video, split) in enumerate(splits.items())
    ]
    sentences = [
        {"caption": f"{video} caption {n}", "video_id": video, "sen_id": index * 2 + n}
        for index, video in enumerate(splits)
        for n in range(2)
    ]
    path.write_text(json.dumps({"info": {}, "videos": videos, "sentences": sentences}))
    return path


def test_json_splits_train_9k_list_and_1k_a_test(tmp_path: Path) -> None:
    data = msrvtt_json(
        tmp_path / "MSRVTT_data.json",
        {"video0": "train", "video1": "validate", "video7": "test", "video9": "test"},
    )
    by_split = convert_dataset("msrvtt", [data], tmp_path / "a", tmp_path, registry=REGISTRY)
    assert by_split.items == {"train": 0, "val": 0, "test": 0}  # no video file yet
    assert by_split.missing == {"train": 1, "val": 1, "test": 2}
    for video in ("video0", "video1", "video7"):
        (tmp_path / f"{video}.mp4").write_bytes(b"mp4")
    (tmp_path / "video9.webm").write_bytes(b"webm")
    by_split = convert_dataset("msrvtt", [data], tmp_path / "a", tmp_path, registry=REGISTRY)
    assert by_split.items == {"train": 1, "val": 1, "test": 2}
    lines = (tmp_path / "a" / "test.jsonl").read_text().splitlines()
    assert json.loads(lines[1]) == {
        "id": "video9",
        "item": "video9",
        "video": "../video9.webm",
        "text": ["video9 caption 0", "video9 caption 1"],
    }
    train_9k = tmp_path / "MSRVTT_train.9k.csv"
    train_9k.write_text("video_id\nvideo0\nvideo1\nvideo9\n")
    test_1k = tmp_path / "MSRVTT_JSFUSION_test.csv"
    test_1k.write_text(
        "key,vid_key,video_id,sentence\nret0,msr7,video7,a man sings\n"
        'ret1,msr9,video9,"a dog, running"\n'
    )
    report = convert_dataset(
        "msrvtt", [data, train_9k, test_1k], tmp_path / "b", tmp_path, registry=REGISTRY
    )
    assert report.items == {"train": 3, "test": 2} and report.captions == {"train": 6, "test": 2}
    test = JsonlSource(JsonlSpec(path=str(tmp_path / "b" / "test.jsonl")))
    assert [(s["__key__"], s["text"]) for s in test.iter_raw()] == [
        ("video7", ["a man sings"]),
        ("video9", ["a dog, running"]),
    ]
    assert Path(test[0]["video"]).read_bytes() == b"mp4"


def test_a_csv_of_another_dataset_is_one_data_error(tmp_path: Path) -> None:
    other = tmp_path / "other.csv"
    other.write_text("key,vid,sentence\n1,2,3\n")
    with pytest.raises(DataError) as info:
        convert_dataset("msrvtt", [other], tmp_path / "out", registry=REGISTRY)
    assert str(info.value) == (
        f"{other} is not MSR-VTT's 1k-A test CSV: its header ['key', 'vid', 'sentence'] lacks "
        "['vid_key', 'video_id'] (expected columns key, vid_key, video_id, sentence)"
    )
    train_9k = tmp_path / "MSRVTT_train.9k.csv"
    train_9k.write_text("video_id\nvideo3\n")
    with pytest.raises(DataError) as info:
        convert_dataset("msrvtt", [train_9k], tmp_path / "out", registry=REGISTRY)
    assert str(info.value) == (
        "1 videos of the training list have no caption in the JSON (first: ['video3']); "
        "pass MSRVTT_data.json with the list"
    )
