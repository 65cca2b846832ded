"""Video decoding and processing on real files written by the fixtures (see conftest.py)."""

from __future__ import annotations

import bisect
import io
import math
import random
from pathlib import Path

import av
import pytest
import torch
from pydantic import ValidationError

from modaloom.core.errors import MediaDecodeError
from modaloom.core.interfaces import DataContext
from modaloom.core.registry import Registry
from modaloom.modalities import video, video_decode, video_seek
from modaloom.modalities.transforms import IMAGENET_MEAN, IMAGENET_STD
from modaloom.modalities.video import (
    VideoProcessor,
    VideoSpec,
    make_video_processor,
    transform_clip,
)
from modaloom.modalities.video_decode import (
    decode_all_and_subsample,
    decode_frames_at,
    decode_video,
    probe_duration,
    sample_timestamps,
)
from modaloom.modalities.video_seek import SeekSampler, timeline

FPS = 25
CLIP_FRAMES = 75

SMALL = VideoSpec(frames=8, size=32)


def expected_index(t: float) -> int:
    """Index of the frame on screen at ``t`` in a constant-25-fps fixture clip."""
    return min(math.floor(t * FPS + 1e-6), CLIP_FRAMES - 1)


def message(key: str, cause: str) -> str:
    return f"cannot decode sample {key!r}: {cause}"


# --- decoding: frame identity, seek vs decode-all ------------------------------------------


@pytest.mark.parametrize("clip", ["mp4_h264_aac", "webm_vp9", "avi_mpeg4"])
def test_decode_video_returns_the_segment_centre_frames(clip, request, frame_index):
    path: Path = request.getfixturevalue(clip)
    frames = decode_video(path, 8)
    assert frames.shape == (8, 3, 48, 64) and frames.dtype == torch.uint8
    centres = sample_timestamps(3.0, 8)
    assert [frame_index(f) for f in frames] == [expected_index(t) for t in centres]
    assert [expected_index(t) for t in centres] == [4, 14, 23, 32, 42, 51, 60, 70]


@pytest.mark.parametrize("clip", ["mp4_h264_aac", "webm_vp9", "avi_mpeg4"])
def test_seek_sampling_matches_decode_all_and_subsample(clip, request, frame_index):
    data = request.getfixturevalue(clip).read_bytes()
    rng = random.Random(7)
    times = [rng.uniform(0.0, 3.0) for _ in range(12)] + [0.0, 2.999, 1.0, 1.0]
    seek = decode_frames_at(data, times)
    baseline = decode_all_and_subsample(data, times)
    assert torch.equal(seek, baseline)
    assert [frame_index(f) for f in seek] == [expected_index(t) for t in times]


@pytest.mark.parametrize(
    ("format", "codec"),
    [("matroska", "libx264"), ("mov", "libx264"), ("mpegts", "libx264"), ("mp4", "mpeg4")],
)
def test_seek_sampling_matches_decode_all_in_other_containers(
    format, codec, make_video, tmp_path, frame_index
):
    path = make_video(tmp_path / f"clip.{format}", format=format, codec=codec, gop=12)
    data = path.read_bytes()
    rng = random.Random(3)
    times = [rng.uniform(0.0, 3.0) for _ in range(12)] + [0.05, 0.3, 2.99]
    seek = decode_frames_at(data, times)
    assert torch.equal(seek, decode_all_and_subsample(data, times))
    assert [frame_index(f) for f in seek] == [expected_index(t) for t in times]


@pytest.mark.parametrize(
    ("times", "indices", "seeks"), [([2.5, 2.7], [62, 67], 2), ([2.5, 2.9], [62, 72], 2)]
)
def test_seeking_decodes_a_fraction_of_the_clip(times, indices, seeks, mp4_h264_aac):
    with av.open(str(mp4_h264_aac)) as container:
        stream = container.streams.video[0]
        sampler = SeekSampler(container, stream, timeline(container, stream), "k", 100)
        frames = sampler.sample(times)
    assert [round(f.time * FPS) for f in frames] == indices
    # keyframes every 10 frames and at scene cuts (60, 64, 70, ...): one seek per GOP touched
    assert sampler.seeks == seeks
    assert sampler.decoded < 20


