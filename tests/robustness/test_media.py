"""One bad sample never stops training (issue 12, section 4).

Every failure while decoding one sample is a `MediaDecodeError` that ``on_error: skip`` skips,
counts and logs; audio whose format changes mid-stream is resampled; pictures over
``max_pixels`` are refused before decoding and large ones are decoded at a reduced size;
16-bit and float images and rotated videos decode correctly. Media are generated here.
"""

from __future__ import annotations

import io
import logging
import random
import struct
import time
import zlib
from typing import Any

import av
import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from modaloom.core.data import EvalStream, SampleDecoder
from modaloom.core.errors import MediaDecodeError, decoding
from modaloom.core.interfaces import Processor
from modaloom.modalities import audio_decode as audio_decode_module
from modaloom.modalities import image, video
from modaloom.modalities import video_decode as video_decode_module
from modaloom.modalities.audio import AudioProcessor, AudioSpec
from modaloom.modalities.audio_decode import decode_audio
from modaloom.modalities.image import ImageProcessor, ImageSpec
from modaloom.modalities.image_decode import decode_image
from modaloom.modalities.transforms import augment, crop_resize, decode_side
from modaloom.modalities.video import VideoProcessor, VideoSpec
from modaloom.modalities.video_decode import decode_video
from modaloom.modalities.video_frames import FrameSizing, frames_to_tensor
from modaloom.plugins.sources.labels import InMemorySource

SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8"/></svg>'
BOMB = (
    "DecompressionBombError: Image size (3600000000 pixels) exceeds limit of 178956970 pixels, "
    "could be decompression bomb DOS attack."
)


