"""`convert_dataset` (``modaloom data convert``): a plugin's converter through the registry,
manifests per split, missing media counted, shards packed and read back, CLI exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from modaloom.core.cli import main
from modaloom.core.convert import ConvertedItem, convert_dataset, split_of
from modaloom.core.errors import DataError, UnknownComponentError
from modaloom.core.plugins import load_plugins
from modaloom.core.registry import Registry
from modaloom.plugins.sources.webdataset import WebDatasetSource, WebDatasetSpec


def shapes_items(sources: Sequence[Path]) -> Iterator[ConvertedItem]:
    """A fixture format: each line of each source is ``<image file>\\t<caption>``."""
    for source in sources:
        for line in Path(source).read_text().splitlines():
            image, caption = line.split("\t")
            media = {"image": (image, f"more/{image}")}
            yield ConvertedItem(
                split_of(Path(source)), Path(image).stem, media, {"text": [caption]}
            )


@pytest.fixture
def registry() -> Registry:
    registry = Registry()
    registry.add_converter("shapes", shapes_items, description="a test format")
    return registry


@pytest.fixture
def sources(shapes_manifest: Path, tmp_path: Path) -> list[Path]:
    train, val = tmp_path / "train.tsv", tmp_path / "val.tsv"
    train.write_text("img0.png\ta red circle\nimg1.png\ta blue square\nimg99.png\tgone\n")
    val.write_text("img2.png\ta green circle\n")
    return [train, val]


def test_a_registered_converter_writes_manifests_and_a_report(
    registry: Registry, sources: list[Path], shapes_manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    report = convert_dataset("shapes", sources, out, shapes_manifest.parent, registry=registry)
    assert (report.items, report.missing) == ({"train": 2, "val": 1}, {"train": 1, "val": 0})
    assert report.missing_examples == [str(shapes_manifest.parent.absolute() / "img99.png")]
    saved = json.loads((out / "convert_report.json").read_text())
    assert saved["items"] == report.items and saved["missing"] == report.missing
    assert sorted(p.name for p in out.iterdir()) == [
        "convert_report.json",
        "train.jsonl",
        "val.jsonl",
    ]
    first = json.loads((out / "train.jsonl").read_text().splitlines()[0])
    assert (out / first["image"]).resolve() == (shapes_manifest.parent / "img0.png").resolve()


def test_shards_pack_each_split_for_the_webdataset_source(
    registry: Registry, sources: list[Path], shapes_manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    report = convert_dataset(
        "shapes", sources, out, shapes_manifest.parent, shards=True, registry=registry
    )
    assert report.shards == {
        "train": [str(out / "shards" / "train" / "shard-000000.tar")],
        "val": [str(out / "shards" / "val" / "shard-000000.tar")],
    }
    fields = report.shard_fields["train"]
    assert fields == {"image": "png", "item": "json.item", "text": "json.text"}
    spec = WebDatasetSpec(urls=report.shards["train"], fields=fields)
    read = [dict(sample) for sample in WebDatasetSource(spec).iter_raw()]
    assert [(s["item"], s["text"]) for s in read] == [
        ("img0", ["a red circle"]),
        ("img1", ["a blue square"]),
    ]
    assert read[1]["image"] == (shapes_manifest.parent / "img1.png").read_bytes()


def test_refusals(registry: Registry, sources: list[Path], tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        convert_dataset(
            "shapes", sources, tmp_path, keep_missing=True, shards=True, registry=registry
        )
    assert str(info.value) == (
        "--keep-missing cannot be packed into --shards: pass only one of them"
    )
    with pytest.raises(UnknownComponentError) as unknown:
        convert_dataset("shape", sources, tmp_path, registry=registry)
    assert (
        str(unknown.value) == "Unknown converter 'shape'. Did you mean 'shapes'? Available: shapes."
    )
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(DataError) as info:
        convert_dataset("shapes", [empty], tmp_path, registry=registry)
    assert str(info.value) == f"no shapes item in {empty}; pass the format's annotation files"


def test_split_of_reads_the_file_name() -> None:
    names = ["desc_val.json", "results_2M_val.csv", "test.csv", "train.csv", "x_validation.json"]
    assert [split_of(Path(name)) for name in names] == ["val", "val", "test", "train", "val"]


def test_cli_converts_and_exits_2_on_a_malformed_file(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert "vqav2" in load_plugins(entry_points=False).names("converter")
    source = tmp_path / "dataset_flickr30k.json"
    image = {"filename": "1.jpg", "split": "test", "sentences": [{"raw": "a dog", "tokens": []}]}
    source.write_text(json.dumps({"images": [image]}))
    (tmp_path / "1.jpg").write_bytes(b"jpeg")
    out = tmp_path / "out"
    assert main(["data", "convert", "flickr30k-karpathy", str(source), "--output", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"test: 1 items -> {out / 'test.jsonl'}",
        f"wrote {out / 'convert_report.json'}",
    ]
    source.write_text(json.dumps({"pictures": []}))
    assert main(["data", "convert", "flickr30k-karpathy", str(source), "--output", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: {source} has no 'images'; expected Karpathy's split file: {{images: [{{filepath, "
        "filename, split, sentences: [{raw, tokens}], cocoid}]}\n"
    )
