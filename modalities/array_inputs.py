"""In-memory media: PIL images, numpy arrays and tensors, beside the encoded bytes, paths and
file objects that are decoded.

`decode_image`, `decode_video` and `decode_audio` hand any value that is not encoded media
(`is_encoded`) to the functions below, so every processor, `modaloom.load`'s `Pipeline` and a
source yielding arrays accept them. The conventions are torchvision's and torchaudio's:

- image: a PIL image (any mode, converted to RGB), or an array or tensor shaped (3, H, W) or
  (H, W, 3) (also (1, H, W), (H, W, 1) and (H, W) greyscale): ``uint8`` in 0..255 or float in
  [0, 1].
- video: (T, 3, H, W) or (T, H, W, 3) with the image dtypes, or a list of T images.
- audio: ``(waveform, sample_rate)`` (what ``torchaudio.load`` returns), the waveform shaped
  (channels, samples) or (samples,): float in [-1, 1] or integer PCM (``int16``, ``int32``).
  Channels are averaged as decoded audio is. A bare waveform is taken to be at
  ``data.audio.sample_rate``.

What changes a user's values beyond the transform applied to decoded media is logged once at
WARNING: audio resampled to ``data.audio.sample_rate`` (or a bare waveform assumed to be at it)
and video arrays whose frame count differs from ``data.video.frames`` (frames are then picked
by the segment rule of decoded video).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torchaudio.functional
from PIL import Image
from torch import Tensor

from modaloom.core.errors import MediaDecodeError
from modaloom.modalities.media_io import check_pixels

log = logging.getLogger(__name__)

_warned: set[str] = set()

ENCODED = (bytes, bytearray, memoryview, str, os.PathLike, io.IOBase)
"""Values that are encoded media (decoded with PIL or PyAV), not pixels or samples."""


def warn_once(topic: str, message: str, *args: Any) -> None:
    """Log ``message`` at WARNING the first time ``topic`` comes up in this process."""
    if topic not in _warned:
        _warned.add(topic)
        log.warning(message + " (logged once)", *args)


def is_encoded(value: Any) -> bool:
    """Whether ``value`` is encoded media (bytes, a path, a binary file object)."""
    return isinstance(value, ENCODED) or hasattr(value, "read")


def as_tensor(value: Any, key: str) -> Tensor:
    """A numpy array, tensor or PIL image as a CPU tensor (no copy of a writable array)."""
    if isinstance(value, Image.Image):
        value = np.array(value.convert("RGB"))
    if isinstance(value, np.ndarray):
        writable = value if value.flags.writeable else value.copy()  # torch refuses read-only
        return torch.from_numpy(np.ascontiguousarray(writable))
    if isinstance(value, Tensor):
        return value.detach().cpu()
    raise MediaDecodeError(
        key,
        "expected bytes, a path, a binary file object, a PIL image, a numpy array or a tensor, "
        f"got {type(value).__name__}",
    )


def _pixel_range(pixels: Tensor, key: str) -> Tensor:
    """uint8 as it is; floats checked to lie in [0, 1] (as float32)."""
    if pixels.dtype == torch.uint8:
        return pixels
    if not pixels.is_floating_point():
        raise MediaDecodeError(key, f"pixels must be uint8 or float, got {pixels.dtype}")
    pixels = pixels.float()
    if pixels.numel() and (pixels.min() < 0.0 or pixels.max() > 1.0):
        raise MediaDecodeError(
            key,
            f"float pixels must lie in [0, 1], got {float(pixels.min()):.3g}.."
            f"{float(pixels.max()):.3g}; pass uint8 (0-255) or divide by 255 (the processor "
            "normalises them itself)",
        )
    return pixels


def _channels_first(pixels: Tensor, key: str) -> Tensor:
    """(..., 3, H, W) from (..., C, H, W), (..., H, W, C) with C in (1, 3), or (H, W)."""
    if pixels.dim() == 2:
        pixels = pixels.unsqueeze(0)
    if pixels.shape[-3] in (1, 3):
        chw = pixels
    elif pixels.shape[-1] in (1, 3):
        chw = pixels.movedim(-1, -3)
    else:
        shape = tuple(pixels.shape)
        raise MediaDecodeError(
            key,
            f"cannot tell the channels of pixels shaped {shape}; expected (3, H, W) or (H, W, 3)",
        )
    return chw.expand(*chw.shape[:-3], 3, *chw.shape[-2:]) if chw.shape[-3] == 1 else chw


def image_pixels(value: Any, key: str, max_pixels: int) -> Tensor:
    """An in-memory image as (3, H, W) pixels: ``uint8``, or ``float32`` in [0, 1].

    Raises:
        MediaDecodeError: another type, shape or range, or more than ``max_pixels`` pixels.
    """
    pixels = as_tensor(value, key)
    if pixels.dim() not in (2, 3):
        raise MediaDecodeError(
            key, f"an image has 2 or 3 dimensions, got shape {tuple(pixels.shape)}"
        )
    pixels = _pixel_range(_channels_first(pixels, key), key)
    check_pixels(pixels.shape[-1], pixels.shape[-2], max_pixels, key, "image")
    return pixels


def video_pixels(value: Any, key: str, max_pixels: int) -> Tensor:
    """In-memory video as (T, 3, H, W) pixels: ``uint8``, or ``float32`` in [0, 1].

    Raises:
        MediaDecodeError: another type, shape or range, or frames over ``max_pixels``.
    """
    if isinstance(value, Sequence) and not isinstance(value, str):
        frames = [image_pixels(frame, key, max_pixels) for frame in value]
        if not frames or len({tuple(f.shape) for f in frames}) != 1:
            raise MediaDecodeError(key, "a list of video frames needs frames of one size")
        if len({f.dtype for f in frames}) != 1:
            frames = [f.float() / 255.0 if f.dtype == torch.uint8 else f for f in frames]
        return torch.stack(frames)
    pixels = as_tensor(value, key)
    if pixels.dim() != 4:
        raise MediaDecodeError(
            key, f"a video is (T, 3, H, W) or (T, H, W, 3), got shape {tuple(pixels.shape)}"
        )
    pixels = _pixel_range(_channels_first(pixels, key), key)
    check_pixels(pixels.shape[-1], pixels.shape[-2], max_pixels, key, "video")
    return pixels


def waveform_of(value: Any, sample_rate: int, key: str) -> Tensor:
    """In-memory audio as a mono (S,) float32 waveform at ``sample_rate``.

    Args:
        value: ``(waveform, rate)`` or a bare waveform (taken to be at ``sample_rate``);
            the waveform (channels, samples) or (samples,), float or integer PCM.
        sample_rate: the rate the processor works at (``data.audio.sample_rate``).
        key: the sample key used in error messages.

    Raises:
        MediaDecodeError: another type or shape, or no samples.
    """
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int | float):
        samples, rate = as_tensor(value[0], key), int(value[1])
    else:
        samples, rate = as_tensor(value, key), sample_rate
        warn_once(
            "audio-rate",
            "audio given as a bare waveform is taken to be at data.audio.sample_rate = %d Hz; "
            "pass (waveform, sample_rate) to have it resampled",
            sample_rate,
        )
    mono = _mono(_scaled(samples, key), key)
    if mono.numel() == 0:
        raise MediaDecodeError(key, "no audio samples")
    if rate != sample_rate:
        warn_once(
            f"audio-resample-{rate}",
            "audio at %d Hz is resampled to data.audio.sample_rate = %d Hz",
            rate,
            sample_rate,
        )
        mono = torchaudio.functional.resample(mono, rate, sample_rate)
    return mono.contiguous()


def _scaled(samples: Tensor, key: str) -> Tensor:
    """Integer PCM to float in [-1, 1]; floats as float32."""
    if samples.is_floating_point():
        return samples.float()
    bits = {torch.int16: 15, torch.int32: 31}.get(samples.dtype)
    if bits is None:
        raise MediaDecodeError(
            key, f"audio samples must be float, int16 or int32, got {samples.dtype}"
        )
    return samples.float() / float(2**bits)


def _mono(samples: Tensor, key: str) -> Tensor:
    """(channels, samples) or (samples,) to (samples,), channels averaged."""
    if samples.dim() == 1:
        return samples
    if samples.dim() != 2:
        shape = tuple(samples.shape)
        raise MediaDecodeError(key, f"audio is (channels, samples) or (samples,), got {shape}")
    if samples.shape[0] > samples.shape[1]:
        shape = tuple(samples.shape)
        raise MediaDecodeError(
            key,
            f"audio shaped {shape} looks like (samples, channels); pass its transpose "
            "(channels, samples), as torchaudio.load gives",
        )
    return samples.mean(dim=0)
