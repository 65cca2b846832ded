"""Image decoding with PIL: capped by size before decoding, reduced when large, any bit depth.

The size comes from the file's header (PIL reads nothing else until asked), so an image of
more than ``max_pixels`` pixels is refused before any pixel is decoded. A picture whose shorter
side is at least twice ``min_side`` is decoded at a reduced size: JPEG by its decoder's DCT
scaling (PIL ``draft``: 1/2, 1/4 or 1/8), any format by integer box reduction (PIL ``reduce``),
so the shorter side stays at ``min_side`` or more. Smaller pictures decode exactly as before.

High bit depths are scaled to 8 bits rather than clipped: 16-bit greyscale (PIL modes
``I;16*``, and ``I``, read as 16-bit) by ``/ 257``, 32-bit float (mode ``F``, a [0, 1] range)
by ``* 255``; values outside the range are clipped and NaN becomes 0.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from modaloom.modalities.array_inputs import image_pixels, is_encoded
from modaloom.modalities.media_io import DEFAULT_MAX_PIXELS, check_pixels, decoding
from modaloom.modalities.transforms import reduction_factor

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
"""PIL modes of one 16-bit channel (``I`` is 32-bit; PIL reads 16-bit PNG and TIFF into it)."""


def _open(value: Any) -> Image.Image:
    """Open bytes or a path; reads the header only.

    PIL's own decompression-bomb warning is silenced (``max_pixels`` decides); its error, for
    more than twice ``Image.MAX_IMAGE_PIXELS``, still applies.
    """
    source = io.BytesIO(value) if isinstance(value, bytes | bytearray | memoryview) else Path(value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(source)


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit and float greyscale scaled to 8-bit ``L``; other modes as they are."""
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
        return Image.fromarray(((values + 128) // 257).astype(np.uint8), "L")
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0)
        return Image.fromarray((np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), "L")
    return image


def decode_image(
    value: Any,
    key: str,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
) -> Tensor:
    """Decode bytes or a path with PIL into (3, H, W) uint8 RGB; in-memory images (PIL, numpy,
    tensors) are converted (`modaloom.modalities.array_inputs.image_pixels`).

    Args:
        value: the encoded image (bytes) or a local path, or an in-memory image.
        key: the sample key used in error messages.
        max_pixels: larger images are refused from their header, before decoding.
        min_side: decode at a reduced size whose shorter side is at least this (``None``: full
            resolution).

    Returns:
        (3, H, W) uint8, a view of an (H, W, 3) array (float32 in [0, 1] for float arrays).

    Raises:
        MediaDecodeError: unreadable, truncated, not an image, over ``max_pixels``, or any
            other failure while decoding (cause's type and message).
    """
    if not is_encoded(value):
        with decoding(key):
            return image_pixels(value, key, max_pixels)
    with decoding(key), _open(value) as image:
        check_pixels(*image.size, max_pixels, key, "image")
        large = reduction_factor(*image.size, min_side) > 1
        if min_side is not None and large and image.format == "JPEG":
            image.draft(image.mode, (min_side, min_side))  # DCT scaling while decoding
        rgb = _eight_bit(image).convert("RGB")
        factor = reduction_factor(*rgb.size, min_side)
        if factor > 1:
            rgb = rgb.reduce(factor)
        array = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)