def write_gop12_bframes(path: Path, pattern, frames: int) -> None:
    """An H.264 mp4 with B-frames and a keyframe every 12 frames, frame i showing pattern(i)."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"g": "12", "keyint_min": "12", "sc_threshold": "0", "threads": "1"}
        for index in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pattern(index), format="rgb24")))
        container.mux(stream.encode())


def sample_indices(path: Path, times: list[float], frame_index) -> tuple[list[int], int]:
    """The pattern index of each frame the seek sampler returns, and how many it decoded."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        sampler = SeekSampler(container, stream, timeline(container, stream), "k", 1000)
        frames = sampler.sample(times)
    return [frame_index(f.rgb()) for f in frames], sampler.decoded


def test_target_between_a_keyframes_decode_and_display_times_decodes_forward(
    tmp_path, pattern, frame_index
):
    """The mp4 index holds decode times, 2 frames (B-frame reorder delay) before display times:
    a target in that gap must not seek to the keyframe (which shows after it) and back."""
    path = tmp_path / "bframes.mp4"
    write_gop12_bframes(path, pattern, 48)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        sampler = SeekSampler(container, stream, timeline(container, stream), "k", 100)
        frames = sampler.sample([20.2 / FPS, 23.2 / FPS])  # keyframe 24 decodes before frame 23
    assert [frame_index(f.rgb()) for f in frames] == [20, 23]
    assert sampler.seeks == 1
    assert sampler.decoded <= 15


def test_the_frame_after_a_target_is_not_decoded_when_packets_show_it_later(
    tmp_path, pattern, frame_index, monkeypatch
):
    """Packets' display and decode times prove that nothing else is on screen by the target, so
    the frame after it (needed only to see that) is not decoded: one frame fewer per target."""
    path = tmp_path / "gop12.mp4"
    write_gop12_bframes(path, pattern, 60)
    times = [(index + 0.2) / FPS for index in (3, 15, 29, 40, 50)]

    looking_ahead, decoded = sample_indices(path, times, frame_index)
    monkeypatch.setattr(video_seek, "LOOKAHEAD_PACKETS", 0)
    decoding_after, decoded_after = sample_indices(path, times, frame_index)
    assert looking_ahead == decoding_after == [3, 15, 29, 40, 50]
    assert decoded == decoded_after - len(times)


@pytest.mark.parametrize(
    ("times", "ordered"),
    [([(2, 0), (1, 1), (3, 2)], True), ([(2, 1), (4, 0)], False), ([(0, 1)], False)],
)
def test_packets_out_of_time_order_turn_the_look_ahead_off(times, ordered, mp4_h264_aac):
    """(pts, dts) pairs: a decode time going back, or a frame shown before its decode time,
    breaks what `_shown_until` relies on, so the frame after a target is decoded again."""
    with av.open(str(mp4_h264_aac)) as container:
        stream = container.streams.video[0]
        sampler = SeekSampler(container, stream, timeline(container, stream), "k", 100)
        packets = [av.Packet() for _ in times]
        for packet, (pts, dts) in zip(packets, times, strict=True):
            packet.pts, packet.dts = pts, dts
        sampler._packets, sampler._eof, sampler._budget = iter(packets), False, len(packets)
        while sampler._demux() is not None:
            pass
    assert sampler._times_ordered is ordered


def test_consecutive_targets_in_one_gop_reuse_the_decoder(make_video, tmp_path, frame_index):
    path = make_video(tmp_path / "longgop.mp4", format="mp4", codec="libx264", gop=300)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        sampler = SeekSampler(container, stream, timeline(container, stream), "k", 1000)
        frames = sampler.sample(sample_timestamps(3.0, 8))
    assert [frame_index(f.rgb()) for f in frames] == [4, 14, 23, 32, 42, 51, 60, 70]
    assert sampler.seeks == 1  # one keyframe: later targets decode forward, never seek back


def test_inputs_as_bytes_path_string_and_file_object(mp4_h264_aac):
    from_path = decode_video(mp4_h264_aac, 4)
    assert torch.equal(decode_video(str(mp4_h264_aac), 4), from_path)
    assert torch.equal(decode_video(mp4_h264_aac.read_bytes(), 4), from_path)
    with open(mp4_h264_aac, "rb") as handle:
        assert torch.equal(decode_video(handle, 4), from_path)
    assert torch.equal(decode_video(io.BytesIO(mp4_h264_aac.read_bytes()), 4), from_path)


