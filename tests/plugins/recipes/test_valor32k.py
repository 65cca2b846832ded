"""``valor``: VALOR-32K desc_<split>.json files (video_id, desc)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modaloom.core.convert import convert_dataset
from modaloom.core.errors import DataError
from modaloom.core.plugins import load_plugins

REGISTRY = load_plugins(entry_points=False)


def test_video_and_audio_read_the_same_clip(tmp_path: Path) -> None:
    source = tmp_path / "desc_test.json"
    source.write_text(
        json.dumps(
            [
                {"video_id": "-0iIG3ooGBM_30.000_40.000", "desc": "A man plays guitar and sings."},
                {"video_id": "07DaOvzc_tk_0.000_10.000", "desc": ["Rain falls.", "Thunder."]},
            ]
        )
    )
    (tmp_path / "-0iIG3ooGBM_30.000_40.000.mp4").write_bytes(b"mp4")
    report = convert_dataset("valor", [source], tmp_path / "out", registry=REGISTRY)
    assert report.items == {"test": 1} and report.missing == {"test": 1}
    line = json.loads((tmp_path / "out" / "test.jsonl").read_text())
    assert line == {
        "id": "-0iIG3ooGBM_30.000_40.000",
        "item": "-0iIG3ooGBM_30.000_40.000",
        "video": "../-0iIG3ooGBM_30.000_40.000.mp4",
        "audio": "../-0iIG3ooGBM_30.000_40.000.mp4",
        "text": ["A man plays guitar and sings."],
    }
    report = convert_dataset(
        "valor", [source], tmp_path / "keep", keep_missing=True, registry=REGISTRY
    )
    assert report.items == {"test": 2} and report.missing == {"test": 1}


def test_records_without_desc_are_one_data_error(tmp_path: Path) -> None:
    source = tmp_path / "desc_train.json"
    source.write_text(json.dumps([{"video_id": "a", "caption": "x"}]))
    with pytest.raises(DataError) as info:
        convert_dataset("valor", [source], tmp_path / "out", registry=REGISTRY)
    assert str(info.value) == (
        f"{source}: [0] has no 'desc'; expected a list "
        '[{"video_id": ..., "desc": "caption" or [captions]}]'
    )
