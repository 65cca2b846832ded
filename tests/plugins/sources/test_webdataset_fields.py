"""The webdataset source's ``fields``: ``;`` alternatives, and img2dataset / video2dataset shards
(``NNN.jpg|png|webp``, ``NNN.txt``, ``NNN.json``) read and trained with the default mapping."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from modaloom.core.data import SampleDecoder
from modaloom.core.interfaces import DataContext
from modaloom.core.plugins import load_plugins
from modaloom.core.runner import train
from modaloom.core.spec import load_spec
from modaloom.modalities.image import ImageSpec, make_image_processor
from modaloom.plugins.sources.webdataset import (
    DEFAULT_FIELDS,
    WebDatasetSource,
    WebDatasetSpec,
    member_candidates,
)

FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


def img2dataset_shard(path: Path, count: int) -> Path:
    """A shard laid out as img2dataset writes one: ``000000000.jpg`` (or png, webp), ``.txt``
    caption and ``.json`` metadata; the image format cycles through jpg, png, webp."""
    with tarfile.open(path, "w") as tar:
        for index in range(count):
            ext = list(FORMATS)[index % 3]
            image = io.BytesIO()
            Image.new("RGB", (8 + index, 6), (index * 20, 0, 0)).save(image, FORMATS[ext])
            caption = f"a red square number {index}"
            meta = {"url": f"http://x/{index}.{ext}", "caption": caption, "status": "success"}
            members = {
                ext: image.getvalue(),
                "txt": caption.encode(),
                "json": json.dumps(meta).encode(),
            }
            for member, payload in members.items():
                info = tarfile.TarInfo(f"{index:09d}.{member}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return path


def test_member_candidates_try_each_alternative_in_order() -> None:
    assert member_candidates("jpg;png") == [("jpg", []), ("png", [])]
    assert member_candidates("json.caption;txt") == [
        ("json.caption", []),
        ("json", ["caption"]),
        ("txt", []),
    ]


def test_img2dataset_shards_read_with_the_default_fields(tmp_path: Path) -> None:
    shard = img2dataset_shard(tmp_path / "00000.tar", 6)
    spec = WebDatasetSpec(urls=str(shard))
    assert spec.fields == DEFAULT_FIELDS and spec.optional_fields == ["image", "video", "audio"]
    samples = [dict(sample) for sample in WebDatasetSource(spec).iter_raw()]
    assert [sorted(s) for s in samples] == [["__key__", "__url__", "image", "text"]] * 6
    assert [Image.open(io.BytesIO(s["image"])).format for s in samples] == [
        "JPEG",
        "PNG",
        "WEBP",
    ] * 2
    assert samples[4]["text"] == "a red square number 4"
    processor = make_image_processor(ImageSpec(size=16), DataContext())
    decoded = SampleDecoder({"image": processor}, train=False).decode(samples[2], random.Random(0))
    assert decoded["image"]["pixel_values"].shape == (3, 16, 16)


def test_alternatives_pick_the_first_present_member(tmp_path: Path) -> None:
    shard = img2dataset_shard(tmp_path / "00000.tar", 3)
    fields = {"image": "webp;png;jpg", "text": "json.caption;txt"}
    read = [
        dict(s) for s in WebDatasetSource(WebDatasetSpec(urls=str(shard), fields=fields)).iter_raw()
    ]
    assert [Image.open(io.BytesIO(s["image"])).format for s in read] == ["JPEG", "PNG", "WEBP"]
    assert read[1]["text"] == "a red square number 1"
    with pytest.raises(ValidationError) as info:
        WebDatasetSpec(urls=str(shard), fields={"image": "jpg;;png"})
    assert info.value.errors()[0]["msg"] == (
        "Value error, fields.image is 'jpg;;png'; write a member like json.caption, or "
        "alternatives like jpg;png"
    )


def test_clip_tiny_trains_on_img2dataset_shards_without_a_fields_mapping(tmp_path: Path) -> None:
    urls = [str(img2dataset_shard(tmp_path / f"{i:05d}.tar", 8)) for i in range(2)]
    registry = load_plugins(entry_points=False)
    source = {"type": "webdataset", "urls": urls}
    overrides = [f"data.sources.train={json.dumps(source)}", "train.steps=2", "data.batch_size=4"]
    spec = load_spec("clip-tiny", [*overrides, "data.num_workers=0"], registry)
    result = train(spec, tmp_path / "run", registry=registry, show_progress=False)
    assert result.step == 2 and result.skipped_samples == 0
