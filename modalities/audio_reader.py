"""Audio read by FFmpeg's own reader (the ``amovie`` filter): demuxed and decoded in C.

PyAV's demuxer and decoder hand every packet and every frame to Python: 431 of each for 10 s of
44.1 kHz AAC, and with gathering them in an `av.AudioFifo` about 2 of the 8.5 ms that PyAV's
path takes (6.9-7.5 ms this way, interleaved runs). In a filter graph, ``amovie``
demuxes and decodes the first audio stream and ``asetnsamples`` gathers its frames into chunks
of `GATHER_SAMPLES` samples, so Python sees 27 chunks for those 10 s. The chunks are resampled
as `MonoResampler` resamples PyAV's frames: the samples are the same, bit for bit
(``tests/modalities/test_audio_reader.py``).

A filter graph takes one input format. A stream whose sample rate, channel layout or sample
format changes midway (concatenated files) makes FFmpeg stop (``PatchWelcomeError``), and so
does an undecodable packet: then `read_mono` returns ``None`` and `decode_audio` decodes the
file again with PyAV, which handles both. Bytes reach FFmpeg as an in-memory file (``memfd``,
Linux only); where there is none, for file objects, and where FFmpeg lacks the filters
(`READER_FILTERS`), `read_mono` returns ``None`` at once (a missing filter or in-memory file
is logged once at WARNING: the same samples come, more slowly).

One difference is left: ``amovie`` takes any error reading the container as its end, where
PyAV raises (``corrupt or truncated stream``), so a container that breaks off after whole,
decodable packets gives the audio before the break. In the tests made for this (10 container
kinds, cut at 30-99.9% or with random bytes overwritten), every result it gave equalled PyAV's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import av
import av.filter
import numpy as np

from modaloom.modalities.array_inputs import warn_once
from modaloom.modalities.audio_resample import push_and_pull, resampler_graph, samples_to_gather
from modaloom.modalities.media_io import MediaSource

READER_FILTERS = frozenset({"amovie", "asetnsamples"})
"""The filters the reader needs (PyAV's wheels have them; an FFmpeg of one's own may not)."""

GATHER_SAMPLES = 1 << 14
"""Input samples per chunk handed to Python and resampled in one call. Half of PyAV's
`RESAMPLE_CHUNK`: a 2^15-sample stereo float chunk has 128 KiB planes, which glibc maps and
unmaps on each allocation (its threshold), and 10 s of 44.1 kHz stereo AAC took 8.4-8.5 ms at
2^15 against 7.3-7.5 ms at 2^14 and 7.6-7.8 ms at 12,288 (two interleaved runs). The samples are
the same for any size: the resampler keeps its state between calls."""


def read_mono(source: MediaSource, sample_rate: int, limit: int | None) -> list[np.ndarray] | None:
    """Mono chunks of the first audio stream at ``sample_rate``, or ``None`` (see the module).

    Args:
        source: encoded media: bytes, a path, or a file object (``None`` at once).
        sample_rate: output rate in Hz.
        limit: stop once the first ``limit`` output samples are final; ``None``: the whole stream.

    Returns:
        (S_i,) float32 chunks, or ``None`` when FFmpeg's reader cannot read ``source`` to the end
        (the caller decodes it with PyAV, which names the failure or handles the stream).
    """
    missing = sorted(READER_FILTERS - av.filter.filters_available)
    if missing:
        _say_pyav_reads(f"this FFmpeg has no {' or '.join(missing)} filter")
        return None
    if isinstance(source, str | os.PathLike):
        return _read_or_none(os.fspath(source), sample_rate, limit)
    if not isinstance(source, bytes | bytearray | memoryview):
        return None
    descriptor = _in_memory_file(source)
    if descriptor is None:
        return None
    try:
        return _read_or_none(f"/proc/self/fd/{descriptor}", sample_rate, limit)
    finally:
        os.close(descriptor)


def _in_memory_file(data: bytes | bytearray | memoryview) -> int | None:
    """A file descriptor of an anonymous in-memory file holding ``data``, or ``None``."""
    create = getattr(os, "memfd_create", None)  # Linux only
    if create is None:
        _say_pyav_reads("this system has no in-memory files (os.memfd_create)")
        return None
    try:
        descriptor: int = create("modaloom-audio")
    except OSError as error:  # refused, e.g. by a sandbox's system call filter
        _say_pyav_reads(f"in-memory files are refused ({error.strerror})")
        return None
    try:
        left = memoryview(data).cast("B")
        while left:
            left = left[os.write(descriptor, left) :]
    except OSError:
        os.close(descriptor)
        return None
    return descriptor


def _say_pyav_reads(reason: str) -> None:
    """Warn once that ``reason`` leaves audio to PyAV's path: the same samples, more slowly."""
    warn_once(
        f"audio-reader:{reason}",
        "audio: %s, so audio is decoded by PyAV's demuxer and decoder instead of FFmpeg's own "
        "reader (the same samples, more slowly)",
        reason,
    )


def _read_or_none(file_name: str, sample_rate: int, limit: int | None) -> list[np.ndarray] | None:
    try:
        return _read(file_name, sample_rate, limit)
    except (av.FFmpegError, OSError):  # unreadable, undecodable, or the format changed midway
        return None


def _read(file_name: str, sample_rate: int, limit: int | None) -> list[np.ndarray]:
    gathered = _gathering_graph(file_name)
    wanted = None if limit is None else samples_to_gather(limit, sample_rate)
    resampler: av.filter.Graph | None = None
    chunks: list[np.ndarray] = []
    total = 0
    for frame in _pulled(gathered):
        resampler = resampler or resampler_graph(frame, sample_rate)
        for chunk in push_and_pull(resampler, frame):
            chunks.append(chunk)
            total += chunk.shape[0]
        if wanted is not None and total >= wanted:
            break
    return chunks if resampler is None else chunks + push_and_pull(resampler, None)


def _gathering_graph(file_name: str) -> av.filter.Graph:
    """``amovie`` (first audio stream) -> ``asetnsamples`` (`GATHER_SAMPLES`) -> a sink.

    One thread, as in `resampler_graph`; ``amovie`` gives its decoder the graph's count.
    """
    graph = av.filter.Graph()
    graph.threads = 1
    graph.link_nodes(
        graph.add("amovie", filename=file_name, streams="a:0"),
        graph.add("asetnsamples", nb_out_samples=str(GATHER_SAMPLES), pad="0"),
        graph.add("abuffersink"),
    )
    graph.configure()
    return graph


def _pulled(graph: av.filter.Graph) -> Iterator[av.AudioFrame]:
    """The sink's frames until the end of the stream.

    Only the end stops it: a source-driven graph has no reason to answer "try again"
    (``BlockingIOError``), which `read_mono` treats as a failure rather than an end.
    """
    while True:
        try:
            frame = graph.pull()
        except av.EOFError:
            return
        assert isinstance(frame, av.AudioFrame)  # an audio graph's sink gives audio frames
        yield frame
