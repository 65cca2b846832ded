"""FFmpeg's own audio reader (`read_mono`) gives PyAV's samples, or ``None`` for PyAV to read."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import av
import av.filter
import numpy as np
import pytest

from modaloom.core.errors import MediaDecodeError
from modaloom.modalities import array_inputs, audio_decode, audio_reader
from modaloom.modalities.audio_decode import decode_audio
from modaloom.modalities.audio_reader import read_mono
from tests.modalities.conftest import write_audio

FORMATS = {
    "wav-pcm16-8k-mono": dict(format="wav", codec="pcm_s16le", rate=8000),
    "flac-48k-stereo": dict(format="flac", codec="flac", rate=48000, layout="stereo"),
    "ogg-opus-stereo": dict(format="ogg", codec="libopus", rate=48000, layout="stereo"),
    "mp3-44k-stereo": dict(format="mp3", codec="libmp3lame", rate=44100, layout="stereo"),
    "m4a-aac-44k-stereo": dict(format="ipod", codec="aac", rate=44100, layout="stereo"),
    "m4a-aac-16k-mono": dict(format="ipod", codec="aac", rate=16000),
}


@pytest.fixture(scope="module", params=sorted(FORMATS))
def audio_file(request: pytest.FixtureRequest, media_dir: Path) -> Path:
    """3 s of a chirp (several `GATHER_SAMPLES` chunks at any of these rates) in each format."""
    settings: dict[str, Any] = FORMATS[request.param]
    return write_audio(
        media_dir / f"reader-{request.param}", seconds=3.0, sweep_to=3000.0, **settings
    )


def pyav_samples(data: bytes, rate: int = 16000, limit: int | None = None) -> np.ndarray:
    """`decode_audio`'s PyAV path: PyAV demuxes and decodes, `MonoResampler` resamples."""
    with av.open(io.BytesIO(data)) as container:
        chunks = audio_decode._decode_chunks(container, "k", rate, limit)
    return np.concatenate(chunks)


@pytest.mark.parametrize("gather", [audio_reader.GATHER_SAMPLES, 3000], ids=["default", "small"])
def test_ffmpegs_reader_gives_pyavs_samples_bit_for_bit(audio_file, gather, monkeypatch):
    monkeypatch.setattr(audio_reader, "GATHER_SAMPLES", gather)
    data = audio_file.read_bytes()
    chunks = read_mono(data, 16000, None)
    assert chunks is not None and len(chunks) > 1
    assert np.array_equal(np.concatenate(chunks), pyav_samples(data))


def test_the_audio_track_of_a_video_file_and_a_path(mp4_h264_aac):
    chunks = read_mono(mp4_h264_aac, 22050, None)
    assert chunks is not None
    assert np.array_equal(np.concatenate(chunks), pyav_samples(mp4_h264_aac.read_bytes(), 22050))


@pytest.mark.parametrize("seconds", [0.3, 1.0, 2.9])
def test_a_limit_gives_the_first_samples_of_the_whole_stream(audio_file, seconds):
    data = audio_file.read_bytes()
    limit = round(seconds * 16000)
    chunks = read_mono(data, 16000, limit)
    assert chunks is not None
    assert np.array_equal(np.concatenate(chunks)[:limit], pyav_samples(data)[:limit])


def test_decode_audio_reads_bytes_without_pyavs_demuxer(audio_file, monkeypatch):
    data = audio_file.read_bytes()
    want = pyav_samples(data)

    def no_pyav(*args: object, **kwargs: object) -> None:
        raise AssertionError("PyAV's demuxer was used")

    monkeypatch.setattr(audio_decode, "open_media", no_pyav)
    assert np.array_equal(decode_audio(data).numpy(), want)


def test_a_format_change_midway_is_left_to_pyav(make_audio, media_dir):
    parts = [
        make_audio(media_dir / "r1.aac", format="adts", codec="aac", seconds=1.0, rate=44100),
        make_audio(media_dir / "r2.aac", format="adts", codec="aac", seconds=1.0, rate=22050),
    ]
    joined = b"".join(part.read_bytes() for part in parts)
    assert read_mono(joined, 16000, None) is None
    assert np.array_equal(decode_audio(joined).numpy(), pyav_samples(joined))


