"""RGB conversion of decoded frames: one single-threaded reformatter per process, same pixels."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from modaloom.modalities import video_frames
from modaloom.modalities.video_decode import decode_video
from modaloom.modalities.video_frames import reformatter, to_rgb


def write_noise_mp4(path: Path, frames: int = 30, width: int = 96, height: int = 64) -> Path:
    """An h264 mp4 of random textured frames (x264 defaults, so B-frames) with ``frames`` frames."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": "12", "threads": "1"}
        for _ in range(frames):
            array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def noise_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_noise_mp4(tmp_path_factory.mktemp("frames") / "noise.mp4")


def decoded_frames(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


def test_to_rgb_is_bit_identical_to_pyav_default_conversion(noise_mp4):
    frames = decoded_frames(noise_mp4)
    assert len(frames) == 30
    for frame in frames:
        full = frame.to_ndarray(format="rgb24")
        half = frame.to_ndarray(width=48, height=32, format="rgb24", interpolation="AREA")
        np.testing.assert_array_equal(to_rgb(frame, (96, 64)), full)
        np.testing.assert_array_equal(to_rgb(frame, (48, 32)), half)


def test_decode_video_frames_match_pyav_default_conversion(noise_mp4):
    frames = decoded_frames(noise_mp4)
    clip = decode_video(noise_mp4, 30)  # one frame per segment of 30: every frame, in order
    expected = np.stack([frame.to_ndarray(format="rgb24") for frame in frames])
    np.testing.assert_array_equal(clip.permute(0, 2, 3, 1).numpy(), expected)


def test_reformatter_is_kept_per_process(monkeypatch):
    first = reformatter()
    assert reformatter() is first
    monkeypatch.setattr(video_frames, "_REFORMATTER", (os.getpid() + 1, first))  # as after fork
    assert reformatter() is not first


class _Clips(Dataset[torch.Tensor]):
    def __init__(self, path: Path) -> None:
        self.path = path

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        return decode_video(self.path, 4 + index)[:4]


def test_forked_dataloader_workers_convert_without_deadlock(noise_mp4):
    expected = [decode_video(noise_mp4, 4 + index)[:4] for index in range(4)]  # parent's first
    loader = DataLoader(
        _Clips(noise_mp4),
        batch_size=None,
        num_workers=2,
        multiprocessing_context="fork",
        timeout=120,
    )
    got = list(loader)
    assert len(got) == 4
    for clip, want in zip(got, expected, strict=True):
        assert torch.equal(clip, want)
