"""``coco-karpathy`` and ``flickr30k-karpathy``: Karpathy's split files, with their real field
names, -> one manifest line per image with its captions, read back by the ``jsonl`` source."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modaloom.core.convert import convert_dataset
from modaloom.core.errors import DataError
from modaloom.core.plugins import load_plugins
from modaloom.plugins.evaluators.captioning import caption_references, item_of
from modaloom.plugins.sources.jsonl import JsonlSource, JsonlSpec

REGISTRY = load_plugins(entry_points=False)


def coco_image(cocoid: int, split: str, folder: str, captions: int = 5) -> dict[str, Any]:
    """One entry of dataset_coco.json as Karpathy's file holds it."""
    sentences = [
        {
            "tokens": ["a", "cat", str(n)],
            "raw": f"A cat number {n}.\n",
            "imid": cocoid,
            "sentid": cocoid * 10 + n,
        }
        for n in range(captions)
    ]
    return {
        "filepath": folder,
        "sentids": [s["sentid"] for s in sentences],
        "filename": f"COCO_{folder}_{cocoid:012d}.jpg",
        "imgid": cocoid,
        "split": split,
        "sentences": sentences,
        "cocoid": cocoid,
    }


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"jpeg")


def test_coco_splits_captions_items_and_a_missing_image(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    images = [
        coco_image(9, "train", "train2014"),
        coco_image(25, "restval", "val2014"),
        coco_image(42, "val", "val2014"),
        coco_image(73, "test", "val2014"),
        coco_image(74, "test", "val2014"),
    ]
    source = tmp_path / "karpathy" / "dataset_coco.json"
    source.parent.mkdir()
    source.write_text(json.dumps({"images": images, "dataset": "coco"}))
    coco = tmp_path / "coco"
    touch(coco, *(f"{i['filepath']}/{i['filename']}" for i in images if i["cocoid"] != 74))
    report = convert_dataset("coco-karpathy", [source], tmp_path / "out", coco, registry=REGISTRY)
    assert report.items == {"train": 2, "val": 1, "test": 1}
    assert report.captions == {"train": 10, "val": 5, "test": 5}
    assert report.missing == {"train": 0, "val": 0, "test": 1}
    missing = str(coco.absolute() / "val2014" / "COCO_val2014_000000000074.jpg")
    assert report.missing_examples == [missing]
    assert f"1 of 5 items have no media file under {coco.absolute()} (first: {missing})" in (
        caplog.text
    )
    line = json.loads((tmp_path / "out" / "test.jsonl").read_text())
    assert line == {
        "id": "73",
        "item": "73",
        "image": "../coco/val2014/COCO_val2014_000000000073.jpg",
        "text": [f"A cat number {n}." for n in range(5)],
    }
    samples = JsonlSource(JsonlSpec(path=str(tmp_path / "out" / "train.jsonl")))
    assert [s["__key__"] for s in samples.iter_raw()] == ["9", "25"]
    assert Path(samples[1]["image"]).read_bytes() == b"jpeg"
    assert item_of(samples[1]["__key__"], samples[1]) == "25"
    assert len(caption_references(samples[1])) == 5


def test_flickr_has_no_filepath_nor_cocoid(tmp_path: Path) -> None:
    images = []
    for index, (name, split) in enumerate([("1000092795", "train"), ("1007129816", "test")]):
        image = coco_image(index, split, "unused")
        del image["filepath"], image["cocoid"]
        images.append({**image, "filename": f"{name}.jpg"})
    source = tmp_path / "dataset_flickr30k.json"
    source.write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    touch(tmp_path / "flickr30k-images", "1000092795.jpg", "1007129816.jpg")
    report = convert_dataset(
        "flickr30k-karpathy",
        [source],
        tmp_path / "out",
        tmp_path / "flickr30k-images",
        registry=REGISTRY,
    )
    assert report.items == {"train": 1, "test": 1} and sum(report.missing.values()) == 0
    line = json.loads((tmp_path / "out" / "test.jsonl").read_text())
    assert (line["id"], line["image"]) == ("1007129816", "../flickr30k-images/1007129816.jpg")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "{not json",
            " is not a readable JSON file (Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)); pass dataset_coco.json",
        ),
        (
            json.dumps({"images": [{"filename": "a.jpg", "split": "train"}]}),
            ": images[0] has no 'sentences'; expected Karpathy's split file: {images: [{filepath, "
            "filename, split, sentences: [{raw, tokens}], cocoid}]}",
        ),
        (
            json.dumps({"images": [{"filename": "a.jpg", "split": "dev", "sentences": []}]}),
            ": images[0] has split 'dev'; expected one of ['train', 'restval', 'val', 'test']",
        ),
    ],
)
def test_a_malformed_file_is_one_data_error(tmp_path: Path, content: str, message: str) -> None:
    source = tmp_path / "dataset_coco.json"
    source.write_text(content)
    with pytest.raises(DataError) as info:
        convert_dataset("coco-karpathy", [source], tmp_path / "out", registry=REGISTRY)
    assert str(info.value) == f"{source}{message}"
