"""Decoding one sample safely: every failure becomes `MediaDecodeError`, and sizes are capped.

`open_media` opens media with PyAV and names FFmpeg's failures, and lets the video and audio of
one sample share one opened container (`SHARED_KINDS`); `decoding` (from core, re-exported
for the modality files) turns anything else raised while decoding one sample into
`MediaDecodeError`, so ``on_error: skip`` can skip it; `check_pixels` refuses images and video
frames larger than ``max_pixels`` before decoding them.

PyAV is imported when media is first opened, not with this module: image decoding (PIL) and
the specs' defaults use the rest without loading FFmpeg.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from modaloom.core.errors import MediaDecodeError, decoding

if TYPE_CHECKING:
    import av.container

__all__ = [
    "DEFAULT_MAX_PACKETS",
    "DEFAULT_MAX_PIXELS",
    "SHARED_KINDS",
    "MediaSource",
    "check_pixels",
    "decoding",
    "kept_for",
    "open_media",
]

DEFAULT_MAX_PIXELS = 36_000_000
"""Largest image or video frame decoded by default (36 MP, e.g. 6000x6000), in pixels."""
DEFAULT_MAX_PACKETS = 4096
"""Packets demuxed per requested frame before giving up (guards against garbage input)."""

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


SHARED_KINDS = frozenset({"video", "audio"})
"""Readers that may share one opened container: each decodes only its own stream, from a
fresh decoder, so the video and the audio of one mp4 need one open (finding a container's
streams decodes a few packets: about as long as decoding a 1 s, 32x32 clip)."""


@dataclass
class _Shared:
    """The container opened last for a `SHARED_KINDS` reader, and which readers used it."""

    pid: int
    identity: tuple[str, object]
    container: av.container.InputContainer
    used: set[str] = field(default_factory=set)


_LOCAL = threading.local()
"""``shared``: the `_Shared` container kept between two readers by this thread, if any (at most
one per thread, used only in the process that opened it)."""


def _kept() -> _Shared | None:
    """The container this thread keeps open for the other reader of a sample, if any."""
    shared: _Shared | None = getattr(_LOCAL, "shared", None)
    return shared


def _identity(source: MediaSource, key: str) -> tuple[str, object] | None:
    """What makes two reads the same media of the same sample; ``None``: never shared.

    Bytes are compared by value (at once when both fields hold the same object), paths by
    name; file objects are never shared (reading moves their position).
    """
    if isinstance(source, bytes):
        return key, source
    if isinstance(source, str | os.PathLike):
        return key, os.fspath(source)
    return None


def _release_shared() -> None:
    """Close the kept container (one inherited through ``fork`` is only forgotten)."""
    shared, _LOCAL.shared = _kept(), None
    if shared is not None and shared.pid == os.getpid():
        shared.container.close()


def _open(source: MediaSource, key: str) -> av.container.InputContainer:
    import av  # lazily: FFmpeg loads with the first media opened

    target = _as_av_input(source, key)
    try:
        return av.open(target, mode="r", metadata_errors="ignore")
    except OSError as exc:  # missing file, permission denied (PyAV's are OSError too)
        raise MediaDecodeError(key, f"cannot open file ({_reason(exc)})") from exc
    except av.FFmpegError as exc:
        raise MediaDecodeError(key, f"unreadable or unknown container ({_reason(exc)})") from exc


def _reuse(identity: tuple[str, object] | None, kind: str | None) -> _Shared | None:
    """The kept container when ``kind`` may read it (rewound to the start), else ``None``.

    Any other container kept is closed: the sample it belongs to is done.
    """
    shared = _kept()
    if kind is not None and shared is not None and _waits_for(shared, identity, kind):
        shared.container.seek(0)  # mov, matroska: every stream back to its first packet
        return shared
    _release_shared()
    return None


def _waits_for(shared: _Shared, identity: tuple[str, object] | None, kind: str) -> bool:
    """Whether ``shared`` was opened here for the media ``identity`` and ``kind`` has not read
    it."""
    mine = identity is not None and shared.pid == os.getpid() and shared.identity == identity
    return mine and kind not in shared.used


def kept_for(source: MediaSource, key: str, kind: str) -> bool:
    """Whether the other reader of this sample keeps ``source`` open for ``kind`` to read.

    Args:
        source: encoded media, as given to `open_media`.
        key: the sample key.
        kind: one of `SHARED_KINDS`.
    """
    shared = _kept()
    return shared is not None and _waits_for(shared, _identity(source, key), kind)


@contextmanager
def open_media(
    source: MediaSource, key: str, *, share: str | None = None
) -> Iterator[av.container.InputContainer]:
    """Open ``source`` for reading and close it afterwards.

    FFmpeg errors raised while opening become ``unreadable or unknown container (<reason>)``;
    FFmpeg errors raised inside the ``with`` block (demuxing, decoding, seeking) become
    ``corrupt or truncated stream (<reason>)``. Both are `MediaDecodeError` for ``key``.

    With ``share`` (one of `SHARED_KINDS`), the container stays open after the block for the
    other kind's reader of the same ``key`` and ``source`` (bytes or a path), which gets it
    back rewound to the start; it is closed once both have read it, on an error, or when the
    same thread opens other shared media (a sample with video only keeps it until the next
    sample). Each thread keeps its own.

    Args:
        source: encoded media (bytes, path or binary file object).
        key: the sample key used in error messages.
        share: the reader asking (``video`` or ``audio``); ``None``: a container of its own.

    Raises:
        MediaDecodeError: the media cannot be opened or read, or ``source`` is of another type.
    """
    import av  # lazily, as in _open

    identity = _identity(source, key)
    shared = _reuse(identity, share)
    if shared is None:
        container = _open(source, key)
        if share is not None and identity is not None:
            shared = _LOCAL.shared = _Shared(os.getpid(), identity, container)
    else:
        container = shared.container
    done = True
    try:
        yield container
        done = shared is None or shared.used | {share} >= SHARED_KINDS
    except av.FFmpegError as exc:
        raise MediaDecodeError(key, f"corrupt or truncated stream ({_reason(exc)})") from exc
    finally:
        if shared is not None and share is not None:
            shared.used.add(share)
        if done and shared is not None and _kept() is shared:
            _LOCAL.shared = None
        if done:
            container.close()
