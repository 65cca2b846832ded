"""``webvid``: WebVid result CSVs (videoid, contentUrl, duration, page_dir, name)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modaloom.core.convert import convert_dataset
from modaloom.core.errors import DataError
from modaloom.core.plugins import load_plugins

REGISTRY = load_plugins(entry_points=False)
HEADER = "videoid,contentUrl,duration,page_dir,name\n"


def test_rows_split_by_file_name_and_found_under_page_dir(tmp_path: Path) -> None:
    train = tmp_path / "results_2M_train.csv"
    train.write_text(
        HEADER + "31353427,https://x/1.mp4,PT00H00M15S,006001_006050,Merida cathedral\n"
        '1015,https://x/2.mp4,PT00H00M10S,000001_000050,"Drone shot, sea"\n'
    )
    val = tmp_path / "results_2M_val.csv"
    val.write_text(HEADER + "7,https://x/7.mp4,PT00H00M08S,000001_000050,A cat\n")
    videos = tmp_path / "videos"
    (videos / "006001_006050").mkdir(parents=True)
    (videos / "006001_006050" / "31353427.mp4").write_bytes(b"mp4")
    (videos / "7.mp4").write_bytes(b"mp4")  # flat layouts are found too
    report = convert_dataset("webvid", [train, val], tmp_path / "out", videos, registry=REGISTRY)
    assert report.items == {"train": 1, "val": 1} and report.missing == {"train": 1, "val": 0}
    assert report.missing_examples == [str(videos.absolute() / "000001_000050" / "1015.mp4")]
    line = json.loads((tmp_path / "out" / "train.jsonl").read_text())
    assert line == {
        "id": "31353427",
        "item": "31353427",
        "video": "../videos/006001_006050/31353427.mp4",
        "text": ["Merida cathedral"],
    }


def test_another_header_is_one_data_error(tmp_path: Path) -> None:
    source = tmp_path / "results.csv"
    source.write_text("id,caption\n1,a\n")
    with pytest.raises(DataError) as info:
        convert_dataset("webvid", [source], tmp_path / "out", registry=REGISTRY)
    assert str(info.value) == (
        f"{source} is not a WebVid results CSV: its header ['id', 'caption'] lacks ['videoid', "
        "'name', 'page_dir', 'contentUrl'] (expected columns videoid, name, page_dir, contentUrl)"
    )
