"""`modaloom.load(run)`: media in memory, and the processors as callables for one's own loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from modaloom.core.inference import Pipeline, load_run
from modaloom.core.registry import Registry
from modaloom.core.runner import train
from modaloom.core.spec import load_spec


@pytest.fixture(scope="module")
def pipeline(registry: Registry, shapes_manifest: Path, tmp_path_factory) -> Pipeline:  # type: ignore[no-untyped-def]
    run = tmp_path_factory.mktemp("run")
    spec = load_spec(
        "clip-tiny", [f"data.sources.train.path={shapes_manifest}", "train.steps=2"], registry
    )
    train(spec, run, registry=registry, show_progress=False)
    return Pipeline(load_run(run, registry=registry, device="cpu", with_sources=False))


def shapes(manifest: Path, count: int = 3) -> tuple[list[Path], list[str]]:
    lines = [json.loads(line) for line in manifest.read_text().splitlines()[:count]]
    return [manifest.parent / line["image"] for line in lines], [line["text"] for line in lines]


def test_embed_takes_paths_bytes_pil_numpy_and_tensors_alike(
    pipeline: Pipeline, shapes_manifest: Path
) -> None:
    paths, _ = shapes(shapes_manifest)
    expected = pipeline.embed("image", paths)
    pictures = [Image.open(path).convert("RGB") for path in paths]
    arrays = [np.asarray(picture) for picture in pictures]
    for values in (
        [path.read_bytes() for path in paths],
        pictures,
        arrays,
        [torch.from_numpy(a.copy()).permute(2, 0, 1) for a in arrays],
        [torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255.0 for a in arrays],
    ):
        torch.testing.assert_close(pipeline.embed("image", values), expected, atol=1e-5, rtol=0)
    scores = pipeline.score(["a red circle"], pictures)
    torch.testing.assert_close(scores, pipeline.score(["a red circle"], paths))


def test_processors_in_a_dataloader_give_the_embeddings_of_embed(
    pipeline: Pipeline, shapes_manifest: Path
) -> None:
    paths, captions = shapes(shapes_manifest)
    image, text = pipeline.processors["image"], pipeline.processors["text"]
    one = image(Image.open(paths[0]))
    assert set(one) == {"pixel_values"} and one["pixel_values"].shape == (3, 32, 32)
    loader = DataLoader(
        [Image.open(path).convert("RGB") for path in paths],
        batch_size=2,
        collate_fn=lambda items: image.collate([image(item) for item in items]),
    )
    embedded = torch.cat([pipeline.embed_processed("image", batch) for batch in loader])
    torch.testing.assert_close(embedded, pipeline.embed("image", paths), atol=1e-6, rtol=0)
    batch = text.collate([text(caption) for caption in captions])
    torch.testing.assert_close(
        pipeline.embed_processed("text", batch), pipeline.embed("text", captions)
    )