def test_short_clip_repeats_frames(make_video, tmp_path, frame_index):
    path = make_video(tmp_path / "short.mp4", format="mp4", codec="libx264", frames=3)
    frames = decode_video(path, 8)
    assert [frame_index(f) for f in frames] == [0, 0, 0, 1, 1, 2, 2, 2]


@pytest.mark.parametrize("fmt", ["mp4", "matroska"])
def test_variable_frame_rate_picks_the_frame_on_screen(fmt, make_video, tmp_path, frame_index):
    times_ms = [sum(20 if i % 2 == 0 else 80 for i in range(n)) for n in range(40)]
    path = make_video(
        tmp_path / f"vfr.{fmt}", format=fmt, codec="libx264", frames=40, times_ms=times_ms
    )
    starts = [t / 1000 for t in times_ms]
    rng = random.Random(3)
    targets = [rng.uniform(0.0, starts[-1]) for _ in range(20)]
    frames = decode_frames_at(path, targets)
    assert [frame_index(f) for f in frames] == [bisect.bisect_right(starts, t) - 1 for t in targets]
    assert probe_duration(path) == pytest.approx(1.96, abs=0.09)


class _Unseekable(io.RawIOBase):
    """A pipe-like binary stream: reads or writes, never seeks."""

    def __init__(self, data: bytes = b"") -> None:
        self.inner, self.written = io.BytesIO(data), bytearray()

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        return self.inner.readinto(buffer)

    def write(self, data) -> int:  # type: ignore[no-untyped-def]
        self.written += bytes(data)
        return len(data)


