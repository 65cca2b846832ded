"""Video decoding with PyAV: frame sampling by seeking, and a decode-everything baseline.

Timestamps are seconds from the start of the video stream. The frame chosen for a timestamp
``t`` is the frame on screen at ``t``: the last frame whose presentation time is ``<= t`` (the
first frame when ``t`` precedes it). `decode_frames_at` and `decode_all_and_subsample` apply the
same rule, so they return identical frames for identical timestamps; this also makes variable
frame rates work and repeats frames when a clip has fewer frames than requested. How seeking
proceeds is described in `modaloom.modalities.video_seek`.

Duration: the stream's, else the container's, else a demux-only scan of packet timestamps (no
decoding). A container that refuses to seek is decoded in order. Only when packets carry no
timestamps at all (raw elementary streams) is every frame decoded and frames picked by index:
the last resort, bounded by ``max_packets`` per requested frame and meant for tiny clips.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import Any

import av
import av.container
import av.video.stream
from torch import Tensor

from modaloom.core.errors import MediaDecodeError
from modaloom.modalities.array_inputs import is_encoded, video_pixels, warn_once
from modaloom.modalities.media_io import (
    DEFAULT_MAX_PACKETS,
    DEFAULT_MAX_PIXELS,
    MediaSource,
    check_pixels,
    decoding,
    open_media,
)
from modaloom.modalities.video_frames import Decoded, FrameSizing, frames_to_tensor
from modaloom.modalities.video_seek import (
    EPS,
    NoTimestamps,
    SeekFailed,
    SeekSampler,
    timeline,
    video_stream,
)


def sample_timestamps(duration: float, num: int, rng: random.Random | None = None) -> list[float]:
    """Target times for ``num`` frames: one per equal segment of ``[0, duration)``.

    Args:
        duration: clip length in seconds.
        num: number of frames.
        rng: draws a uniform time within each segment (training); ``None`` takes the segment
            centres (evaluation).

    Returns:
        ``num`` ascending times in seconds.
    """
    step = duration / num
    if rng is None:
        return [(index + 0.5) * step for index in range(num)]
    return [(index + rng.random()) * step for index in range(num)]


def _sample_indices(count: int, num: int, rng: random.Random | None) -> list[int]:
    """Frame indices by the same segment rule as `sample_timestamps`, over ``count`` frames."""
    return [min(int(t), count - 1) for t in sample_timestamps(float(count), num, rng)]


def _configure(stream: av.video.stream.VideoStream, threads: int) -> None:
    stream.thread_type = "AUTO" if threads != 1 else "SLICE"
    stream.codec_context.thread_count = threads


def _checked_stream(
    container: av.container.InputContainer, key: str, threads: int | None, max_pixels: int
) -> av.video.stream.VideoStream:
    """The first video stream once its header's frame size is within ``max_pixels``.

    Its decoder gets ``threads`` threads (``None``: FFmpeg's defaults).
    """
    stream = video_stream(container, key)
    context = stream.codec_context
    check_pixels(context.width, context.height, max_pixels, key, "video")  # before decoding
    if threads is not None:
        _configure(stream, threads)
    return stream


def _decode_by_index(
    container: av.container.InputContainer,
    num: int,
    rng: random.Random | None,
    key: str,
    max_packets: int,
    sizing: FrameSizing,
) -> Tensor:
    """Last resort for streams without timestamps: decode every frame, pick by index.

    ``container`` must be freshly opened (raw streams cannot seek back to the start).
    """
    stream = _checked_stream(container, key, None, sizing.max_pixels)
    frames: list[av.VideoFrame] = []
    for count, packet in enumerate(container.demux(stream)):
        if count >= max_packets * num:
            raise MediaDecodeError(key, f"no timestamps and more than {count} packets")
        frames.extend(stream.codec_context.decode(packet))
    if not frames:
        raise MediaDecodeError(key, "no decodable video frames")
    chosen = [frames[i] for i in _sample_indices(len(frames), num, rng)]
    return frames_to_tensor(chosen, key, sizing)


def _decode_in_order(
    container: av.container.InputContainer,
    times: Sequence[float],
    key: str,
    threads: int,
    sizing: FrameSizing,
) -> Tensor:
    """Decode every frame of a freshly opened container, keeping those on screen at ``times``."""
    stream = _checked_stream(container, key, threads, sizing.max_pixels)
    line = timeline(container, stream, duration=False)
    order = sorted(range(len(times)), key=times.__getitem__)
    chosen: dict[int, Decoded] = {}
    position, previous = 0, None
    for frame in container.decode(stream):
        if frame.pts is None:
            raise MediaDecodeError(key, "video has no timestamps")
        current = Decoded(line.seconds(frame.pts), frame)
        while position < len(order) and times[order[position]] < current.time - EPS:
            chosen[order[position]] = current if previous is None else previous
            position += 1
        previous = current
    if previous is None:
        raise MediaDecodeError(key, "no decodable video frames")
    for index in order[position:]:
        chosen[index] = previous
    return frames_to_tensor([chosen[index] for index in range(len(times))], key, sizing)


def _replayable(source: MediaSource) -> tuple[MediaSource, int | None]:
    """``source`` in a form that can be opened twice, and the position to rewind a file to.

    A file object that cannot seek is read into memory (a fallback may need a second pass).
    """
    if isinstance(source, bytes | bytearray | memoryview | str | os.PathLike) or not hasattr(
        source, "read"
    ):
        return source, None  # paths and bytes reopen as they are; other types fail in open_media
    seekable = getattr(source, "seekable", None)
    if callable(seekable) and seekable():
        return source, source.tell()
    return source.read(), None


def _rewind(source: MediaSource, position: int | None) -> None:
    """Put a file object back where it was before the first attempt."""
    if position is not None:
        source.seek(position)  # type: ignore[union-attr]  # only file objects get a position


def decode_video(
    source: MediaSource | Any,
    num_frames: int,
    *,
    rng: random.Random | None = None,
    key: str = "<video>",
    max_packets: int = DEFAULT_MAX_PACKETS,
    threads: int = 1,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
) -> Tensor:
    """Decode ``num_frames`` frames, one per equal segment of the clip, by seeking.

    A container that cannot seek is decoded in order instead; a stream without timestamps is
    decoded whole and sampled by frame index (see the module docstring). In-memory video
    (`modaloom.modalities.array_inputs.video_pixels`) is sampled by frame index too.

    Args:
        source: encoded video (bytes, path or binary file object), or frames in memory.
        num_frames: T, the number of frames returned.
        rng: picks a random time in each segment (training); ``None`` takes segment centres.
        key: sample key used in error messages.
        max_packets: packets demuxed per frame before the file is declared undecodable.
        threads: decoder threads (1 inside DataLoader workers; 0 lets FFmpeg choose).
        max_pixels: streams whose frames have more pixels are refused before decoding.
        min_side: frames are converted at a reduced size whose shorter side is at least this
            (``None``: the video's resolution); see `modaloom.modalities.video_frames`.

    Returns:
        (T, 3, H, W) uint8 RGB frames, upright as the container's display matrix says
        (float32 in [0, 1] for float arrays).

    Raises:
        MediaDecodeError: unreadable container, no video stream or decoder, no frames,
            truncated stream, frames over ``max_pixels``, or any other failure while decoding.
    """
    if not is_encoded(source):
        with decoding(key):
            return _sample_frames(video_pixels(source, key, max_pixels), num_frames, rng)
    sizing = FrameSizing(max_pixels, min_side)
    with decoding(key):
        source, position = _replayable(source)
        times: list[float] | None = None
        with open_media(source, key, share="video") as container:
            stream = _checked_stream(container, key, threads, max_pixels)
            line = timeline(container, stream)
            if line.duration is not None and line.duration > 0:
                times = sample_timestamps(line.duration, num_frames, rng)
                sampler = SeekSampler(container, stream, line, key, max_packets)
                try:
                    return frames_to_tensor(sampler.sample(times), key, sizing)
                except NoTimestamps:
                    times = None
                except SeekFailed:
                    pass
        _rewind(source, position)
        with open_media(source, key) as container:
            if times is None:
                return _decode_by_index(container, num_frames, rng, key, max_packets, sizing)
            return _decode_in_order(container, times, key, threads, sizing)


def _sample_frames(frames: Tensor, num: int, rng: random.Random | None) -> Tensor:
    """``num`` of in-memory (T, 3, H, W) frames by the segment rule (a WARNING, once, when T
    differs)."""
    if frames.shape[0] == num:
        return frames
    warn_once(
        "video-frames",
        "video frames in memory are sampled to data.video.frames = %d, one per equal segment "
        "(got %d)",
        num,
        frames.shape[0],
    )
    return frames[_sample_indices(frames.shape[0], num, rng)]


def probe_duration(source: MediaSource, *, key: str = "<video>") -> float:
    """Length of the first video stream in seconds.

    Raises:
        MediaDecodeError: unreadable container, no video stream, or no timestamps.
    """
    with open_media(source, key) as container:
        line = timeline(container, video_stream(container, key))
    if line.duration is None:
        raise MediaDecodeError(key, "video has no timestamps")
    return line.duration


def decode_frames_at(
    source: MediaSource,
    times: Sequence[float],
    *,
    key: str = "<video>",
    max_packets: int = DEFAULT_MAX_PACKETS,
    threads: int = 1,
) -> Tensor:
    """Seek-based decoding of the frames on screen at ``times`` (seconds from the start).

    A container that cannot seek is decoded in order instead.

    Returns:
        (T, 3, H, W) uint8 RGB frames, T = ``len(times)``, in the order of ``times``.

    Raises:
        MediaDecodeError: as `decode_video`, and ``video has no timestamps``.
    """
    sizing = FrameSizing()
    source, position = _replayable(source)
    with open_media(source, key) as container:
        stream = _checked_stream(container, key, threads, sizing.max_pixels)
        line = timeline(container, stream, duration=False)
        sampler = SeekSampler(container, stream, line, key, max_packets)
        try:
            return frames_to_tensor(sampler.sample(times), key, sizing)
        except NoTimestamps:
            raise MediaDecodeError(key, "video has no timestamps") from None
        except SeekFailed:
            pass
    _rewind(source, position)
    with open_media(source, key) as container:
        return _decode_in_order(container, times, key, threads, sizing)


def decode_all_and_subsample(
    source: MediaSource,
    times: Sequence[float],
    *,
    key: str = "<video>",
    threads: int = 1,
) -> Tensor:
    """Baseline: decode every frame in order and keep the ones on screen at ``times``.

    Only the kept frames are converted to RGB, so the baseline pays for decoding alone.

    Returns:
        (T, 3, H, W) uint8 RGB frames, T = ``len(times)``, in the order of ``times``.

    Raises:
        MediaDecodeError: unreadable container, no video stream, no frames, no timestamps.
    """
    with open_media(source, key) as container:
        return _decode_in_order(container, times, key, threads, FrameSizing())
