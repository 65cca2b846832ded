"""In-memory media (PIL images, numpy arrays, tensors, (waveform, rate)) through the processors."""

from __future__ import annotations

import io
import logging
import random
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modaloom.core.errors import MediaDecodeError
from modaloom.modalities import array_inputs
from modaloom.modalities.audio import AudioProcessor, AudioSpec
from modaloom.modalities.audio_decode import decode_audio
from modaloom.modalities.image import ImageProcessor, ImageSpec
from modaloom.modalities.video import VideoProcessor, VideoSpec
from modaloom.modalities.video_decode import decode_video

RNG = random.Random(0)


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the once-only warnings anew."""
    monkeypatch.setattr(array_inputs, "_warned", set())


def picture(seed: int = 0, height: int = 40, width: int = 56) -> np.ndarray:
    """An (H, W, 3) uint8 picture of random pixels."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def process(processor, value):  # type: ignore[no-untyped-def]
    return processor.process(value, key="k", train=False, rng=RNG)


def test_an_image_gives_the_same_tensor_as_bytes_pil_numpy_or_tensor(tmp_path: Path) -> None:
    array = picture()
    path = tmp_path / "a.png"
    path.write_bytes(png(array))
    processor = ImageProcessor(ImageSpec(size=32))
    expected = process(processor, png(array))["pixel_values"]
    chw = torch.from_numpy(array).permute(2, 0, 1)
    same = [
        path,
        str(path),
        Image.fromarray(array),
        array,
        chw,
        chw.numpy(),
        torch.from_numpy(array),
    ]
    for value in same:
        assert torch.equal(process(processor, value)["pixel_values"], expected), type(value)
    as_float = process(processor, chw.float() / 255.0)["pixel_values"]
    torch.testing.assert_close(as_float, expected, atol=1e-5, rtol=0)
    grey = process(processor, array[..., 0])["pixel_values"]
    assert grey.shape == (3, 32, 32)


def test_image_values_out_of_range_or_shape_are_one_message() -> None:
    processor = ImageProcessor(ImageSpec(size=32))
    with pytest.raises(MediaDecodeError) as info:
        process(processor, torch.full((3, 8, 8), 2.0))
    assert str(info.value) == (
        "cannot decode sample 'k': float pixels must lie in [0, 1], got 2..2; pass uint8 (0-255) "
        "or divide by 255 (the processor normalises them itself)"
    )
    with pytest.raises(MediaDecodeError) as info:
        process(processor, np.zeros((8, 8, 5), np.uint8))
    assert str(info.value) == (
        "cannot decode sample 'k': cannot tell the channels of pixels shaped (8, 8, 5); "
        "expected (3, H, W) or (H, W, 3)"
    )
    with pytest.raises(MediaDecodeError, match="expected bytes, a path, a binary file object"):
        process(processor, 3.5)


def test_video_arrays_in_either_layout_or_as_frames_agree(caplog: pytest.LogCaptureFixture) -> None:
    frames = np.stack([picture(seed) for seed in range(4)])  # (T, H, W, 3)
    processor = VideoProcessor(VideoSpec(frames=4, size=32))
    expected = process(processor, frames)["pixel_values"]
    assert expected.shape == (4, 3, 32, 32)
    channels_first = torch.from_numpy(frames).permute(0, 3, 1, 2)
    for value in (channels_first, [Image.fromarray(f) for f in frames], list(frames)):
        assert torch.equal(process(processor, value)["pixel_values"], expected)
    as_float = process(processor, channels_first.float() / 255.0)["pixel_values"]
    torch.testing.assert_close(as_float, expected, atol=1e-5, rtol=0)
    assert "sampled" not in caplog.text


def test_longer_video_arrays_are_sampled_per_segment_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    frames = torch.arange(16, dtype=torch.uint8).view(16, 1, 1, 1).expand(16, 3, 8, 8)
    with caplog.at_level(logging.WARNING):
        picked = decode_video(frames, 4, key="k")
        decode_video(frames, 4, key="k")
    assert picked[:, 0, 0, 0].tolist() == [2, 6, 10, 14]  # segment centres
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "video frames in memory are sampled to data.video.frames = 4, one per equal segment "
        "(got 16) (logged once)"
    ]


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """Mono 16-bit PCM WAV of ``samples`` (int16)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(samples.tobytes())
    return buffer.getvalue()


def tone(rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * 440.0 * t) * 32767).astype(np.int16)


def test_waveform_and_rate_give_what_the_decoded_file_gives() -> None:
    samples = tone(16000)
    decoded = decode_audio(wav_bytes(samples, 16000), sample_rate=16000)
    from_pcm = decode_audio((samples, 16000), sample_rate=16000)
    from_float = decode_audio((torch.from_numpy(samples).float() / 32768, 16000))
    stereo = decode_audio((np.stack([samples, samples]), 16000), sample_rate=16000)
    for waveform in (from_pcm, from_float, stereo):
        torch.testing.assert_close(waveform, decoded, atol=1e-6, rtol=0)
    processor = AudioProcessor(AudioSpec(clip_seconds=1.0, target_length=100))
    spectrogram = process(processor, (samples, 16000))["spectrogram"]
    torch.testing.assert_close(
        spectrogram, process(processor, wav_bytes(samples, 16000))["spectrogram"]
    )


def test_other_rates_are_resampled_and_bare_waveforms_assumed_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        resampled = decode_audio((tone(44100), 44100), sample_rate=16000)
        decode_audio((tone(44100), 44100), sample_rate=16000)
        bare = decode_audio(tone(16000).astype(np.float32) / 32768, sample_rate=16000)
    assert resampled.shape == (16000,) and bare.shape == (16000,)
    torch.testing.assert_close(resampled[100:-100], bare[100:-100], atol=2e-3, rtol=0)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "audio at 44100 Hz is resampled to data.audio.sample_rate = 16000 Hz (logged once)",
        "audio given as a bare waveform is taken to be at data.audio.sample_rate = 16000 Hz; "
        "pass (waveform, sample_rate) to have it resampled (logged once)",
    ]


def test_samples_by_channels_is_refused_with_the_fix() -> None:
    with pytest.raises(MediaDecodeError) as info:
        decode_audio((np.zeros((1000, 2), np.float32), 16000), key="k")
    assert str(info.value) == (
        "cannot decode sample 'k': audio shaped (1000, 2) looks like (samples, channels); pass "
        "its transpose (channels, samples), as torchaudio.load gives"
    )
