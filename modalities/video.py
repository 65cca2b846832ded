"""Video modality: PyAV decoding with seek-based frame sampling, torch transforms, collation.

Decoding lives in `modaloom.modalities.video_decode`; this file holds the spec, the train and
eval transforms (torch ops only, no torchvision) and the `Processor` the data layer calls.
"""

from __future__ import annotations

import math
import random
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import DataContext, Processor, zeros_like_first
from modaloom.core.registry import Registry
from modaloom.core.spec_models import Spec
from modaloom.modalities.video_decode import DEFAULT_MAX_PACKETS, decode_video

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VideoSpec(Spec):
    """How video fields are decoded and transformed (``data.video``)."""

    frames: int = Field(8, ge=1)
    """T, the number of frames sampled per clip (one per equal segment of the clip)."""
    size: int = Field(224, ge=1)
    """Side of the square output frames, in pixels."""
    mean: tuple[float, float, float] = CLIP_MEAN
    """Per-channel mean subtracted after scaling to [0, 1] (CLIP's; ImageNet's is
    (0.485, 0.456, 0.406))."""
    std: tuple[float, float, float] = CLIP_STD
    """Per-channel standard deviation (CLIP's; ImageNet's is (0.229, 0.224, 0.225))."""
    train_sampling: Literal["random_segment", "uniform"] = "random_segment"
    """Training frame times: a random time in each segment, or the segment centres."""
    crop_scale: tuple[float, float] = (0.5, 1.0)
    """Training random-resized-crop area range, as fractions of the frame area."""
    flip: bool = True
    """Training: flip the whole clip horizontally with probability 0.5."""
    max_packets: int = Field(DEFAULT_MAX_PACKETS, ge=1)
    """Packets demuxed per sampled frame before a file is declared undecodable."""
    decode_threads: int = Field(1, ge=0)
    """Decoder threads per sample (1 suits DataLoader workers; 0 lets FFmpeg choose)."""

    @model_validator(mode="after")
    def _check_ranges(self) -> VideoSpec:
        low, high = self.crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if min(self.std) <= 0.0:
            raise ValueError(f"std must be positive in every channel, got {self.std}")
        return self


def _normalize(frames: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """Scale (T, 3, H, W) values in [0, 255] to [0, 1], then standardise per channel."""
    mean_t = torch.tensor(mean, dtype=frames.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=frames.dtype).view(1, 3, 1, 1)
    return (frames / 255.0 - mean_t) / std_t


def _resize(frames: Tensor, height: int, width: int) -> Tensor:
    """Bilinear (antialiased) resize of (T, 3, H, W) uint8 or float frames to float."""
    frames = frames.float()
    if frames.shape[-2:] == (height, width):
        return frames
    return F.interpolate(
        frames, size=(height, width), mode="bilinear", align_corners=False, antialias=True
    )


def random_crop_box(
    height: int, width: int, scale: tuple[float, float], rng: random.Random
) -> tuple[int, int, int, int]:
    """A random-resized-crop box ``(top, left, h, w)`` (aspect ratio 3/4 to 4/3).

    Ten tries at a random area and log-uniform aspect ratio; then the centred largest box
    with a ratio in range, as torchvision does.
    """
    area = height * width
    log_low, log_high = math.log(3 / 4), math.log(4 / 3)
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(log_low, log_high))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    ratio = width / height
    if ratio < 3 / 4:
        w, h = width, round(width / (3 / 4))
    elif ratio > 4 / 3:
        h, w = height, round(height * 4 / 3)
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def train_transform(frames: Tensor, config: VideoSpec, rng: random.Random) -> Tensor:
    """Random resized crop (one box for the whole clip), optional flip, normalisation.

    Args:
        frames: (T, 3, H, W) uint8 frames.
        config: sizes, crop scale, flip and normalisation.
        rng: draws the crop box and the flip.

    Returns:
        (T, 3, size, size) float32 frames.
    """
    top, left, h, w = random_crop_box(frames.shape[-2], frames.shape[-1], config.crop_scale, rng)
    out = _resize(frames[..., top : top + h, left : left + w], config.size, config.size)
    if config.flip and rng.random() < 0.5:
        out = out.flip(-1)
    return _normalize(out, config.mean, config.std)


def eval_transform(frames: Tensor, config: VideoSpec) -> Tensor:
    """Resize the shorter side to ``size``, centre-crop a square, normalise.

    Args:
        frames: (T, 3, H, W) uint8 frames.
        config: output size and normalisation.

    Returns:
        (T, 3, size, size) float32 frames.
    """
    height, width = frames.shape[-2:]
    short = min(height, width)
    new_h = max(config.size, round(height * config.size / short))
    new_w = max(config.size, round(width * config.size / short))
    out = _resize(frames, new_h, new_w)
    top, left = (new_h - config.size) // 2, (new_w - config.size) // 2
    out = out[..., top : top + config.size, left : left + config.size]
    return _normalize(out, config.mean, config.std)


class VideoProcessor(Processor):
    """Decodes a video field to ``{"pixel_values": (T, 3, size, size)}`` float frames."""

    def __init__(self, config: VideoSpec) -> None:
        self.config = config

    def process(self, value: Any, *, key: str, train: bool, rng: random.Random) -> dict[str, Tensor]:
        """Decode and transform one clip.

        Args:
            value: encoded video (bytes, local path or binary file object).
            key: sample key, for error messages.
            train: random frame times (per ``train_sampling``), crop and flip when True.
            rng: the sample's random generator; all randomness comes from it.

        Returns:
            ``{"pixel_values": (T, 3, size, size) float32}``.

        Raises:
            MediaDecodeError: unreadable container, no video stream, no frames, truncated file.
        """
        config = self.config
        random_times = train and config.train_sampling == "random_segment"
        frames = decode_video(
            value,
            config.frames,
            rng=rng if random_times else None,
            key=key,
            max_packets=config.max_packets,
            threads=config.decode_threads,
        )
        pixels = train_transform(frames, config, rng) if train else eval_transform(frames, config)
        return {"pixel_values": pixels}

    def collate(self, items: list[dict[str, Tensor] | None]) -> dict[str, Tensor]:
        """Stack clips into ``{"pixel_values": (B, T, 3, H, W), "present": (B,) bool}``.

        Missing clips (``None``) are zero-filled and marked absent.
        """
        if all(item is None for item in items):
            raise ValueError("collate needs at least one present video")
        empty = zeros_like_first(items)
        present = torch.tensor([item is not None for item in items], dtype=torch.bool)
        pixels = torch.stack([(empty if item is None else item)["pixel_values"] for item in items])
        return {"pixel_values": pixels, "present": present}


def make_video_processor(config: VideoSpec, ctx: DataContext) -> VideoProcessor:
    """Factory registered for the ``video`` modality (``ctx`` is unused: nothing is learned)."""
    return VideoProcessor(config)


@hookimpl
def modaloom_register_modalities(registry: Registry) -> None:
    """Register the ``video`` modality."""
    registry.add(
        "modality",
        "video",
        make_video_processor,
        VideoSpec,
        description="PyAV video decoding with seek-based frame sampling",
    )