def test_stream_without_duration_is_measured_by_demuxing(frame_index, pattern):
    sink = _Unseekable()  # a streamed Matroska file: no duration, no cues
    with av.open(sink, "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=FPS)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(CLIP_FRAMES):
            image = av.VideoFrame.from_ndarray(pattern(index), format="rgb24")
            for packet in stream.encode(image):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = bytes(sink.written)
    with av.open(io.BytesIO(data), "r") as container:
        assert container.duration is None and container.streams.video[0].duration is None
    assert probe_duration(data) == pytest.approx(3.0)
    assert [frame_index(f) for f in decode_video(data, 8)] == [4, 14, 23, 32, 42, 51, 60, 70]


def test_unseekable_input_is_read_into_memory(mp4_h264_aac, frame_index):
    frames = decode_video(_Unseekable(mp4_h264_aac.read_bytes()), 8)
    assert [frame_index(f) for f in frames] == [4, 14, 23, 32, 42, 51, 60, 70]


def test_raw_h264_without_timestamps_falls_back_to_frame_indices(make_video, tmp_path, frame_index):
    path = make_video(tmp_path / "raw.h264", format="h264", codec="libx264", frames=20)
    frames = decode_video(path, 8)
    assert [frame_index(f) for f in frames] == [1, 3, 6, 8, 11, 13, 16, 18]


# --- errors -------------------------------------------------------------------------------


def test_truncated_mp4_raises(mp4_h264_aac):
    data = mp4_h264_aac.read_bytes()
    with pytest.raises(MediaDecodeError) as info:
        VideoProcessor(SMALL).process(
            data[: len(data) // 2], key="clip", train=False, rng=random.Random()
        )
    assert str(info.value) == message(
        "clip", "unreadable or unknown container (Invalid data found when processing input)"
    )
    assert info.value.key == "clip"


def test_truncated_webm_raises_with_the_end_time(webm_vp9):
    data = webm_vp9.read_bytes()
    with pytest.raises(
        MediaDecodeError,
        match=r"^cannot decode sample 'clip': video ends at "
        r"\d+\.\d\ds, before the sampled time \d+\.\d\ds \(truncated file\?\)$",
    ):
        decode_video(data[: len(data) // 2], 8, key="clip")


def test_random_bytes_raise():
    garbage = random.Random(0).randbytes(20_000)
    with pytest.raises(MediaDecodeError) as info:
        VideoProcessor(SMALL).process(garbage, key="x", train=True, rng=random.Random(0))
    assert str(info.value) == message(
        "x", "unreadable or unknown container (Invalid data found when processing input)"
    )


def test_unknown_container_raises(tmp_path):
    path = tmp_path / "notes.xyz"
    path.write_text("modaloom is not a video container\n" * 50)
    with pytest.raises(MediaDecodeError) as info:
        decode_video(path, 4, key="notes")
    assert str(info.value) == message(
        "notes", "unreadable or unknown container (Invalid data found when processing input)"
    )


def test_audio_only_file_has_no_video_stream(flac_file):
    with pytest.raises(MediaDecodeError) as info:
        VideoProcessor(SMALL).process(flac_file, key="a1", train=False, rng=random.Random())
    assert str(info.value) == message("a1", "no video stream")


def test_video_stream_without_frames_raises(tmp_path):
    path = tmp_path / "empty_video.mkv"  # mp4 would drop the empty track; Matroska keeps it
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=16000, layout="mono")
        container.start_encoding()
        frame = av.AudioFrame(format="fltp", layout="mono", samples=16000)
        frame.sample_rate, frame.pts = 16000, 0
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        for packet in [*audio.encode(frame), *audio.encode()]:
            container.mux(packet)
    with pytest.raises(MediaDecodeError) as info:
        decode_video(path, 4, key="v")
    assert str(info.value) == message("v", "no decodable video frames")


def test_missing_file_and_wrong_type_raise():
    with pytest.raises(MediaDecodeError) as info:
        decode_video("/nonexistent/clip.mp4", 4, key="m")
    assert str(info.value) == message("m", "cannot open file (No such file or directory)")
    with pytest.raises(MediaDecodeError) as info:
        VideoProcessor(SMALL).process(42, key="n", train=False, rng=random.Random())
    assert str(info.value) == message(
        "n",
        "expected bytes, a path, a binary file object, a PIL image, a numpy array or a tensor, "
        "got int",
    )


def test_packet_cap_stops_runaway_decoding(make_video, tmp_path):
    path = make_video(tmp_path / "cap.mp4", format="mp4", codec="libx264", gop=300)
    with pytest.raises(MediaDecodeError) as info:
        decode_frames_at(path, [2.5], key="c", max_packets=5)
    assert str(info.value) == message("c", "no frame found within 5 packets")


# --- transforms, processor, collate, registration ------------------------------------------


def test_training_sampling_is_deterministic_for_a_seed(mp4_h264_aac, frame_index):
    data = mp4_h264_aac.read_bytes()
    raw = [decode_video(data, 8, rng=random.Random(seed)) for seed in (1, 1, 2)]
    assert torch.equal(raw[0], raw[1]) and not torch.equal(raw[0], raw[2])
    indices = [frame_index(f) for f in raw[0]]
    # one frame per 3/8 s segment (9.375 frames wide)
    assert all(
        math.floor(i * 9.375) <= index <= math.floor((i + 1) * 9.375)
        for i, index in enumerate(indices)
    )
    processor = VideoProcessor(SMALL)
    first = processor.process(data, key="k", train=True, rng=random.Random(5))
    again = processor.process(data, key="k", train=True, rng=random.Random(5))
    assert torch.equal(first["pixel_values"], again["pixel_values"])


@pytest.mark.parametrize(
    ("sampling", "random_times"), [("random_segment", True), ("uniform", False)]
)
def test_train_sampling_mode_decides_whether_times_are_random(
    sampling, random_times, mp4_h264_aac, monkeypatch
):
    seen = []

    def fake_decode(value, num, *, rng, key, max_packets, threads, max_pixels, min_side):
        seen.append(rng)
        return torch.zeros(num, 3, 48, 64, dtype=torch.uint8)

    monkeypatch.setattr(video_decode, "decode_video", fake_decode)
    rng = random.Random(0)
    processor = VideoProcessor(VideoSpec(frames=4, size=32, train_sampling=sampling))
    processor.process(mp4_h264_aac, key="k", train=True, rng=rng)
    processor.process(mp4_h264_aac, key="k", train=False, rng=rng)
    assert seen == [rng if random_times else None, None]


def test_eval_transform_resizes_shorter_side_crops_centre_and_normalises():
    frames = torch.zeros(2, 3, 48, 64, dtype=torch.uint8)
    frames[..., :, 24:40] = 255  # a white band, the middle quarter of the width
    out = transform_clip(frames, VideoSpec(size=24), train=False, rng=random.Random())
    assert out.shape == (2, 3, 24, 24) and out.dtype == torch.float32
    white = (1.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    black = -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)
    # 64x48 -> 32x24, centre 24 columns: the band lands on columns 8..15
    assert torch.allclose(out[0, :, 12, 12], white, atol=1e-4)
    assert torch.allclose(out[0, :, 12, 1], black, atol=1e-4)
    assert torch.allclose(out[1, :, 12, 22], black, atol=1e-4)


def test_train_transform_uses_one_crop_for_all_frames():
    frames = torch.randint(0, 256, (1, 3, 48, 64), dtype=torch.uint8).repeat(4, 1, 1, 1)
    spec = VideoSpec(size=16)
    outs = [transform_clip(frames, spec, train=True, rng=random.Random(s)) for s in range(6)]
    assert all(out.shape == (4, 3, 16, 16) for out in outs)
    assert all(torch.equal(out[0], out[i]) for out in outs for i in range(1, 4))
    assert len({out[0].sum().item() for out in outs}) > 1  # crops differ between draws
    again = transform_clip(frames, spec, train=True, rng=random.Random(0))
    assert torch.equal(again, outs[0])


def test_flip_mirrors_the_clip():
    frames = torch.arange(64, dtype=torch.uint8).view(1, 1, 1, 64).expand(2, 3, 64, 64)
    spec = VideoSpec(size=64, crop_scale=(1.0, 1.0), mean=(0, 0, 0), std=(1, 1, 1))
    outs = [transform_clip(frames, spec, train=True, rng=random.Random(s)) for s in range(8)]
    increasing = [bool(o[0, 0, 0, -1] > o[0, 0, 0, 0]) for o in outs]
    assert set(increasing) == {True, False}  # some clips flipped, some not
    no_flip = VideoSpec(size=64, crop_scale=(1.0, 1.0), flip=False)
    for seed in range(8):
        out = transform_clip(frames, no_flip, train=True, rng=random.Random(seed))
        assert out[0, 0, 0, -1] > out[0, 0, 0, 0]


def test_spec_rejects_bad_ranges():
    with pytest.raises(ValidationError, match="crop_scale must satisfy 0 < low <= high <= 1"):
        VideoSpec(crop_scale=(0.9, 0.5))
    with pytest.raises(ValidationError, match="extra_forbidden"):
        VideoSpec(fps=3)  # type: ignore[call-arg]


def test_collate_stacks_and_zero_fills(mp4_h264_aac):
    processor = make_video_processor(SMALL, DataContext())
    item = processor.process(mp4_h264_aac, key="k", train=False, rng=random.Random())
    assert item["pixel_values"].shape == (8, 3, 32, 32)
    batch = processor.collate([item, None, item])
    assert batch["pixel_values"].shape == (3, 8, 3, 32, 32)
    assert batch["present"].tolist() == [True, False, True]
    assert batch["present"].dtype == torch.bool
    assert not batch["pixel_values"][1].any() and torch.equal(
        batch["pixel_values"][2], item["pixel_values"]
    )


def test_registers_the_video_modality():
    registry = Registry()
    video.modaloom_register_modalities(registry)
    component = registry.get("modality", "video")
    assert component.config is VideoSpec and component.factory is make_video_processor
    assert component.description == "PyAV video decoding with seek-based frame sampling"
    assert isinstance(component.factory(VideoSpec(), DataContext()), VideoProcessor)


def test_hidden_non_reference_frames_are_not_decoded(
    make_video, tmp_path, frame_index, monkeypatch
):
    """B-frames that no target shows are skipped by the decoder: same frames, fewer decoded."""
    path = make_video(tmp_path / "longgop.mp4", format="mp4", codec="libx264", gop=300)
    times = sample_timestamps(3.0, 8)

    skipping, decoded = sample_indices(path, times, frame_index)
    monkeypatch.setattr(SeekSampler, "_skip_if_hidden", lambda self, packet: None)
    every, all_decoded = sample_indices(path, times, frame_index)
    assert skipping == every == [4, 14, 23, 32, 42, 51, 60, 70]
    assert decoded <= 0.75 * all_decoded  # 44 of 72 with libx264 core 165
