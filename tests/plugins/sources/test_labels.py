"""Label data for UniVLC: folders and manifests, prompts, disjoint label ranges, clear errors."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from torch import Tensor

from modaloom.core.data import SampleDecoder
from modaloom.core.errors import DataError
from modaloom.core.interfaces import DataContext, Processor
from modaloom.core.plugins import load_plugins
from modaloom.modalities.image import ImageSpec, make_image_processor
from modaloom.modalities.text import TextSpec, make_text_processor
from modaloom.plugins.sources.labels import (
    InMemorySource,
    LabelSource,
    LabelsSpec,
    assign_label_offsets,
    make_labels_source,
)

TEMPLATES = ["a photo of the {}.", "a blurry {}.", "art of the {}."]


def write_folder(root: Path, classes: dict[str, int]) -> Path:
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for index in range(count):
            Image.new("RGB", (8, 8), (index * 40, 0, 0)).save(root / name / f"{index}.png")
        (root / name / "notes.txt").write_text("not an image")
    return root


class Echo(Processor):
    """Reads any value; collates to zeros."""

    def process(
        self, value: Any, *, key: str, train: bool, rng: random.Random
    ) -> dict[str, Tensor]:
        return {"x": torch.zeros(1)}

    def collate(self, items: list[dict[str, Tensor] | None]) -> dict[str, Tensor]:
        return {"x": torch.zeros(len(items))}


def labels(root: Path, **options: object) -> LabelSource:
    return make_labels_source(LabelsSpec(root=str(root), templates=TEMPLATES, **options))


def test_folder_samples_carry_offset_labels_and_prompts(tmp_path: Path) -> None:
    source = labels(write_folder(tmp_path, {"golden_retriever": 2, "cat": 3}), label_offset=10)
    assert source.classes == ["cat", "golden_retriever"] and len(source) == 5
    sample = source[3]
    assert sample["__key__"] == "golden_retriever/0.png" and sample["label"] == 11
    assert Path(sample["image"]).is_file()
    assert sample["text"] == [
        "a photo of the golden retriever.",
        "a blurry golden retriever.",
        "art of the golden retriever.",
    ]
    assert source.class_prompts() == ["a photo of the cat.", "a photo of the golden retriever."]
    assert list(source.texts()) == [
        t.format(n) for n in ("cat", "golden retriever") for t in TEMPLATES
    ]
    assert source.label_range == range(10, 12)


def test_per_index_template_is_deterministic_and_varies(tmp_path: Path) -> None:
    root = write_folder(tmp_path, {"cat": 12})
    first, again = labels(root, pick_template="per_index"), labels(root, pick_template="per_index")
    texts = [first[i]["text"] for i in range(12)]
    assert texts == [again[i]["text"] for i in range(12)]
    assert set(texts) == {t.format("cat") for t in TEMPLATES}
    other_seed = labels(root, pick_template="per_index", seed=1)
    assert [other_seed[i]["text"] for i in range(12)] != texts


def test_text_processor_picks_a_random_prompt_in_training_and_the_first_in_eval(tmp_path) -> None:  # type: ignore[no-untyped-def]
    source = labels(write_folder(tmp_path, {"cat": 1}))
    text = make_text_processor(TextSpec(vocab_size=40), DataContext(texts=source.texts))
    processors = {"text": text, "image": make_image_processor(ImageSpec(size=8), DataContext())}
    raws = [(source[0], random.Random(seed)) for seed in range(12)]
    decoded_train, _ = SampleDecoder(processors, train=True).decode_many(raws)
    decoded_eval, _ = SampleDecoder(processors, train=False).decode_many(raws)
    as_text = [text.decode(d["text"]["input_ids"][None])[0] for d in decoded_train]
    assert set(as_text) == {t.format("cat") for t in TEMPLATES}
    assert {text.decode(d["text"]["input_ids"][None])[0] for d in decoded_eval} == {
        "a photo of the cat."
    }


def test_caption_pairs_are_batched_with_label_minus_one(tmp_path: Path) -> None:
    source = labels(write_folder(tmp_path, {"cat": 1, "dog": 1}), label_offset=5)

    decoder = SampleDecoder({"text": Echo()}, train=True)
    caption = {"__key__": "cap", "text": "a dog on a sofa"}
    decoded, _ = decoder.decode_many([(source[1], random.Random(0)), (caption, random.Random(0))])
    assert decoder.collate(decoded, [])["labels"].tolist() == [6, -1]


def test_manifest_with_indices_or_names(tmp_path: Path) -> None:
    write_folder(tmp_path / "img", {"a": 2})
    lines = [{"image": "img/a/0.png", "label": 1}, {"image": "img/a/1.png", "label": "zebra"}]
    manifest = tmp_path / "labels.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    spec = LabelsSpec(manifest=str(manifest), classes=["horse", "zebra"], templates=["a {}"])
    source = make_labels_source(spec)
    assert [(s["label"], s["text"]) for s in source.iter_raw()] == [(1, ["a zebra"])] * 2
    assert source[0]["image"] == str((tmp_path / "img/a/0.png").resolve())
    manifest.write_text(json.dumps({"id": "x7", "image": "img/a/0.png", "label": 2}) + "\n")
    with pytest.raises(DataError) as info:
        make_labels_source(spec)
    assert str(info.value) == (
        "label sample 'x7' has label 2, which is not a class index in [0, 2) nor a class name"
    )


def test_offsets_are_assigned_after_explicit_ranges_and_overlaps_fail(tmp_path: Path) -> None:
    def made(count: int, offset: int | None) -> LabelSource:
        base = InMemorySource(
            [{"__key__": f"k{i}", "image": b"", "label": i} for i in range(count)]
        )
        return LabelSource(base, [f"c{i}" for i in range(count)], ["{}"], label_offset=offset)

    sources = {
        "a": made(3, None),
        "captions": InMemorySource([]),
        "b": made(4, 100),
        "c": made(2, None),
    }
    assert assign_label_offsets(sources) == {"a": 104, "b": 100, "c": 107}
    assert sources["c"][1]["label"] == 108  # type: ignore[index]
    with pytest.raises(DataError) as info:
        assign_label_offsets({"x": made(5, 0), "y": made(2, 3)})
    assert str(info.value) == (
        "label sources 'x' (ids 0..4) and 'y' (ids 3..4) overlap; "
        "change label_offset so ids are disjoint"
    )


def test_spec_and_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="give exactly one of `root`"):
        LabelsSpec(root="a", manifest="b.jsonl", classes=["x"])
    with pytest.raises(ValidationError, match=re.escape("needs exactly one {} for the class name")):
        LabelsSpec(root="a", templates=["no placeholder"])
    with pytest.raises(DataError) as info:
        labels(tmp_path / "missing")
    assert str(info.value) == (
        f"label folder {str(tmp_path / 'missing')!r} does not exist; check data.sources.*.root"
    )
    with pytest.raises(DataError) as info:
        labels(write_folder(tmp_path / "f", {"cat": 1}), classes=["cat", "dog"])
    assert str(info.value) == f"class 'dog' has no folder {str(tmp_path / 'f' / 'dog')!r}"


def test_registered_as_a_source() -> None:
    registry = load_plugins(entry_points=False)
    component = registry.get("source", "labels")
    assert component.config is LabelsSpec and component.factory is make_labels_source
