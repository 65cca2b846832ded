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

import av
import av.container
import av.video.stream
import numpy as np
import torch
from torch import Tensor

from modaloom.core.errors import MediaDecodeError
from modaloom.modalities.media_io import MediaSource, open_media
from modaloom.modalities.video_seek import (
    DEFAULT_MAX_PACKETS,
    EPS,
    Decoded,
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


def _to_tensor(frames: Sequence[Decoded | av.VideoFrame]) -> Tensor:
    """Stack frames into a (T, 3, H, W) uint8 tensor."""
    arrays = [f.rgb() if isinstance(f, Decoded) else f.to_ndarray(format="rgb24") for f in frames]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _decode_by_index(
    container: av.container.InputContainer,
    num: int,
    rng: random.Random | None,
    key: str,
    max_packets: int,
) -> Tensor:
    """Last resort for streams without timestamps: decode every frame, pick by index.

    ``container`` must be freshly opened (raw streams cannot seek back to the start).
    """
    stream = video_stream(container, key)
    frames: list[av.VideoFrame] = []
    for count, packet in enumerate(container.demux(stream)):
        if count >= max_packets * num:
            raise MediaDecodeError(key, f"no timestamps and more than {count} packets")
        frames.extend(stream.codec_context.decode(packet))
    if not frames:
        raise MediaDecodeError(key, "no decodable video frames")
    return _to_tensor([frames[i] for i in _sample_indices(len(frames), num, rng)])


def _decode_in_order(
    container: av.container.InputContainer, times: Sequence[float], key: str, threads: int
) -> Tensor:
    """Decode every frame of a freshly opened container, keeping those on screen at ``times``."""
    stream = video_stream(container, key)
    _configure(stream, threads)
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
    return _to_tensor([chosen[index] for index in range(len(times))])


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
    source: MediaSource,
    num_frames: int,
    *,
    rng: random.Random | None = None,
    key: str = "<video>",
    max_packets: int = DEFAULT_MAX_PACKETS,
    threads: int = 1,
) -> Tensor:
    """Decode ``num_frames`` frames, one per equal segment of the clip, by seeking.

    A container that cannot seek is decoded in order instead; a stream without timestamps is
    decoded whole and sampled by frame index (see the module docstring).

    Args:
        source: encoded video (bytes, path or binary file object).
        num_frames: T, the number of frames returned.
        rng: picks a random time in each segment (training); ``None`` takes segment centres.
        key: sample key used in error messages.
        max_packets: packets demuxed per frame before the file is declared undecodable.
        threads: decoder threads (1 inside DataLoader workers; 0 lets FFmpeg choose).

    Returns:
        (T, 3, H, W) uint8 RGB frames at the video's resolution.

    Raises:
        MediaDecodeError: unreadable container, no video stream, no frames, truncated stream.
    """
    source, position = _replayable(source)
    times: list[float] | None = None
    with open_media(source, key) as container:
        stream = video_stream(container, key)
        _configure(stream, threads)
        line = timeline(container, stream)
        if line.duration is not None and line.duration > 0:
            times = sample_timestamps(line.duration, num_frames, rng)
            sampler = SeekSampler(container, stream, line, key, max_packets)
            try:
                return _to_tensor(sampler.sample(times))
            except NoTimestamps:
                times = None
            except SeekFailed:
                pass
    _rewind(source, position)
    with open_media(source, key) as container:
        if times is None:
            return _decode_by_index(container, num_frames, rng, key, max_packets)
        return _decode_in_order(container, times, key, threads)


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
    source, position = _replayable(source)
    with open_media(source, key) as container:
        stream = video_stream(container, key)
        _configure(stream, threads)
        line = timeline(container, stream, duration=False)
        sampler = SeekSampler(container, stream, line, key, max_packets)
        try:
            return _to_tensor(sampler.sample(times))
        except NoTimestamps:
            raise MediaDecodeError(key, "video has no timestamps") from None
        except SeekFailed:
            pass
    _rewind(source, position)
    with open_media(source, key) as container:
        return _decode_in_order(container, times, key, threads)


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
        return _decode_in_order(container, times, key, threads)