def message(key: str, cause: str) -> str:
    return f"cannot decode sample {key!r}: {cause}"


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` RGB pixels and holds none (~65 bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b""))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + idat + chunk(b"IEND", b"")


def image_bytes(array: np.ndarray, format: str, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format=format)
    return buffer.getvalue()


def smooth_rgb(height: int, width: int) -> np.ndarray:
    """An (H, W, 3) uint8 picture of gradients (compresses well, survives resizing)."""
    y, x = np.mgrid[0:height, 0:width]
    channels = [255 * x / width, 255 * y / height, 127 + 100 * np.sin(x / 50.0 + y / 70.0)]
    return np.stack(channels, axis=-1).astype(np.uint8)


def video_bytes(
    frames: list[np.ndarray],
    *,
    format: str = "mp4",
    codec: str = "mpeg4",
    pix_fmt: str = "yuv420p",
    rotation: int | None = None,
    hflip: bool = False,
) -> bytes:
    """Encode (H, W, 3) uint8 frames at 25 fps, with a display matrix when ``rotation``."""
    buffer = io.BytesIO()
    height, width = frames[0].shape[:2]
    with av.open(buffer, "w", format=format) as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if rotation is not None:
            stream.set_display_rotation(rotation, hflip=hflip)
        for array in frames:
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            container.mux(stream.encode(frame.reformat(format=pix_fmt)))
        container.mux(stream.encode())
    return buffer.getvalue()


def tone_bytes(format: str, codec: str, rate: int, layout: str, seconds: float = 1.0) -> bytes:
    """A 0.5-amplitude 440 Hz tone."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=format) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        context = stream.codec_context
        size, channels = context.frame_size or 1024, context.channels
        for start in range(0, round(seconds * rate), size):
            t = np.arange(start, min(start + size, round(seconds * rate))) / rate
            wave = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(
                np.repeat(wave[None], channels, axis=0), format="fltp", layout=layout
            )
            frame.sample_rate, frame.pts = rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


def process(processor: Processor, value: Any, key: str = "k") -> dict[str, torch.Tensor]:
    return processor.process(value, key=key, train=False, rng=random.Random(0))


# ------------------------------------------------------------------ every failure is skipped


@pytest.mark.parametrize(
    ("processor", "value", "cause"),
    [
        (ImageProcessor(ImageSpec()), png_header(60000, 60000), BOMB),
        (ImageProcessor(ImageSpec()), b"", "UnidentifiedImageError: cannot identify image file"),
        (VideoProcessor(VideoSpec()), SVG, "no decoder for the video stream (format svg_pipe)"),
        (AudioProcessor(AudioSpec()), SVG, "no audio stream"),
    ],
    ids=["png-bomb", "empty-image", "svg-video", "svg-audio"],
)
def test_undecodable_samples_raise_media_decode_error(processor, value, cause):
    with pytest.raises(MediaDecodeError) as info:
        process(processor, value, key="bad")
    assert str(info.value).startswith(message("bad", cause))


@pytest.mark.parametrize(
    ("module", "name", "processor", "error"),
    [
        (image, "decode_image", ImageProcessor(ImageSpec()), ZeroDivisionError("division by zero")),
        (
            video_decode_module,
            "decode_video",
            VideoProcessor(VideoSpec()),
            AttributeError("no thread_count"),
        ),
        (
            audio_decode_module,
            "decode_audio",
            AudioProcessor(AudioSpec()),
            ValueError("Frame does not match AudioResampler setup."),
        ),
    ],
    ids=["image", "video", "audio"],
)
def test_any_exception_while_decoding_carries_its_type_and_message(
    module, name, processor, error, monkeypatch
):
    def failing(*args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(module, name, failing)
    with pytest.raises(MediaDecodeError) as info:
        process(processor, b"data", key="s")
    assert str(info.value) == message("s", f"{type(error).__name__}: {error}")
    assert info.value.__cause__ is error


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(3), MemoryError()])
def test_process_level_exceptions_pass_through(error):
    with pytest.raises(type(error)), decoding("k"):
        raise error


class _BuggyProcessor(Processor):
    """A plugin's processor that raises something other than `MediaDecodeError`."""

    def process(
        self, value: Any, *, key: str, train: bool, rng: random.Random
    ) -> dict[str, torch.Tensor]:
        raise RuntimeError(f"cannot parse {value!r}")

    def collate(self, items: list[dict[str, torch.Tensor] | None]) -> dict[str, torch.Tensor]:
        return {}


def _mixed_samples() -> list[dict[str, Any]]:
    good = image_bytes(smooth_rgb(40, 40), "PNG")
    return [
        {"__key__": "good", "image": good},
        {"__key__": "bomb", "image": png_header(60000, 60000)},
        {"__key__": "svg", "video": SVG},
        {"__key__": "plugin", "extra": "x"},
    ]


def test_on_error_skip_skips_and_counts_every_kind_of_failure():
    processors = {
        "image": ImageProcessor(ImageSpec(size=16)),
        "video": VideoProcessor(VideoSpec(size=16)),
        "extra": _BuggyProcessor(),
    }
    raws = [(raw, random.Random(0)) for raw in _mixed_samples()]
    decoded, skipped = SampleDecoder(processors, train=True).decode_many(raws)
    assert [sample["__key__"] for sample in decoded] == ["good"]
    assert skipped == [
        ("bomb", BOMB),
        ("svg", "no decoder for the video stream (format svg_pipe)"),
        ("plugin", "RuntimeError: cannot parse 'x'"),
    ]
    with pytest.raises(MediaDecodeError) as info:
        SampleDecoder(processors, train=True, on_error="raise").decode_many(raws)
    assert str(info.value) == message("bomb", BOMB)


def test_evaluation_logs_the_samples_it_skips(caplog):
    processors = {"image": ImageProcessor(ImageSpec(size=16)), "video": VideoProcessor(VideoSpec())}
    source = InMemorySource(_mixed_samples()[:3])
    stream = EvalStream(source, SampleDecoder(processors, train=False), batch_size=3)
    with caplog.at_level(logging.WARNING, logger="modaloom.core.data"):
        batches = list(stream)
    assert [batch["__keys__"] for batch in batches] == [["good"]]
    assert [record.getMessage() for record in caplog.records] == [
        f"skipped sample bomb: {BOMB}",
        "skipped sample svg: no decoder for the video stream (format svg_pipe)",
    ]


# ------------------------------------------------------------------ audio that changes format


@pytest.mark.parametrize(
    ("format", "codec", "first", "second"),
    [
        ("mp3", "libmp3lame", (44100, "stereo"), (22050, "mono")),
        ("adts", "aac", (44100, "stereo"), (22050, "mono")),
        ("mpegts", "mp2", (44100, "stereo"), (22050, "mono")),
        ("adts", "aac", (16000, "mono"), (44100, "stereo")),  # starts as the output format
    ],
    ids=["mp3", "aac", "ts-mp2", "aac-from-16k-mono"],
)
def test_concatenated_audio_is_resampled(format, codec, first, second):
    data = tone_bytes(format, codec, *first) + tone_bytes(format, codec, *second)
    waveform = decode_audio(data, sample_rate=16000, key="joined").numpy()
    assert 31000 < waveform.shape[0] < 35000  # 2 s at 16 kHz, give or take codec padding
    for half in (waveform[2000:14000], waveform[18000:30000]):
        spectrum = np.abs(np.fft.rfft(half))
        assert np.argmax(spectrum) * 16000 / half.shape[0] == pytest.approx(440.0, abs=3.0)
        assert np.sqrt(np.mean(half**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)


def test_too_many_undecodable_audio_packets_is_a_corrupt_stream(monkeypatch):
    data = tone_bytes("mp3", "libmp3lame", 44100, "stereo") * 2  # a tag between the two
    monkeypatch.setattr(audio_decode_module, "MAX_BAD_PACKETS", 0)
    with pytest.raises(MediaDecodeError) as info:
        decode_audio(data, key="m")
    assert str(info.value) == message("m", "corrupt stream (more than 0 undecodable packets)")


# ------------------------------------------------------------------ memory and time caps


def test_spec_default_pixel_cap_is_36_megapixels():
    assert ImageSpec().max_pixels == VideoSpec().max_pixels == 36_000_000
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        ImageSpec(max_pixels=0)


def test_image_larger_than_the_cap_is_refused_from_its_header():
    started = time.perf_counter()
    with pytest.raises(MediaDecodeError) as info:
        process(ImageProcessor(ImageSpec()), png_header(13000, 13000), key="huge")
    assert time.perf_counter() - started < 1.0
    assert str(info.value) == message(
        "huge",
        "13000x13000 image (169000000 pixels) is over max_pixels = 36000000 "
        "(raise data.image.max_pixels to decode it)",
    )


def test_image_cap_is_configurable():
    data = image_bytes(smooth_rgb(200, 300), "PNG")
    with pytest.raises(MediaDecodeError) as info:
        process(ImageProcessor(ImageSpec(size=16, max_pixels=59_999)), data, key="p")
    assert str(info.value) == message(
        "p",
        "300x200 image (60000 pixels) is over max_pixels = 59999 "
        "(raise data.image.max_pixels to decode it)",
    )
    assert process(ImageProcessor(ImageSpec(size=16, max_pixels=60_000)), data)[
        "pixel_values"
    ].shape == (3, 16, 16)


def test_video_with_frames_over_the_cap_is_refused_before_decoding():
    grey = [np.zeros((2000, 2000, 3), np.uint8)] * 2
    data = video_bytes(grey, format="matroska", codec="ffv1", pix_fmt="gray")
    assert len(data) < 100_000
    spec = VideoSpec(frames=4, size=32, max_pixels=1_000_000)
    started = time.perf_counter()
    with pytest.raises(MediaDecodeError) as info:
        process(VideoProcessor(spec), data, key="big")
    assert time.perf_counter() - started < 0.5
    assert str(info.value) == message(
        "big",
        "2000x2000 video (4000000 pixels) is over max_pixels = 1000000 "
        "(raise data.video.max_pixels to decode it)",
    )
    min_side = decode_side(32, spec.crop_scale[0])  # 91: frames are converted at 95x95
    assert decode_video(data, 4, min_side=min_side).shape == (4, 3, 95, 95)


# ------------------------------------------------------------------ reduced-size decoding


def test_large_jpeg_is_decoded_at_a_reduced_size():
    data = image_bytes(smooth_rgb(1800, 2400), "JPEG")
    assert decode_image(data, "j", min_side=300).shape == (3, 450, 600)  # DCT scaling, 1/4
    assert decode_image(data, "j").shape == (3, 1800, 2400)
    processor = ImageProcessor(ImageSpec(size=64))
    reduced = process(processor, data)["pixel_values"]
    full = augment(decode_image(data, "j"), 64, train=False, rng=random.Random(0))
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in processor.pixels[:2])
    expected = (full - mean) / std
    assert (reduced - expected).abs().mean() < 0.05  # normalised units: about 2/255


def test_large_png_is_reduced_and_small_ones_are_not():
    data = image_bytes(smooth_rgb(900, 1200), "PNG")
    assert decode_image(data, "p", min_side=200).shape == (3, 225, 300)  # box reduction, 1/4
    small = image_bytes(smooth_rgb(300, 400), "PNG")
    assert torch.equal(decode_image(small, "s", min_side=200), decode_image(small, "s"))


def test_uint8_pixels_are_cropped_before_conversion_with_identical_results():
    pixels = torch.from_numpy(smooth_rgb(48, 64).copy()).permute(2, 0, 1)
    for box in [(0, 0, 64, 48), (8, 4, 40, 30), (0, 0, 48, 48)]:
        as_float = crop_resize(pixels.float().div_(255.0), box, 24)
        assert torch.equal(crop_resize(pixels, box, 24), as_float)


def test_large_video_frames_are_converted_at_a_reduced_size():
    data = video_bytes([smooth_rgb(480, 640)] * 5)
    assert decode_video(data, 2, min_side=91).shape == (2, 3, 96, 128)
    assert torch.equal(decode_video(data, 2, min_side=241), decode_video(data, 2))
    spec = VideoSpec(frames=2, size=32)
    reduced = process(VideoProcessor(spec), data)["pixel_values"]
    full = video.transform_clip(decode_video(data, 2), spec, train=False, rng=random.Random(0))
    assert (reduced - full).abs().mean() < 0.05


def test_frames_of_another_size_are_scaled_to_the_clip_size():
    frames = [
        av.VideoFrame.from_ndarray(smooth_rgb(48, 64), format="rgb24"),
        av.VideoFrame.from_ndarray(smooth_rgb(24, 32), format="rgb24"),
    ]
    assert frames_to_tensor(frames, "k", FrameSizing()).shape == (2, 3, 48, 64)


# ------------------------------------------------------------------ silently wrong decodes


def test_16_bit_greyscale_png_is_scaled_not_clipped():
    levels = np.arange(256, dtype=np.uint16) * 257
    data = image_bytes(np.tile(levels, (8, 1)), "PNG")
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.mode == "I;16"
    pixels = decode_image(data, "g16")
    expected = torch.arange(256, dtype=torch.uint8).expand(3, 8, 256)
    assert torch.equal(pixels, expected)


def test_float_tiff_is_scaled_from_zero_one():
    values = np.linspace(0.0, 1.0, 64, dtype=np.float32)
    data = image_bytes(np.tile(values, (4, 1)), "TIFF", "F")
    pixels = decode_image(data, "f32")
    expected = torch.from_numpy(np.round(values * 255.0).astype(np.uint8)).expand(3, 4, 64)
    assert torch.equal(pixels, expected)


@pytest.mark.parametrize(
    ("rotation", "hflip", "shape", "corner"),
    [
        (0, False, (48, 64), "top-left"),
        (90, False, (64, 48), "bottom-left"),  # counter-clockwise, as PyAV's rotation reads
        (-90, False, (64, 48), "top-right"),
        (180, False, (48, 64), "bottom-right"),
        (0, True, (48, 64), "top-right"),
        (90, True, (64, 48), "bottom-right"),
    ],
)
def test_mp4_display_matrix_is_honoured(rotation, hflip, shape, corner):
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[:16, :16] = 255  # a white block in the stored top-left corner
    data = video_bytes([frame] * 3, rotation=rotation, hflip=hflip)
    frames = decode_video(data, 2).float()
    assert frames.shape[-2:] == shape
    rows, columns = {"top": slice(0, 16), "bottom": slice(-16, None)}, {"left": slice(0, 16)}
    columns["right"] = slice(-16, None)
    means = {f"{r}-{c}": frames[..., rows[r], columns[c]].mean() for r in rows for c in columns}
    assert max(means, key=means.__getitem__) == corner
