"""Video modality: PyAV decoding with seek-based frame sampling, torch transforms, collation.

Decoding lives in `modaloom.modalities.video_decode` (imported, PyAV with it, when the first
clip is decoded); this file holds the spec, the clip transform (built on the shared
`modaloom.modalities.transforms`, torch ops only, no torchvision) and the `Processor` the data
layer calls.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import DataContext, Processor, zeros_like_first
from modaloom.core.registry import Registry
from modaloom.core.spec_models import Spec
from modaloom.modalities.media_io import DEFAULT_MAX_PACKETS, DEFAULT_MAX_PIXELS, decoding
from modaloom.modalities.pixels import default_pixels, export_pixels, pixels, resolve_pixels
from modaloom.modalities.transforms import (
    center_crop_box,
    crop_resize,
    decode_side,
    normalize,
    random_resized_crop_box,
)


class VideoSpec(Spec):
    """How video fields are decoded and transformed (``data.video``)."""

    frames: int = Field(8, ge=1)
    """T, the number of frames sampled per clip (one per equal segment of the clip)."""
    size: int | None = Field(None, ge=1)
    """Side of the square output frames, in pixels; default: a pretrained vision checkpoint's
    (its ``preprocessor_config.json``), else 224 (`modaloom.modalities.pixels`)."""
    mean: tuple[float, float, float] | None = None
    """Per-channel mean subtracted after scaling to [0, 1]; default: a pretrained vision
    checkpoint's, else ImageNet's, as for images (a shared image/video encoder must see both
    normalised alike). CLIP's is (0.48145466, 0.4578275, 0.40821073)."""
    std: tuple[float, float, float] | None = None
    """Per-channel standard deviation (default as ``mean``); CLIP's is
    (0.26862954, 0.26130258, 0.27577711)."""
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
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    """Videos with larger frames (width x height, read from the stream) are skipped, not
    decoded."""

    @model_validator(mode="after")
    def _check_ranges(self) -> VideoSpec:
        low, high = self.crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if self.std is not None and min(self.std) <= 0.0:
            raise ValueError(f"std must be positive in every channel, got {self.std}")
        return self


def transform_clip(frames: Tensor, config: VideoSpec, *, train: bool, rng: random.Random) -> Tensor:
    """Crop, resize and normalise a clip; the same box (and flip) applies to every frame.

    Train: random resized crop (area ``crop_scale``, aspect 3/4 to 4/3) and a horizontal flip
    with probability 0.5 when ``flip``. Eval: the centred square, resized, which is the same as
    resizing the shorter side to ``size`` and centre-cropping.

    Args:
        frames: (T, 3, H, W) uint8 frames, or float32 in [0, 1].
        config: size, crop scale, flip and normalisation.
        train: training (random) or evaluation (deterministic) transform.
        rng: draws the crop box and the flip in training.

    Returns:
        (T, 3, size, size) float32 frames.
    """
    height, width = frames.shape[-2:]
    if train:
        box = random_resized_crop_box(width, height, rng, config.crop_scale)
    else:
        box = center_crop_box(width, height)
    mean, std, size = pixels(config)
    out = crop_resize(frames, box, size)  # crops, then uint8 -> [0, 1]
    if train and config.flip and rng.random() < 0.5:
        out = out.flip(-1)
    return normalize(out, mean, std)


class VideoProcessor(Processor):
    """Decodes a video field to ``{"pixel_values": (T, 3, size, size)}`` float frames."""

    def __init__(self, config: VideoSpec) -> None:
        self.config = default_pixels(config)

    def process(
        self, value: Any, *, key: str, train: bool, rng: random.Random
    ) -> dict[str, Tensor]:
        """Decode and transform one clip.

        Args:
            value: encoded video (bytes, local path or binary file object).
            key: sample key, for error messages.
            train: random frame times (per ``train_sampling``), crop and flip when True.
            rng: the sample's random generator; all randomness comes from it.

        Returns:
            ``{"pixel_values": (T, 3, size, size) float32}``.

        Raises:
            MediaDecodeError: unreadable container, no video stream, no frames, truncated file,
                frames over ``max_pixels``, or any other failure while decoding.
        """
        from modaloom.modalities.video_decode import decode_video  # lazily: PyAV with it

        config = self.config
        random_times = train and config.train_sampling == "random_segment"
        with decoding(key):
            frames = decode_video(
                value,
                config.frames,
                rng=rng if random_times else None,
                key=key,
                max_packets=config.max_packets,
                threads=config.decode_threads,
                max_pixels=config.max_pixels,
                min_side=decode_side(pixels(config).size, config.crop_scale[0]),
            )
            return {"pixel_values": transform_clip(frames, config, train=train, rng=rng)}

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

    def export(self, directory: Path) -> list[str]:
        """The frame transform as a `CLIPImageProcessor` (applied to each frame)."""
        return export_pixels(pixels(self.config), directory)


def make_video_processor(config: VideoSpec, ctx: DataContext) -> VideoProcessor:
    """Factory registered for the ``video`` modality (unset pixel settings resolved)."""
    return VideoProcessor(resolve_pixels(config, ctx, "video"))


@hookimpl
def modaloom_register_modalities(registry: Registry) -> None:
    """Register the ``video`` modality."""
    registry.add_modality(
        "video",
        make_video_processor,
        VideoSpec,
        description="PyAV video decoding with seek-based frame sampling",
    )
