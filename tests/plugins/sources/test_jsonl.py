"""The ``jsonl`` source: media paths resolved against the manifest, ``fields`` mapping."""

from __future__ import annotations

import json
from pathlib import Path

from modaloom.plugins.sources.jsonl import JsonlSource, JsonlSpec


def write_lines(path: Path, lines: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_fields_read_the_audio_of_each_video_file(tmp_path: Path) -> None:
    manifest = write_lines(
        tmp_path / "train.jsonl",
        [
            {"id": "video0", "item": "video0", "video": "media/video0.mp4", "text": ["a", "b"]},
            {"id": "video1", "text": "no video"},
            {"id": "video2", "video": "media/video2.mp4", "audio": "other.wav", "text": "c"},
        ],
    )
    source = JsonlSource(JsonlSpec(path=str(manifest), fields={"audio": "video"}))
    first, second, third = (source[index] for index in range(3))
    video0 = str((tmp_path / "media" / "video0.mp4").resolve())
    assert first == {
        "__key__": "video0",
        "item": "video0",
        "id": "video0",
        "video": video0,
        "audio": video0,
        "text": ["a", "b"],
    }
    assert "audio" not in second and "video" not in second
    assert third["audio"] == third["video"] == str((tmp_path / "media/video2.mp4").resolve())


def test_without_fields_a_line_keeps_its_own_names(tmp_path: Path) -> None:
    manifest = write_lines(tmp_path / "m.jsonl", [{"video": "v.mp4", "audio": "a.wav"}])
    sample = JsonlSource(JsonlSpec(path=str(manifest)))[0]
    assert sample["audio"] == str((tmp_path / "a.wav").resolve())
    assert sample["video"] == str((tmp_path / "v.mp4").resolve())
    assert sample["__key__"] == "m.jsonl:1"
