"""One opened container per sample for its video and audio (`open_media(share=...)`)."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest
import torch

from modaloom.core.errors import MediaDecodeError
from modaloom.modalities import media_io
from modaloom.modalities.audio_decode import decode_audio
from modaloom.modalities.media_io import open_media
from modaloom.modalities.video_decode import decode_video


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Records every `av.open` made through `open_media`."""
    calls: list[object] = []
    real = av.open

    def counting(target: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(target)
        return real(target, *args, **kwargs)

    monkeypatch.setattr(av, "open", counting)
    yield calls
    media_io._release_shared()


def separately(source: bytes | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Video and audio, each from a container of its own (a copy of the bytes, another key)."""
    copy = bytes(bytearray(source)) if isinstance(source, bytes) else source
    video = decode_video(copy, 6, rng=random.Random(3), key="alone-video")
    return video, decode_audio(copy, key="alone-audio")


@pytest.mark.parametrize("as_bytes", [True, False])
def test_video_and_audio_of_one_sample_open_the_file_once(mp4_h264_aac, opens, as_bytes):
    """The audio reads the container the video kept (PyAV); decoded alone, FFmpeg's own reader
    reads it: the same samples."""
    source = mp4_h264_aac.read_bytes() if as_bytes else mp4_h264_aac
    want_video, want_audio = separately(source)
    opens.clear()
    video = decode_video(source, 6, rng=random.Random(3), key="s1")
    audio = decode_audio(source, key="s1")
    assert len(opens) == 1
    assert media_io._kept() is None  # closed once both have read it
    assert torch.equal(video, want_video)
    assert torch.equal(audio, want_audio)


def test_audio_read_first_uses_ffmpegs_own_reader_and_the_video_opens_once(mp4_h264_aac, opens):
    """Nothing tells the audio reader a video reader follows: it reads with FFmpeg's own reader,
    and the container the video keeps for it is closed by the next sample."""
    data = mp4_h264_aac.read_bytes()
    want_video, want_audio = separately(data)
    opens.clear()
    audio = decode_audio(data, key="s1")
    assert opens == []
    video = decode_video(data, 6, rng=random.Random(3), key="s1")
    assert len(opens) == 1
    assert torch.equal(video, want_video)
    assert torch.equal(audio, want_audio)
    kept = media_io._kept()
    assert kept is not None and kept.used == {"video"}
    decode_video(data, 4, key="s2")
    with pytest.raises(AssertionError, match="Container is not open"):
        kept.container.seek(0)


def test_another_sample_opens_its_own_and_closes_the_kept_one(mp4_h264_aac, opens):
    data = mp4_h264_aac.read_bytes()
    decode_video(data, 4, key="a")
    kept = media_io._kept()
    assert kept is not None and kept.used == {"video"}
    decode_video(data, 4, key="b")  # same bytes, another sample
    assert len(opens) == 2
    with pytest.raises(AssertionError, match="Container is not open"):
        kept.container.seek(0)
    now = media_io._kept()
    assert now is not None and now.identity[0] == "b"


def test_the_same_reader_twice_gets_a_fresh_container(mp4_h264_aac, opens):
    first = decode_video(mp4_h264_aac, 4, key="a")
    second = decode_video(mp4_h264_aac, 4, key="a")
    assert len(opens) == 2
    assert torch.equal(first, second)


def test_an_error_inside_closes_the_shared_container(mp4_h264_aac, opens):
    with pytest.raises(MediaDecodeError) as info, open_media(mp4_h264_aac, "k", share="video"):
        raise av.InvalidDataError(1094995529, "Invalid data found when processing input")
    reason = "Invalid data found when processing input"
    assert info.value.cause == f"corrupt or truncated stream ({reason})"
    assert media_io._kept() is None


def test_file_objects_are_never_shared(mp4_h264_aac, opens):
    with mp4_h264_aac.open("rb") as handle, open_media(handle, "k", share="video"):
        pass
    assert media_io._kept() is None
    assert len(opens) == 1


def test_each_thread_keeps_its_own_container(mp4_h264_aac, opens):
    decode_video(mp4_h264_aac, 4, key="main")
    kept = media_io._kept()
    other = threading.Thread(target=decode_video, args=(mp4_h264_aac, 4), kwargs={"key": "t"})
    other.start()
    other.join()
    assert media_io._kept() is kept  # the other thread neither reused nor closed it
    assert torch.equal(decode_audio(mp4_h264_aac, key="main"), separately(mp4_h264_aac)[1])
    assert len(opens) == 3  # main, thread, and the video of `separately` (its audio is read by
    # FFmpeg's own reader)