@pytest.mark.parametrize(
    "source",
    [b"not media at all", io.BytesIO(b"RIFF"), 42],
    ids=["garbage", "file-object", "int"],
)
def test_what_ffmpegs_reader_cannot_read_is_none(source):
    assert read_mono(source, 16000, None) is None


def test_a_missing_path_is_none(tmp_path):
    assert read_mono(tmp_path / "missing.wav", 16000, None) is None


@pytest.fixture
def warnings_once(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Any:
    """WARNING records of this test, with `warn_once`'s memory of earlier tests cleared."""
    monkeypatch.setattr(array_inputs, "_warned", set())
    caplog.set_level(logging.WARNING)
    return caplog


def pyav_reads(reason: str) -> str:
    return (
        f"audio: {reason}, so audio is decoded by PyAV's demuxer and decoder instead of FFmpeg's "
        "own reader (the same samples, more slowly) (logged once)"
    )


def test_without_in_memory_files_bytes_are_left_to_pyav(wav_file, monkeypatch, warnings_once):
    monkeypatch.delattr(os, "memfd_create")
    assert read_mono(wav_file.read_bytes(), 16000, None) is None
    assert read_mono(wav_file.read_bytes(), 16000, None) is None
    assert read_mono(wav_file, 16000, None) is not None  # paths need no in-memory file
    assert warnings_once.messages == [
        pyav_reads("this system has no in-memory files (os.memfd_create)")
    ]


def test_a_refused_in_memory_file_is_none(wav_file, monkeypatch, warnings_once):
    def refused(name: str) -> int:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "memfd_create", refused)
    assert read_mono(wav_file.read_bytes(), 16000, None) is None
    assert warnings_once.messages == [
        pyav_reads("in-memory files are refused (Operation not permitted)")
    ]


def test_the_in_memory_file_is_closed(wav_file, monkeypatch):
    opened: list[int] = []
    real = audio_reader._in_memory_file

    def recording(data: bytes) -> int | None:
        descriptor = real(data)
        assert descriptor is not None
        opened.append(descriptor)
        return descriptor

    monkeypatch.setattr(audio_reader, "_in_memory_file", recording)
    assert read_mono(wav_file.read_bytes(), 16000, None) is not None
    with pytest.raises(OSError):
        os.fstat(opened[0])


def pyav_outcome(data: bytes) -> np.ndarray | str:
    """PyAV's path alone: its samples or its error."""
    try:
        with audio_decode.open_media(data, "k") as container:
            chunks = audio_decode._decode_chunks(container, "k", 16000, None)
    except MediaDecodeError as error:
        return str(error)
    return np.concatenate(chunks) if chunks else "no samples"


def outcome(data: bytes) -> np.ndarray | str:
    try:
        return decode_audio(data, key="k").numpy()
    except MediaDecodeError as error:
        return str(error)


@pytest.mark.parametrize("damage", ["cut-30%", "cut-95%", "overwritten"])
def test_damaged_files_decode_as_pyav_alone_decodes_them(audio_file, damage):
    data = bytearray(audio_file.read_bytes())
    if damage == "overwritten":
        middle = len(data) // 2
        data[middle : middle + 200] = np.random.default_rng(0).bytes(200)
    else:
        data = data[: len(data) * int(damage[4:-1]) // 100]
    got, want = outcome(bytes(data)), pyav_outcome(bytes(data))
    assert type(got) is type(want)
    if isinstance(want, str):
        assert got == want
    else:
        assert np.array_equal(got, want)


def test_an_ffmpeg_without_the_readers_filters_leaves_everything_to_pyav(
    wav_file, monkeypatch, warnings_once
):
    monkeypatch.setattr(av.filter, "filters_available", av.filter.filters_available - {"amovie"})
    assert read_mono(wav_file, 16000, None) is None
    assert np.array_equal(decode_audio(wav_file).numpy(), pyav_samples(wav_file.read_bytes()))
    assert warnings_once.messages == [pyav_reads("this FFmpeg has no amovie filter")]


def test_a_path_with_filter_syntax_characters(wav_file, tmp_path):
    """The file name reaches ``amovie`` as an option value, never parsed as filter syntax."""
    odd = tmp_path / "we:ird,dir" / "a'b [c]=d;e.wav"
    odd.parent.mkdir()
    odd.write_bytes(wav_file.read_bytes())
    chunks = read_mono(odd, 16000, None)
    assert chunks is not None
    assert np.array_equal(np.concatenate(chunks), pyav_samples(wav_file.read_bytes()))
