"""``audiocaps``: AudioCaps CSVs (audiocap_id, youtube_id, start_time, caption)."""

from __future__ import annotations

import json
from pathlib import Path

from modaloom.core.convert import convert_dataset
from modaloom.core.plugins import load_plugins

REGISTRY = load_plugins(entry_points=False)
HEADER = "audiocap_id,youtube_id,start_time,caption\n"


def test_captions_of_a_clip_are_grouped_and_file_layouts_found(tmp_path: Path) -> None:
    test = tmp_path / "test.csv"
    test.write_text(
        HEADER + "103549,--0w1YA1Hm4,30,A vehicle driving\n"
        "103548,--0w1YA1Hm4,30,Wind blows\n"
        "103541,-AheI8Epim4,30,A man speaks\n"
        "103542,zZnf3JqjK1A,10,Birds chirp\n"
    )
    train = tmp_path / "train.csv"
    train.write_text(HEADER + "91139,r1nicOVtvkQ,130,A woman talks\n")
    audio = tmp_path / "audio"
    (audio / "test").mkdir(parents=True)
    (audio / "--0w1YA1Hm4.wav").write_bytes(b"wav")
    (audio / "Y-AheI8Epim4.flac").write_bytes(b"flac")
    (audio / "test" / "zZnf3JqjK1A_10.wav").write_bytes(b"wav")
    (audio / "r1nicOVtvkQ.wav").write_bytes(b"wav")
    report = convert_dataset("audiocaps", [train, test], tmp_path / "out", audio, registry=REGISTRY)
    assert report.items == {"train": 1, "test": 3} and report.captions == {"train": 1, "test": 4}
    lines = [
        json.loads(line) for line in (tmp_path / "out" / "test.jsonl").read_text().splitlines()
    ]
    assert lines[0] == {
        "id": "--0w1YA1Hm4",
        "item": "--0w1YA1Hm4",
        "audio": "../audio/--0w1YA1Hm4.wav",
        "text": ["A vehicle driving", "Wind blows"],
    }
    assert [line["audio"] for line in lines[1:]] == [
        "../audio/Y-AheI8Epim4.flac",
        "../audio/test/zZnf3JqjK1A_10.wav",
    ]
