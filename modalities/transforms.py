"""Spatial transforms shared by the image and video processors (no torchvision needed)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Box = tuple[int, int, int, int]
"""(left, top, width, height) in pixels."""


def random_resized_crop_box(
    width: int,
    height: int,
    rng: random.Random,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Box:
    """Pick a crop covering ``scale`` of the area with aspect ``ratio`` (Inception-style).

    Falls back to the largest centred crop of the clamped ratio after 10 tries, as torchvision does.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    aspect = min(max(width / height, ratio[0]), ratio[1])
    w, h = (
        (width, round(width / aspect))
        if width / height < aspect
        else (round(height * aspect), height)
    )
    w, h = min(w, width), min(h, height)
    return (width - w) // 2, (height - h) // 2, w, h


def center_crop_box(width: int, height: int) -> Box:
    """The largest centred square."""
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side, side


def decode_side(size: int, min_scale: float) -> int | None:
    """Shortest side worth decoding for ``size`` outputs from crops of ``min_scale`` of the area.

    Twice the side of the smallest crop that still gives ``size`` pixels, so a picture reduced
    to it is still downsampled by the crop and resize (its detail is kept). ``None`` (decode
    at full resolution) when crops can be arbitrarily small.
    """
    if min_scale <= 0.0:
        return None
    return math.ceil(2 * size / math.sqrt(min_scale))


def reduction_factor(width: int, height: int, min_side: int | None) -> int:
    """Largest integer factor that keeps the shorter side at ``min_side`` or more (1: none).

    Pictures whose shorter side is under ``2 * min_side`` are never reduced, so they decode
    exactly as at full resolution.
    """
    if min_side is None:
        return 1
    return max(1, min(width, height) // min_side)


def crop_resize(pixels: Tensor, box: Box, size: int) -> Tensor:
    """Crop ``box`` from (..., C, H, W) pixels and resize it to (..., C, size, size) float.

    ``pixels`` are float in [0, 1] or uint8; uint8 ones are converted after cropping, so no
    float copy of the whole picture is made.
    """
    left, top, w, h = box
    cropped = pixels[..., top : top + h, left : left + w]
    if not cropped.is_floating_point():
        cropped = cropped.float().div_(255.0)
    flat = cropped.reshape(-1, *cropped.shape[-3:])
    resized = torch.nn.functional.interpolate(
        flat, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return resized.reshape(*cropped.shape[:-2], size, size)


def normalize(pixels: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(..., 3, H, W) in [0, 1] -> standardised per channel."""
    mean_t = torch.tensor(mean, dtype=pixels.dtype).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype).view(3, 1, 1)
    return (pixels - mean_t) / std_t


def augment(
    pixels: Tensor,
    size: int,
    *,
    train: bool,
    rng: random.Random,
    scale: tuple[float, float] = (0.5, 1.0),
    flip: bool = True,
) -> Tensor:
    """Train: random resized crop + optional flip; eval: centre crop. Same box for all frames.

    Args:
        pixels: (..., 3, H, W) float in [0, 1] or uint8 (an image, or T frames of a clip).
        size: output side length.

    Returns:
        (..., 3, size, size) float.
    """
    height, width = pixels.shape[-2:]
    if train:
        box = random_resized_crop_box(width, height, rng, scale)
        out = crop_resize(pixels, box, size)
        if flip and rng.random() < 0.5:
            out = out.flip(-1)
        return out
    return crop_resize(pixels, center_crop_box(width, height), size)
