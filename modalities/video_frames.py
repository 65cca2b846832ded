"""Decoded video frames to a clip tensor: capped, reduced when large, turned upright.

Every frame of a clip is converted to RGB at one size: the first frame's, reduced by an integer
factor when its shorter side is at least twice ``min_side`` (FFmpeg's swscale scales and
converts in one pass, ``AREA`` filter, so no full-resolution RGB or float copy is made). Frames
of another size (resolution changes mid-stream) are scaled to it. A frame over ``max_pixels``
is refused before conversion. Conversion runs on one thread through one swscale context per
process (`reformatter`): PyAV's default makes a context with its own thread pool for every
frame, which costs more than the conversion, and a pool inherited through ``fork`` deadlocks a
DataLoader worker. The display matrix a container stores (mp4/mov ``tkhd``, mkv
projection: phone videos filmed upright) is applied as the player would: rotations by
multiples of 90 degrees and mirroring; other angles are left as stored.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import av
import numpy as np
import torch
from av.sidedata.sidedata import SideData
from av.video.reformatter import VideoReformatter
from torch import Tensor

from modaloom.modalities.media_io import DEFAULT_MAX_PIXELS, check_pixels
from modaloom.modalities.transforms import reduction_factor

Size = tuple[int, int]
"""(width, height) in pixels."""


@dataclass(frozen=True)
class FrameSizing:
    """How large decoded frames may be and how small they may be made.

    Attributes:
        max_pixels: frames of more pixels are refused (`MediaDecodeError`).
        min_side: frames are reduced to a shorter side of at least this; ``None``: never.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int | None = None


@dataclass
class Decoded:
    """A decoded frame and its time in seconds; converted to RGB once per size, on demand."""

    time: float
    frame: av.VideoFrame
    _rgb: tuple[Size, np.ndarray] | None = field(default=None, repr=False)

    def rgb(self, size: Size | None = None) -> np.ndarray:
        """The frame as an (H, W, 3) uint8 array, scaled to ``size`` (default: its own)."""
        size = size or (self.frame.width, self.frame.height)
        if self._rgb is None or self._rgb[0] != size:
            self._rgb = size, to_rgb(self.frame, size)
        return self._rgb[1]


_REFORMATTER: tuple[int, VideoReformatter] | None = None
"""This process's reformatter and the process id it was made in (a forked child makes its own)."""


def reformatter() -> VideoReformatter:
    """The reformatter of the calling process, made on first use (so after any ``fork``).

    One swscale context is kept and reused while frames keep their size and format.
    """
    global _REFORMATTER
    pid = os.getpid()
    if _REFORMATTER is None or _REFORMATTER[0] != pid:
        _REFORMATTER = pid, VideoReformatter()
    return _REFORMATTER[1]


def to_rgb(frame: av.VideoFrame, size: Size) -> np.ndarray:
    """``frame`` as an (H, W, 3) uint8 RGB array of ``size`` (scaled and converted at once).

    Single-threaded swscale, bit-identical to PyAV's ``frame.to_ndarray(format="rgb24")``
    (with ``width``, ``height`` and ``interpolation="AREA"`` when scaled).
    """
    width, height = size
    if (frame.width, frame.height) == size:
        rgb = reformatter().reformat(frame, format="rgb24", threads=1)
    else:
        rgb = reformatter().reformat(
            frame, width=width, height=height, format="rgb24", interpolation="AREA", threads=1
        )
    return rgb.to_ndarray()


def clip_size(frame: av.VideoFrame, min_side: int | None) -> Size:
    """The size every frame of a clip starting with ``frame`` is converted to."""
    factor = reduction_factor(frame.width, frame.height, min_side)
    return frame.width // factor, frame.height // factor


def display_matrix(frame: av.VideoFrame) -> tuple[int, int, int, int] | None:
    """Signs of the display matrix's 2x2 part (a, b, c, d), or ``None`` without one.

    FFmpeg maps a stored pixel (x, y) to the displayed (a x + c y, b x + d y), plus a shift.
    """
    side_data = frame.side_data.get("DISPLAYMATRIX")
    if not isinstance(side_data, SideData):
        return None
    matrix = np.frombuffer(bytes(side_data), dtype="<i4")
    a, b, c, d = (int(np.sign(round(float(v) / 65536))) for v in matrix[[0, 1, 3, 4]])
    return a, b, c, d


def orient(frames: Tensor, matrix: tuple[int, int, int, int] | None) -> Tensor:
    """Turn (..., H, W) frames as the display matrix says (multiples of 90 degrees, mirrors).

    Returns ``frames`` itself when the matrix is absent, the identity, or another angle.
    """
    if matrix is None:
        return frames
    a, b, c, d = matrix
    if b == 0 and c == 0 and a != 0 and d != 0:  # no transpose: mirrors only
        dims = [dim for dim, sign in ((-1, a), (-2, d)) if sign < 0]
    elif a == 0 and d == 0 and b != 0 and c != 0:  # displayed rows are stored columns
        frames = frames.transpose(-1, -2)
        dims = [dim for dim, sign in ((-2, b), (-1, c)) if sign < 0]
    else:
        return frames
    return frames.flip(dims).contiguous() if dims else frames.contiguous()


def frames_to_tensor(
    frames: Sequence[Decoded | av.VideoFrame], key: str, sizing: FrameSizing
) -> Tensor:
    """Stack frames into a (T, 3, H, W) uint8 tensor, upright, at the clip's size.

    Raises:
        MediaDecodeError: a frame has more than ``sizing.max_pixels`` pixels.
    """
    raw = [item.frame if isinstance(item, Decoded) else item for item in frames]
    for frame in raw:
        check_pixels(frame.width, frame.height, sizing.max_pixels, key, "video")
    size = clip_size(raw[0], sizing.min_side)
    arrays = [
        item.rgb(size) if isinstance(item, Decoded) else to_rgb(item, size) for item in frames
    ]
    return orient(torch.from_numpy(channels_first(arrays)), display_matrix(raw[0]))


def channels_first(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """(H, W, C) uint8 arrays as one contiguous (T, C, H, W) array.

    Each is copied into place by numpy's strided copy: for 8 frames of 398x224 RGB, 0.6 ms
    against 1.3 ms for stacking and ``permute(0, 3, 1, 2).contiguous()`` in torch (one thread).
    """
    height, width, channels = arrays[0].shape
    out = np.empty((len(arrays), channels, height, width), np.uint8)
    for index, array in enumerate(arrays):
        out[index] = array.transpose(2, 0, 1)
    return out
