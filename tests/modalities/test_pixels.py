"""Pixel mean, std and size: the data spec's, else a pretrained checkpoint's, else ImageNet/224."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
)

from modaloom.core.data import build_processors
from modaloom.core.errors import SpecError
from modaloom.core.interfaces import DataContext, PretrainedInput
from modaloom.core.plugins import load_plugins
from modaloom.core.spec import load_spec
from modaloom.modalities.image import ImageProcessor, ImageSpec, make_image_processor
from modaloom.modalities.pixels import Pixels, checkpoint_pixels
from modaloom.modalities.transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from modaloom.modalities.video import VideoSpec, make_video_processor
from modaloom.tests.tiny import TINY_VIT

REGISTRY = load_plugins(entry_points=False)


def clip_checkpoint(directory: Path, side: int = 40) -> Path:
    """A tiny CLIP vision tower saved with CLIP's image processor (crop ``side``)."""
    CLIPVisionModel(CLIPVisionConfig(**TINY_VIT)).save_pretrained(directory)
    crop = {"height": side, "width": side}
    CLIPImageProcessor(size={"shortest_edge": side}, crop_size=crop).save_pretrained(directory)
    return directory


def context(field: str, checkpoint: Path) -> DataContext:
    return DataContext(pretrained={field: PretrainedInput("vision", str(checkpoint))})


def png(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_without_a_checkpoint_images_are_processed_exactly_as_before() -> None:
    unset = make_image_processor(ImageSpec(), DataContext())
    explicit = ImageProcessor(ImageSpec(size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD))
    assert unset.pixels == Pixels(IMAGENET_MEAN, IMAGENET_STD, 224)
    assert unset.config == explicit.config
    for train in (False, True):
        mine = unset.process(png(), key="k", train=train, rng=random.Random(1))
        before = explicit.process(png(), key="k", train=train, rng=random.Random(1))
        assert torch.equal(mine["pixel_values"], before["pixel_values"])


def test_clip_statistics_and_crop_come_from_the_checkpoint(tmp_path: Path) -> None:
    checkpoint = clip_checkpoint(tmp_path)
    video = make_video_processor(VideoSpec(frames=2), context("video", checkpoint))
    image = make_image_processor(ImageSpec(), context("image", checkpoint))
    assert (video.config.mean, video.config.std, video.config.size) == (CLIP_MEAN, CLIP_STD, 40)
    assert image.pixels == Pixels(CLIP_MEAN, CLIP_STD, 40)


def test_what_the_spec_sets_wins_over_the_checkpoint(tmp_path: Path) -> None:
    checkpoint = clip_checkpoint(tmp_path)
    spec = load_spec(
        "clip-tiny",
        [
            "model.components.vision.type=clip_vision",
            f"model.components.vision.pretrained={checkpoint}",
        ],
        REGISTRY,
    )
    image = build_processors(spec.data, REGISTRY, {}, None, spec.model)["image"]
    assert isinstance(image, ImageProcessor)
    assert image.pixels == Pixels(CLIP_MEAN, CLIP_STD, 32)  # clip-tiny sets data.image.size: 32


def test_a_vit_checkpoint_gives_its_resize_target(tmp_path: Path) -> None:
    ViTModel(ViTConfig(**TINY_VIT), add_pooling_layer=False).save_pretrained(tmp_path)
    half = [0.5, 0.5, 0.5]
    size = {"height": 48, "width": 48}
    ViTImageProcessor(size=size, image_mean=half, image_std=half).save_pretrained(tmp_path)
    assert checkpoint_pixels(str(tmp_path)) == {
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "size": 48,
    }


def test_a_checkpoint_without_a_preprocessor_config_leaves_the_defaults(tmp_path: Path) -> None:
    ViTModel(ViTConfig(**TINY_VIT), add_pooling_layer=False).save_pretrained(tmp_path)
    video = make_video_processor(VideoSpec(), context("video", tmp_path))
    assert (video.config.mean, video.config.std, video.config.size) == (
        IMAGENET_MEAN,
        IMAGENET_STD,
        224,
    )


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        (
            {"image_std": [0.5, 0.0, 0.5]},
            "image_std must be 3 numbers (std positive), got [0.5, 0.0, 0.5]",
        ),
        ({"size": 4}, "size must be at least 8 pixels, got 4"),
    ],
)
def test_an_unusable_preprocessor_config_is_a_spec_error(
    settings: dict[str, Any], problem: str, tmp_path: Path
) -> None:
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(settings))
    with pytest.raises(SpecError) as info:
        make_video_processor(VideoSpec(), context("video", tmp_path))
    assert str(info.value) == (
        "spec is invalid (1 problem):\n  data.video: preprocessor_config.json of "
        f"model.components.vision.pretrained {str(tmp_path)!r}: {problem}"
    )
