"""`pack_manifest` writes shards the webdataset source reads back; `inspect_url` shows them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from modaloom.core.cli import main
from modaloom.core.data_commands import inspect_url, pack_manifest
from modaloom.core.errors import DataError
from modaloom.core.interfaces import DataContext
from modaloom.modalities.image import ImageSpec, make_image_processor
from modaloom.plugins.sources.jsonl import JsonlSource, JsonlSpec
from modaloom.plugins.sources.webdataset import WebDatasetSource, WebDatasetSpec


def test_pack_then_read_back_every_sample(shapes_manifest: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    packed_shards = pack_manifest(shapes_manifest, tmp_path / "out", shard_size=40, progress=True)
    shards = packed_shards.shards
    assert [p.name for p in shards] == [f"shard-{i:06d}.tar" for i in range(3)]
    assert "pack" in capsys.readouterr().err  # the tqdm bar
    assert packed_shards.fields == {"image": "png", "text": "json.text"}
    fields = {**packed_shards.fields, "id": "json.id"}
    packed = WebDatasetSource(WebDatasetSpec(urls=[str(p) for p in shards], fields=fields))
    read = [dict(sample) for sample in packed.iter_raw()]
    original = JsonlSource(JsonlSpec(path=str(shapes_manifest)))
    assert len(read) == len(original) == 96
    for index, sample in enumerate(read):
        expected = original[index]
        assert sample["__key__"] == f"{index:09d}" and sample["id"] == expected["__key__"]
        assert sample["text"] == expected["text"]
        assert sample["image"] == Path(expected["image"]).read_bytes()


def test_pack_reports_an_unreadable_media_file(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "s1", "image": "gone.png", "text": "t"}) + "\n")
    with pytest.raises(DataError) as info:
        pack_manifest(manifest, tmp_path / "out", shard_size=10, progress=False)
    missing = (tmp_path / "gone.png").resolve()
    assert (
        str(info.value)
        == f"cannot read image of sample 's1': No such file or directory ({missing})"
    )


def test_inspect_shows_members_and_decoded_shapes(shapes_manifest: Path, tmp_path: Path) -> None:
    pack_manifest(shapes_manifest, tmp_path, shard_size=50, progress=False)
    url = str(tmp_path / "shard-{000000..000001}.tar")
    plain = inspect_url(url, limit=2)
    assert [s["__key__"] for s in plain] == ["000000000", "000000001"]
    assert set(plain[0]["members"]) == {"png", "json", "txt"} and plain[0]["members"]["png"] > 0
    assert plain[0]["json"]["id"] == "train.jsonl:1"
    processors = {"image": make_image_processor(ImageSpec(size=16), DataContext())}
    decoded = inspect_url(url, limit=1, fields={"image": "png"}, processors=processors)
    assert decoded[0]["shapes"] == {"image": {"pixel_values": [3, 16, 16]}}
    assert decoded[0]["errors"] == {}
    with pytest.raises(DataError, match="cannot open webdataset shard"):
        inspect_url(str(tmp_path / "nothing.tar"))


def test_the_webdataset_package_decodes_packed_shards(tmp_path: Path) -> None:
    Image.new("RGB", (6, 4), (255, 0, 0)).save(tmp_path / "red.jpg")
    Image.new("RGB", (5, 3), (0, 0, 255)).save(tmp_path / "blue.png")
    (tmp_path / "clip.mp4").write_bytes(b"mp4 bytes")
    lines = [
        {"id": "a", "image": "red.jpg", "text": "a red box", "label": 3},
        {"id": "b", "image": "blue.png", "text": ["a blue box", "blue"], "label": 4},
        {"id": "c", "video": "clip.mp4", "audio": "clip.mp4", "text": "a clip"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    packed = pack_manifest(manifest, tmp_path / "out", progress=False)
    assert packed.fields == {
        "image": "jpg;png",
        "video": "mp4",
        "audio": "mp4",
        "text": "json.text",
        "label": "json.label",
    }
    read = list(wds.WebDataset(str(packed.shards[0]), shardshuffle=False).decode("pil"))
    assert [sorted(k for k in s if not k.startswith("__")) for s in read] == [
        ["cls", "jpg", "json", "txt"],
        ["cls", "json", "png"],
        ["json", "mp4", "txt"],
    ]
    assert read[0]["jpg"].size == (6, 4) and read[1]["png"].getpixel((0, 0)) == (0, 0, 255)
    assert (read[0]["txt"], read[0]["cls"], read[1]["json"]["text"]) == (
        "a red box",
        3,
        ["a blue box", "blue"],
    )
    assert read[2]["mp4"] == b"mp4 bytes" and read[2]["json"] == {"id": "c", "text": "a clip"}


def test_cli_pack_prints_the_fields_that_read_the_shards(
    shapes_manifest: Path, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    assert (
        main(["data", "pack", str(shapes_manifest), "--output", str(out), "--shard-size", "50"])
        == 0
    )
    assert capsys.readouterr().out.splitlines() == [
        f"wrote 2 shard(s) to {out}",
        'read them with fields: {"image": "png", "text": "json.text"}',
    ]
