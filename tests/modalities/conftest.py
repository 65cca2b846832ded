"""Fixtures that write small real media files with PyAV (video frames encode their own index)."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

WIDTH, HEIGHT, FPS = 64, 48, 25
VIDEO_FRAMES = 75  # 3 s at 25 fps
TONE_HZ = 440.0


def pattern_frame(index: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """An (H, W, 3) uint8 frame whose 8 vertical stripes spell ``index`` in binary."""
    image = np.zeros((height, width, 3), np.uint8)
    stripe = width // 8
    for bit in range(8):
        if (index >> bit) & 1:
            image[:, bit * stripe : (bit + 1) * stripe] = 255
    return image


def read_frame_index(frame: np.ndarray | object) -> int:
    """The index spelled by a decoded (3, H, W) or (H, W, 3) uint8 frame."""
    array = np.asarray(frame, dtype=np.float32)
    if array.shape[0] == 3:
        array = array.transpose(1, 2, 0)
    stripe = array.shape[1] // 8
    return sum(
        1 << bit for bit in range(8) if array[:, bit * stripe : (bit + 1) * stripe].mean() > 128
    )


def _encode_tone(
    container: av.container.OutputContainer,
    stream: av.audio.stream.AudioStream,
    seconds: float,
    sweep_to: float | None = None,
) -> None:
    """Encode a 0.5-amplitude 440 Hz sine of ``seconds``, rising linearly to ``sweep_to`` Hz."""
    rate, channels = stream.codec_context.sample_rate, stream.codec_context.channels
    frame_size = stream.codec_context.frame_size or 1024
    total, start = round(seconds * rate), 0
    while start < total:
        count = min(frame_size, total - start)
        t = np.arange(start, start + count) / rate
        rise = 0.0 if sweep_to is None else (sweep_to - TONE_HZ) / (2 * seconds)
        wave = (0.5 * np.sin(2 * np.pi * (TONE_HZ * t + rise * t * t))).astype(np.float32)
        samples = np.repeat(wave[None], channels, axis=0)
        layout = "mono" if channels == 1 else "stereo"
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=layout)
        frame.sample_rate, frame.pts = rate, start
        for packet in stream.encode(frame):
            container.mux(packet)
        start += count
    for packet in stream.encode():
        container.mux(packet)


def write_video(
    path: Path,
    *,
    format: str,
    codec: str,
    frames: int = VIDEO_FRAMES,
    gop: int = 10,
    audio_codec: str | None = None,
    times_ms: Sequence[int] | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Write a 64x48 clip whose frame ``i`` shows `pattern_frame(i)`.

    ``times_ms`` gives explicit presentation times (variable frame rate); ``audio_codec`` adds a
    440 Hz tone (44.1 kHz stereo) as long as the video.
    """
    with av.open(str(path), "w", format=format, options=options or {}) as container:
        stream = container.add_stream(codec, rate=FPS)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.gop_size = gop
        if codec == "libx264":
            stream.options = {"g": str(gop), "keyint_min": str(gop), "threads": "1"}
        if times_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        audio: av.AudioStream | None = None
        if audio_codec is not None:
            added = container.add_stream(audio_codec, rate=44100, layout="stereo")
            assert isinstance(added, av.AudioStream)
            audio = added
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(pattern_frame(index), format="rgb24")
            if times_ms is not None:
                frame.pts, frame.time_base = times_ms[index], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio is not None:
            _encode_tone(container, audio, frames / FPS)
    return path


def write_audio(
    path: Path,
    *,
    format: str,
    codec: str,
    seconds: float,
    rate: int,
    layout: str = "mono",
    sweep_to: float | None = None,
) -> Path:
    """Write a 440 Hz tone (a chirp up to ``sweep_to`` Hz when given); ``seconds=0`` writes a
    valid file with no samples."""
    with av.open(str(path), "w", format=format) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        assert isinstance(stream, av.AudioStream)
        container.start_encoding()  # writes the header even when no packet follows
        _encode_tone(container, stream, seconds, sweep_to)
    return path


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def mp4_h264_aac(media_dir: Path) -> Path:
    """3 s, 64x48, 25 fps h264 (keyframe every 10 frames) with a stereo AAC tone."""
    return write_video(media_dir / "clip.mp4", format="mp4", codec="libx264", audio_codec="aac")


@pytest.fixture(scope="session")
def webm_vp9(media_dir: Path) -> Path:
    return write_video(media_dir / "clip.webm", format="webm", codec="libvpx-vp9")


@pytest.fixture(scope="session")
def avi_mpeg4(media_dir: Path) -> Path:
    return write_video(media_dir / "clip.avi", format="avi", codec="mpeg4")


@pytest.fixture(scope="session")
def wav_file(media_dir: Path) -> Path:
    """12 s of a 440 Hz tone, 22.05 kHz stereo 16-bit PCM."""
    return write_audio(
        media_dir / "tone.wav",
        format="wav",
        codec="pcm_s16le",
        seconds=12.0,
        rate=22050,
        layout="stereo",
    )


@pytest.fixture(scope="session")
def chirp_wav(media_dir: Path) -> Path:
    """12 s chirp from 440 Hz to 6 kHz, 16 kHz mono: each clip start gives a different peak."""
    return write_audio(
        media_dir / "chirp.wav",
        format="wav",
        codec="pcm_s16le",
        seconds=12.0,
        rate=16000,
        sweep_to=6000.0,
    )


@pytest.fixture(scope="session")
def flac_file(media_dir: Path) -> Path:
    """3 s of a 440 Hz tone, 16 kHz mono FLAC."""
    return write_audio(
        media_dir / "tone.flac", format="flac", codec="flac", seconds=3.0, rate=16000
    )


@pytest.fixture(scope="session")
def pattern() -> object:
    """`pattern_frame`, for tests that encode frames themselves."""
    return pattern_frame


@pytest.fixture(scope="session")
def frame_index() -> object:
    """`read_frame_index`, for tests (conftest modules are not importable by name)."""
    return read_frame_index


@pytest.fixture(scope="session")
def make_video() -> object:
    """`write_video`, for tests that need a clip of their own."""
    return write_video


@pytest.fixture(scope="session")
def make_audio() -> object:
    """`write_audio`, for tests that need an audio file of their own."""
    return write_audio
