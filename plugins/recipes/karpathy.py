"""``coco-karpathy`` and ``flickr30k-karpathy``: Karpathy's split files (dataset_coco.json,
dataset_flickr30k.json) -> one manifest line per image with its (5) captions.

The file holds ``{"images": [{"filepath": "val2014", "filename": "COCO_val2014_...jpg",
"split": "train|restval|val|test", "sentences": [{"raw": ..., "tokens": [...]}, ...],
"cocoid": 391895, ...}]}``; Flickr30K's images have no ``filepath`` nor ``cocoid`` (the image
id is the file name's stem). ``restval`` joins ``train`` (the papers' 113K COCO training
images); ``val`` and ``test`` are the 5K / 1K splits. Images are found at
``MEDIA_ROOT/<filepath>/<filename>`` (COCO: the folder holding ``train2014/`` and ``val2014/``)
or ``MEDIA_ROOT/<filename>`` (Flickr30K's ``flickr30k-images/``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from modaloom.core.convert import ConvertedItem, captions, read_json, require
from modaloom.core.errors import DataError
from modaloom.core.hookspecs import hookimpl
from modaloom.core.registry import Registry

SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
"""Karpathy split -> manifest."""
LAYOUT = (
    "Karpathy's split file: {images: [{filepath, filename, split, sentences: [{raw, tokens}], "
    "cocoid}]}"
)


def karpathy_items(path: Path, dataset: str) -> Iterator[ConvertedItem]:
    """The images of one Karpathy split file, one item each (raises `DataError`)."""
    data = require(read_json(path, f"dataset_{dataset}.json"), ["images"], str(path), LAYOUT)
    if not isinstance(data["images"], list):
        raise DataError(f"{path}: 'images' is not a list; expected {LAYOUT}")
    for index, image in enumerate(data["images"]):
        where = f"{path}: images[{index}]"
        require(image, ["filename", "split", "sentences"], where, LAYOUT)
        split = SPLITS.get(image["split"])
        if split is None:
            raise DataError(f"{where} has split {image['split']!r}; expected one of {list(SPLITS)}")
        filename = str(image["filename"])
        key = str(image["cocoid"] if "cocoid" in image else Path(filename).stem)
        relative = f"{image['filepath']}/{filename}" if image.get("filepath") else filename
        yield ConvertedItem(split, key, {"image": (relative,)}, {"text": _raw(image, where)})


def _raw(image: dict[str, Any], where: str) -> list[str]:
    sentences = image["sentences"]
    if not isinstance(sentences, list) or not all(isinstance(s, dict) for s in sentences):
        raise DataError(f"{where}: 'sentences' is not a list of objects; expected {LAYOUT}")
    raw = [s.get("raw") or " ".join(s.get("tokens", [])) for s in sentences]
    return captions(raw)


def _one_file(sources: Sequence[Path], name: str) -> Path:
    if len(sources) != 1:
        raise DataError(f"{name} reads one file (dataset_*.json), got {len(sources)}")
    return Path(sources[0])


def convert_coco(sources: Sequence[Path]) -> Iterator[ConvertedItem]:
    """``coco-karpathy``: dataset_coco.json."""
    return karpathy_items(_one_file(sources, "coco-karpathy"), "coco")


def convert_flickr30k(sources: Sequence[Path]) -> Iterator[ConvertedItem]:
    """``flickr30k-karpathy``: dataset_flickr30k.json."""
    return karpathy_items(_one_file(sources, "flickr30k-karpathy"), "flickr30k")


@hookimpl
def modaloom_register_converters(registry: Registry) -> None:
    """Register the Karpathy-split COCO and Flickr30K formats."""
    registry.add_converter(
        "coco-karpathy",
        convert_coco,
        description="COCO captions, Karpathy splits (train+restval, 5K val, 5K test)",
    )
    registry.add_converter(
        "flickr30k-karpathy",
        convert_flickr30k,
        description="Flickr30K captions, Karpathy splits (29K train, 1K val, 1K test)",
    )
