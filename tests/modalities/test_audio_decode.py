"""Chunked resampling in `decode_audio` gives exactly the samples of resampling frame by frame."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest

from modaloom.modalities import audio_resample
from modaloom.modalities.audio_decode import decode_audio


def numpy_average(frame: av.AudioFrame) -> av.AudioFrame:
    """Planar float stereo as mono, ``(left + right) * 0.5`` in numpy; other frames as they are."""
    if frame.format.name != "fltp" or frame.layout.name != "stereo":
        return frame
    left, right = frame.to_ndarray()
    mono = av.AudioFrame.from_ndarray(((left + right) * np.float32(0.5))[None], "fltp", "mono")
    mono.sample_rate = frame.sample_rate
    return mono


def per_frame_reference(data: bytes, rate: int = 16000) -> np.ndarray:
    """FFmpeg's resampler called on every decoded frame (planar stereo averaged first),
    restarted when the format changes."""
    chunks: list[np.ndarray] = []
    resampler, source = None, None
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(audio=0):
            if (frame.format.name, frame.layout.name, frame.sample_rate) != source:
                if resampler is not None:
                    chunks += [out.to_ndarray()[0] for out in resampler.resample(None)]
                source = (frame.format.name, frame.layout.name, frame.sample_rate)
                resampler = av.AudioResampler(
                    format="fltp", layout="mono", rate=rate, options={"rematrix_maxval": "1.0"}
                )
            mono = numpy_average(frame)
            chunks += [out.to_ndarray()[0] for out in resampler.resample(mono)]
    assert resampler is not None
    chunks += [out.to_ndarray()[0] for out in resampler.resample(None)]
    return np.concatenate(chunks)


@pytest.fixture(scope="module")
def joined_aac(make_audio, media_dir: Path) -> bytes:
    """3 s of 44.1 kHz stereo AAC then 2 s of 22.05 kHz mono AAC, one ADTS stream."""
    parts = [
        make_audio(
            media_dir / "a.aac",
            format="adts",
            codec="aac",
            seconds=3.0,
            rate=44100,
            layout="stereo",
        ),
        make_audio(media_dir / "b.aac", format="adts", codec="aac", seconds=2.0, rate=22050),
    ]
    return b"".join(part.read_bytes() for part in parts)


@pytest.mark.parametrize("chunk", [audio_resample.RESAMPLE_CHUNK, 3000], ids=["default", "small"])
def test_chunked_resampling_equals_per_frame(joined_aac, chunk, monkeypatch):
    monkeypatch.setattr(audio_resample, "RESAMPLE_CHUNK", chunk)
    expected = per_frame_reference(joined_aac)
    assert np.array_equal(decode_audio(joined_aac).numpy(), expected)


@pytest.mark.parametrize("seconds", [0.5, 2.9, 4.0])
def test_max_seconds_gives_the_first_samples_of_the_whole_stream(joined_aac, seconds):
    expected = per_frame_reference(joined_aac)[: round(seconds * 16000)]
    assert np.array_equal(decode_audio(joined_aac, max_seconds=seconds).numpy(), expected)


def gathered_stereo(data: bytes) -> av.AudioFrame:
    """Every planar float stereo frame of ``data``, in one frame."""
    with av.open(io.BytesIO(data)) as container:
        frames = [frame for frame in container.decode(audio=0) if frame.layout.name == "stereo"]
    fifo = av.AudioFifo()
    for frame in frames:
        frame.pts = None
        fifo.write(frame)
    stereo = fifo.read()
    assert stereo is not None and stereo.format.name == "fltp"
    return stereo


def resampled(frame: av.AudioFrame, options: dict[str, str]) -> np.ndarray:
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=16000, options=options)
    outs = resampler.resample(frame) + resampler.resample(None)
    return np.concatenate([out.to_ndarray()[0] for out in outs])


def test_planar_stereo_is_averaged_as_ffmpeg_averages_it(joined_aac):
    """Averaging before resampling equals FFmpeg's mix after resampling, to float rounding."""
    stereo = gathered_stereo(joined_aac)
    ffmpeg = resampled(stereo, {"rematrix_maxval": "1.0"})
    ours = resampled(numpy_average(stereo), {})
    assert ours.shape == ffmpeg.shape
    np.testing.assert_allclose(ours, ffmpeg, rtol=0, atol=3e-7)


def test_the_resampler_graph_averages_planar_stereo_as_numpy_does(joined_aac):
    stereo = gathered_stereo(joined_aac)
    graph = audio_resample.resampler_graph(stereo, 16000)
    ours = audio_resample.push_and_pull(graph, stereo) + audio_resample.push_and_pull(graph, None)
    assert np.array_equal(np.concatenate(ours), resampled(numpy_average(stereo), {}))


def test_resampler_graph_runs_on_one_thread_and_resamples_like_av_audio_resampler():
    frame = av.AudioFrame.from_ndarray(
        np.linspace(-0.5, 0.5, 3000, dtype=np.float32)[None], format="fltp", layout="mono"
    )
    frame.sample_rate = 44100
    graph = audio_resample.resampler_graph(frame, 16000)
    assert graph.threads == 1
    ours = np.concatenate(
        audio_resample.push_and_pull(graph, frame) + audio_resample.push_and_pull(graph, None)
    )
    resampler = av.AudioResampler(
        format="fltp", layout="mono", rate=16000, options={"rematrix_maxval": "1.0"}
    )
    outs = resampler.resample(frame) + resampler.resample(None)
    assert np.array_equal(ours, np.concatenate([out.to_ndarray()[0] for out in outs]))
