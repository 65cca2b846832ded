"""Video decoding with PyAV: frame sampling by seeking, and a decode-everything baseline.

Timestamps are seconds from the start of the video stream. The frame chosen for a timestamp
``t`` is the frame on screen at ``t``: the last frame whose presentation time is ``<= t`` (the
first frame when ``t`` precedes it). `decode_frames_at` and `decode_all_and_subsample` apply the
same rule, so they return identical frames for identical timestamps; this also makes variable
frame rates work and repeats frames when a clip has fewer frames than requested.

Seek-based sampling handles the targets in time order. For each one it either keeps decoding
forward from where it is (when no keyframe lies between the current position and the target,
so a seek could only land at or before the current position) or seeks to the keyframe at or
before the target and decodes forward until the frame after the target appears. Keyframe
positions come from the container's index (mp4, mkv/webm cues, avi); without an index, from the
keyframes met while decoding plus a short fixed window (`UNKNOWN_GOP_WINDOW`).

Duration: the stream's, else the container's, else a demux-only scan of packet timestamps (no
decoding). Only when packets carry no timestamps at all (raw elementary streams) is every frame
decoded and frames picked by index: the last resort, bounded by `max_packets` per requested frame
and meant for tiny clips.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import av
import av.container
import av.video.stream
import numpy as np
import torch
from torch import Tensor

from modaloom.core.errors import MediaDecodeError
from modaloom.modalities.media_io import MediaSource, open_media

DEFAULT_MAX_PACKETS = 4096
"""Packets demuxed per requested frame before giving up (guards against garbage input)."""
UNKNOWN_GOP_WINDOW = 1.0
"""Seconds decoded forward instead of seeking when keyframe positions are unknown."""
_SEEK_BACKOFFS = (0.0, 1.0, 5.0, math.inf)
"""Seconds to step back when a seek lands after its target (imprecise container indexes)."""
_EPS = 1e-6


@dataclass(frozen=True)
class Timeline:
    """Maps a stream's timestamps to seconds from its start.

    Attributes:
        start_pts: the stream's first timestamp, in ``time_base`` units.
        time_base: seconds per timestamp unit.
        duration: length of the stream in seconds, or ``None`` when it cannot be known.
    """

    start_pts: int
    time_base: Fraction
    duration: float | None

    def seconds(self, pts: int) -> float:
        """Seconds from the stream's start of timestamp ``pts``."""
        return float((pts - self.start_pts) * self.time_base)

    def pts(self, seconds: float) -> int:
        """The timestamp at ``seconds`` from the stream's start (rounded down)."""
        return self.start_pts + math.floor(seconds / self.time_base + _EPS)


@dataclass
class _Decoded:
    """A decoded frame and its time in seconds; converted to RGB once, on demand."""

    time: float
    frame: av.VideoFrame
    _rgb: np.ndarray | None = field(default=None, repr=False)

    def rgb(self) -> np.ndarray:
        """The frame as an (H, W, 3) uint8 array."""
        if self._rgb is None:
            self._rgb = self.frame.to_ndarray(format="rgb24")
        return self._rgb


class _NoTimestamps(Exception):
    """A decoded frame has no presentation timestamp; sampling falls back to frame indices."""


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


def video_stream(container: av.container.InputContainer, key: str) -> av.video.stream.VideoStream:
    """The first video stream of ``container``.

    Raises:
        MediaDecodeError: ``no video stream`` when there is none.
    """
    if not container.streams.video:
        raise MediaDecodeError(key, "no video stream")
    return container.streams.video[0]


def _configure(stream: av.video.stream.VideoStream, threads: int) -> None:
    stream.thread_type = "AUTO" if threads != 1 else "SLICE"
    stream.codec_context.thread_count = threads


