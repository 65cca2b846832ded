"""FFmpeg's resampler to mono float at one rate, fed in large chunks: one graph per stream.

Used by both audio readers (`modaloom.modalities.audio_decode`: PyAV's demuxer and decoder,
and `modaloom.modalities.audio_reader`: FFmpeg's own), so both give the same samples.
"""

from __future__ import annotations

import av
import av.filter
import numpy as np

_DOWNMIX_AVERAGE = {"rematrix_maxval": "1.0"}
"""Scale FFmpeg's downmix so its coefficients sum to 1: stereo becomes (L + R) / 2, as
averaging channels does (without it FFmpeg mixes at -3 dB each and can exceed 1.0)."""

_AVERAGE_STEREO = "mono|c0=0.5*c0+0.5*c1"
"""``pan`` settings averaging planar float stereo before the resampler: (L + R) / 2, computed
as numpy's ``(left + right) * 0.5`` computes it (equal but for subnormal samples, 1e-45 apart).
Told to average (`_DOWNMIX_AVERAGE`), the resampler alone resamples both channels and mixes
them after: twice the filtering, equal to within float rounding (1.2e-7 on a 44.1 kHz AAC
chirp). Planar float stereo is what the AAC, MP3, Opus and Vorbis decoders give; other formats
and layouts are left to the resampler's downmix. In the graph, not numpy: 0.2 ms less per 10 s
of 44.1 kHz AAC (about 3%, both readers, interleaved runs)."""


RESAMPLE_CHUNK = 1 << 15
"""Input samples (about 0.74 s at 44.1 kHz) gathered before one call of FFmpeg's resampler. One
call per decoded frame (1,024 AAC samples) cost more than decoding itself; one call for several
seconds was slower again (10 s of 44.1 kHz stereo AAC to 16 kHz: 20.0 ms with 2^18-sample chunks,
12.6 ms with 2^15, 15.6 ms with 2^12; larger calls' buffers outgrowing the CPU caches is the likely
cause). Every chunk size gives the same samples: the resampler keeps its state between calls."""


def plane_samples(plane: av.audio.plane.AudioPlane, samples: int) -> np.ndarray:
    """(samples,) float32 view of one plane of a planar float frame, without a copy.

    ``frame.to_ndarray()`` stacks the planes into a new array (a copy of every sample); the
    view keeps the plane, and so its frame, alive.
    """
    return np.frombuffer(memoryview(plane), np.float32, samples)


def resampler_graph(frame: av.AudioFrame, rate: int) -> av.filter.Graph:
    """FFmpeg's resampler (``aresample``, `_DOWNMIX_AVERAGE`) from frames like ``frame`` to mono
    float at ``rate``: the graph `av.AudioResampler` builds, on one thread, after ``pan``
    (`_AVERAGE_STEREO`) when ``frame`` is planar float stereo.

    `av.AudioResampler` leaves the graph's thread count at 0 (one per core), so every new graph
    started a pool of threads it never used and joined them when freed: a graph made, fed and
    flushed took 0.48-0.54 ms, 0.29 ms on one thread; every sample needs a new graph (FFmpeg's
    resampler treats each stream's edges on their own).
    """
    graph = av.filter.Graph()
    graph.threads = 1  # before any filter is added: the pool starts with the first
    source = graph.add(
        "abuffer",
        sample_rate=str(frame.sample_rate),
        sample_fmt=frame.format.name,
        channel_layout=frame.layout.name,
    )
    stereo = frame.format.name == "fltp" and frame.layout.name == "stereo"
    graph.link_nodes(
        source,
        *([graph.add("pan", _AVERAGE_STEREO)] if stereo else []),
        graph.add("aresample", **_DOWNMIX_AVERAGE),
        graph.add("aformat", sample_fmts="fltp", sample_rates=str(rate), channel_layouts="mono"),
        graph.add("abuffersink"),
    )
    graph.configure()
    return graph


