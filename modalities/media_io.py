"""Decoding one sample safely: every failure becomes `MediaDecodeError`, and sizes are capped.

`open_media` opens media with PyAV and names FFmpeg's failures; `decoding` (from core, re-exported
for the modality files) turns anything else raised while decoding one sample into
`MediaDecodeError`, so ``on_error: skip`` can skip it; `check_pixels` refuses images and video
frames larger than ``max_pixels`` before decoding them.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import av
import av.container

from modaloom.core.errors import MediaDecodeError, decoding

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MediaSource",
    "check_pixels",
    "decoding",
    "open_media",
]

DEFAULT_MAX_PIXELS = 36_000_000
"""Largest image or video frame decoded by default (36 MP, e.g. 6000x6000), in pixels."""

MediaSource = bytes | bytearray | memoryview | str | os.PathLike[str] | IO[bytes]
"""Encoded media: the file's bytes, a local path, or a readable (seekable) binary file object."""


def _as_av_input(source: MediaSource, key: str) -> Any:
    """What `av.open` accepts for ``source``: a path string or a file-like object."""
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(bytes(source))
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    if hasattr(source, "read"):
        return source
    kind = type(source).__name__
    raise MediaDecodeError(key, f"expected bytes, a path or a binary file object, got {kind}")


def check_pixels(width: int, height: int, max_pixels: int, key: str, modality: str) -> None:
    """Refuse a ``width`` x ``height`` image or video frame of more than ``max_pixels`` pixels.

    Args:
        width: the picture's width (from the file's header or stream, before decoding).
        height: its height.
        max_pixels: the limit.
        key: the sample key used in error messages.
        modality: ``image`` or ``video``, whose spec (``data.<modality>``) holds the limit.

    Raises:
        MediaDecodeError: ``WxH <modality> (N pixels) is over max_pixels = M (raise
            data.<modality>.max_pixels to decode it)``.
    """
    pixels = width * height
    if pixels > max_pixels:
        raise MediaDecodeError(
            key,
            f"{width}x{height} {modality} ({pixels} pixels) is over max_pixels = {max_pixels} "
            f"(raise data.{modality}.max_pixels to decode it)",
        )


def _reason(exc: BaseException) -> str:
    """A short, stable description of an FFmpeg or OS error (no file names, no errno)."""
    strerror = getattr(exc, "strerror", None)
    return str(strerror) if strerror else type(exc).__name__


@contextmanager
def open_media(source: MediaSource, key: str) -> Iterator[av.container.InputContainer]:
    """Open ``source`` for reading and close it afterwards.

    FFmpeg errors raised while opening become ``unreadable or unknown container (<reason>)``;
    FFmpeg errors raised inside the ``with`` block (demuxing, decoding, seeking) become
    ``corrupt or truncated stream (<reason>)``. Both are `MediaDecodeError` for ``key``.

    Args:
        source: encoded media (bytes, path or binary file object).
        key: the sample key used in error messages.

    Raises:
        MediaDecodeError: the media cannot be opened or read, or ``source`` is of another type.
    """
    target = _as_av_input(source, key)
    try:
        container = av.open(target, mode="r", metadata_errors="ignore")
    except OSError as exc:  # missing file, permission denied (PyAV's are OSError too)
        raise MediaDecodeError(key, f"cannot open file ({_reason(exc)})") from exc
    except av.FFmpegError as exc:
        raise MediaDecodeError(key, f"unreadable or unknown container ({_reason(exc)})") from exc
    try:
        yield container
    except av.FFmpegError as exc:
        raise MediaDecodeError(key, f"corrupt or truncated stream ({_reason(exc)})") from exc
    finally:
        container.close()