def timeline(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> Timeline:
    """The stream's start, time base and duration (stream, else container, else packet scan)."""
    time_base = stream.time_base or Fraction(1, av.time_base)
    start = stream.start_time if stream.start_time is not None else 0
    if stream.duration:
        return Timeline(start, time_base, float(stream.duration * time_base))
    if container.duration:
        return Timeline(start, time_base, container.duration / av.time_base)
    end = None
    for packet in container.demux(stream):  # demux only: reads packets, decodes nothing
        if packet.pts is not None:
            stop = packet.pts + (packet.duration or 0)
            end = stop if end is None else max(end, stop)
    duration = float((end - start) * time_base) if end is not None and end > start else None
    return Timeline(start, time_base, duration)


def _index_keyframes(stream: av.video.stream.VideoStream, line: Timeline) -> list[float] | None:
    """Keyframe times (seconds, ascending) from the container's index; ``None`` without one.

    Matroska reads its cues at the first seek, so this is asked again after seeking.
    """
    try:
        entries = list(stream.index_entries)
    except (AttributeError, av.FFmpegError):  # older PyAV
        return None
    if len(entries) < 2:
        return None
    return sorted(line.seconds(entry.timestamp) for entry in entries if entry.is_keyframe)


class _SeekSampler:
    """Decodes the frames at given times by seeking to keyframes and decoding forward."""

    def __init__(
        self,
        container: av.container.InputContainer,
        stream: av.video.stream.VideoStream,
        line: Timeline,
        key: str,
        max_packets: int,
    ) -> None:
        self._container, self._stream, self._line = container, stream, line
        self._key, self._max_packets = key, max_packets
        self._keys: list[float] = []  # known keyframe times, ascending
        self._indexed = False  # whether _keys comes from a complete container index
        self._cur: _Decoded | None = None  # answer to the last target
        self._ahead: _Decoded | None = None  # first frame after it; None at end of stream
        self._packets: Iterator[av.Packet] = iter(())
        self._queue: deque[av.VideoFrame] = deque()
        self._eof = True
        self._budget = 0
        self.seeks = 0
        self.decoded = 0

    def sample(self, times: Sequence[float]) -> list[_Decoded]:
        """The frame on screen at each time (in the order given)."""
        result: dict[int, _Decoded] = {}
        for index in sorted(range(len(times)), key=times.__getitem__):
            self._budget = self._max_packets
            result[index] = self._frame_at(times[index])
        return [result[index] for index in range(len(times))]

    def _frame_at(self, t: float) -> _Decoded:
        cur = self._cur
        if cur is not None and cur.time <= t:
            if self._ahead is None or t < self._ahead.time:
                return self._check_end(cur, t)
            if self._forward_is_cheaper(t):
                return self._check_end(self._advance(t), t)
        self._seek(t)
        return self._check_end(self._advance(t), t)

    def _forward_is_cheaper(self, t: float) -> bool:
        """Whether no keyframe lies between the current position and ``t``."""
        assert self._ahead is not None
        here = self._ahead.time
        after = bisect.bisect_right(self._keys, here)
        if after < len(self._keys) and self._keys[after] <= t:
            return False  # a seek lands on that keyframe, past the current position
        if self._indexed:
            return True
        return t - here < UNKNOWN_GOP_WINDOW

    def _seek(self, t: float) -> None:
        for back in _SEEK_BACKOFFS:
            target = max(t - back, 0.0)
            self._container.seek(
                self._line.pts(target), stream=self._stream, backward=True, any_frame=False
            )
            self._stream.codec_context.flush_buffers()
            self.seeks += 1
            if not self._indexed:
                indexed = _index_keyframes(self._stream, self._line)
                if indexed is not None:
                    self._keys, self._indexed = indexed, True
            self._packets, self._eof = self._container.demux(self._stream), False
            self._queue.clear()
            self._cur, self._ahead = None, self._next()
            if self._ahead is None and target > 0.0:
                continue  # landed past the last frame: step back
            if self._ahead is None or self._ahead.time <= t + _EPS or target == 0.0:
                return

    def _next(self) -> _Decoded | None:
        """The next frame in presentation order, or ``None`` at the end of the stream."""
        while not self._queue:
            if self._eof:
                return None
            packet = next(self._packets, None)
            if packet is None:
                self._eof = True
                continue
            self._budget -= 1
            if self._budget < 0:
                raise MediaDecodeError(
                    self._key, f"no frame found within {self._max_packets} packets"
                )
            if packet.is_keyframe and packet.pts is not None and not self._indexed:
                bisect.insort(self._keys, self._line.seconds(packet.pts))
            self._queue.extend(self._stream.codec_context.decode(packet))
        frame = self._queue.popleft()
        if frame.pts is None:
            raise _NoTimestamps
        self.decoded += 1
        return _Decoded(self._line.seconds(frame.pts), frame)

    def _advance(self, t: float) -> _Decoded:
        best, frame = self._cur, self._ahead
        while frame is not None and frame.time <= t + _EPS:
            best, frame = frame, self._next()
        if best is None:  # the first frame after the seek is already later than t
            if frame is None:
                raise MediaDecodeError(self._key, "no decodable video frames")
            best, frame = frame, self._next()
        self._cur, self._ahead = best, frame
        return best

    def _check_end(self, found: _Decoded, t: float) -> _Decoded:
        """Reject a stream that ends well before ``t`` (a truncated file)."""
        duration = self._line.duration or 0.0
        if self._ahead is None and t - found.time > max(0.5, 0.1 * duration):
            raise MediaDecodeError(
                self._key,
                f"video ends at {found.time:.2f}s, before the sampled time {t:.2f}s "
                "(truncated file?)",
            )
        return found


def _to_tensor(frames: Sequence[_Decoded | av.VideoFrame]) -> Tensor:
    """Stack frames into a (T, 3, H, W) uint8 tensor."""
    arrays = [f.rgb() if isinstance(f, _Decoded) else f.to_ndarray(format="rgb24") for f in frames]
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


def _rewind(source: MediaSource, position: int | None) -> None:
    """Put a file object back where it was before the first attempt."""
    if position is not None and hasattr(source, "seek"):
        source.seek(position)


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
    position = source.tell() if hasattr(source, "tell") else None
    with open_media(source, key) as container:
        stream = video_stream(container, key)
        _configure(stream, threads)
        line = timeline(container, stream)
        if line.duration is not None and line.duration > 0:
            times = sample_timestamps(line.duration, num_frames, rng)
            sampler = _SeekSampler(container, stream, line, key, max_packets)
            try:
                return _to_tensor(sampler.sample(times))
            except _NoTimestamps:
                pass
    _rewind(source, position)
    with open_media(source, key) as container:
        return _decode_by_index(container, num_frames, rng, key, max_packets)


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

    Returns:
        (T, 3, H, W) uint8 RGB frames, T = ``len(times)``, in the order of ``times``.
    """
    with open_media(source, key) as container:
        stream = video_stream(container, key)
        _configure(stream, threads)
        line = timeline(container, stream)
        sampler = _SeekSampler(container, stream, line, key, max_packets)
        try:
            return _to_tensor(sampler.sample(times))
        except _NoTimestamps:
            raise MediaDecodeError(key, "video has no timestamps") from None


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
    """
    order = sorted(range(len(times)), key=times.__getitem__)
    chosen: dict[int, _Decoded] = {}
    with open_media(source, key) as container:
        stream = video_stream(container, key)
        _configure(stream, threads)
        line = timeline(container, stream)
        container.seek(line.start_pts, stream=stream, backward=True)
        stream.codec_context.flush_buffers()
        position, previous = 0, None
        for frame in container.decode(stream):
            if frame.pts is None:
                raise MediaDecodeError(key, "video has no timestamps")
            current = _Decoded(line.seconds(frame.pts), frame)
            while position < len(order) and times[order[position]] < current.time - _EPS:
                chosen[order[position]] = previous or current
                position += 1
            previous = current
        if previous is None:
            raise MediaDecodeError(key, "no decodable video frames")
        for index in order[position:]:
            chosen[index] = previous
        return _to_tensor([chosen[index] for index in range(len(times))])