def push_and_pull(graph: av.filter.Graph, frame: av.AudioFrame | None) -> list[np.ndarray]:
    """Push ``frame`` (``None``: the end of the stream) and pull every resampled chunk ready."""
    if frame is not None:
        frame.pts = None  # in the stream's time base, not the graph's (1/rate); samples ignore it
    graph.push(frame)
    chunks: list[np.ndarray] = []
    while True:
        try:
            out = graph.pull()
        except (av.BlockingIOError, av.EOFError):
            return chunks
        assert isinstance(out, av.AudioFrame)  # an audio graph's sink gives audio frames
        chunks.append(plane_samples(out.planes[0], out.samples))


class MonoResampler:
    """FFmpeg's resampler to mono float at one rate, fed in large chunks of decoded frames.

    Frames are gathered in an `av.AudioFifo` and resampled `RESAMPLE_CHUNK` samples at a time
    (`resampler_graph`), which gives the same output as resampling each frame. Streams made by
    concatenating files change sample rate, channel layout or sample format mid-stream; one
    FFmpeg resampler takes a single input format, so the gathered frames are resampled and
    flushed and a new resampler starts whenever a frame's format differs from the previous
    frame's.
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._graph: av.filter.Graph | None = None
        self._fifo: av.AudioFifo | None = None
        self._source: tuple[str, av.AudioLayout, int] | None = None
        """The gathered frames' sample format name, channel layout and sample rate."""

    @property
    def pending_seconds(self) -> float:
        """Input gathered but not yet resampled, in seconds of audio."""
        if self._fifo is None or self._source is None:
            return 0.0
        return self._fifo.samples / self._source[2]

    def resample(self, frame: av.AudioFrame | None) -> list[np.ndarray]:
        """(S,) float32 chunks ready after ``frame``, or everything left when ``frame`` is ``None``.

        Most calls return nothing: output comes once `RESAMPLE_CHUNK` input samples are
        gathered, when the input format changes, and at the end.
        """
        if frame is None:
            return self._flush()
        chunks = [] if self._same_source(frame) else self._flush()
        if self._fifo is None:
            self._fifo = av.AudioFifo()
            self._source = (frame.format.name, frame.layout, frame.sample_rate)
        frame.pts = None  # the fifo checks that timestamps are contiguous; they need not be
        self._fifo.write(frame)
        if self._fifo.samples >= RESAMPLE_CHUNK:
            chunks.extend(self._drain(False))
        return chunks

    def _same_source(self, frame: av.AudioFrame) -> bool:
        """Whether ``frame`` has the gathered frames' sample format, channel layout and rate.

        Layouts are compared as layouts: FFmpeg formats a layout's name anew on each access.
        """
        if self._source is None:
            return False
        name, layout, rate = self._source
        return frame.sample_rate == rate and frame.layout == layout and frame.format.name == name

    def _drain(self, end: bool) -> list[np.ndarray]:
        """Resample what the fifo holds; ``end`` also flushes the resampler's delay line."""
        assert self._fifo is not None
        gathered = self._fifo.read()
        chunks: list[np.ndarray] = []
        if gathered is not None:
            if self._graph is None:
                self._graph = resampler_graph(gathered, self.rate)
            chunks = push_and_pull(self._graph, gathered)
        if end and self._graph is not None:
            chunks += push_and_pull(self._graph, None)
        return chunks

    def _flush(self) -> list[np.ndarray]:
        if self._fifo is None:
            return []
        chunks = self._drain(True)
        self._fifo = self._graph = self._source = None
        return chunks


def samples_to_gather(limit: int, rate: int) -> int:
    """Output samples to gather before stopping early so that the first ``limit`` are final.

    0.1 s past ``limit`` is past the resampler's delay: the flush's zero padding at the cut
    leaves the first ``limit`` samples those of the whole stream.
    """
    return limit + rate // 10
