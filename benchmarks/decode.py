"""Benchmark: seek-based frame sampling versus decoding every frame, and audio spectrograms.

Writes a synthetic H.264 clip (default 10 s, 398x224 "224p" 16:9, 25 fps, yuv420p, libx264
default preset, no B-frame tuning) once per keyframe interval (default 50 frames = 2 s, and 250
frames = 10 s, x264's default ``keyint``), then times two ways of getting 8 frames per clip at
the same timestamps (segment centres, as evaluation does; and random per segment, as training
does): `decode_video` (seek to the keyframe before each target, decode forward) and
`decode_all_and_subsample` (decode every frame, keep 8). Both run single-threaded and return
the same (8, 3, 224, 398) uint8 frames. Then times 10 s of 44.1 kHz stereo AAC audio through
decode + resample to 16 kHz mono + Kaldi fbank (one (64, 512) spectrogram per file).

Each measurement runs ``--repeats`` times over ``--clips`` decodes; the median is reported.

Usage: ``python -m modaloom.benchmarks.decode`` or ``python benchmarks/decode.py [--help]``.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import time
from collections.abc import Callable

import av
import numpy as np
import torch

from modaloom.modalities.audio import AudioProcessor, AudioSpec
from modaloom.modalities.video_decode import (
    decode_all_and_subsample,
    decode_video,
    probe_duration,
    sample_timestamps,
)
from modaloom.modalities.video_seek import SeekSampler, timeline

try:
    from decode_peers import (  # python benchmarks/decode.py
        Decode,
        available_audio_peers,
        available_peers,
        compare_audio,
        compare_video,
    )
except ImportError:  # python -m modaloom.benchmarks.decode
    from modaloom.benchmarks.decode_peers import (
        Decode,
        available_audio_peers,
        available_peers,
        compare_audio,
        compare_video,
    )


def make_clip(seconds: float, fps: int, width: int, height: int, gop: int) -> bytes:
    """An mp4 (H.264, x264 defaults: 3 B-frames) of a panning, textured scene with a moving
    square, and a keyframe exactly every ``gop`` frames (scene-cut keyframes disabled)."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:height, 0 : width * 2]
    scene = np.stack([(xs * 2) % 256, (ys * 3) % 256, (xs + ys) % 256], axis=-1).astype(np.float32)
    scene += rng.normal(0.0, 12.0, scene.shape)  # mild texture, roughly camera-noise level
    scene = scene.clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
        for index in range(round(seconds * fps)):
            shift = (index * 3) % width
            frame = scene[:, shift : shift + width].copy()
            left = (index * 5) % (width - 40)
            frame[height // 2 - 20 : height // 2 + 20, left : left + 40] = 255
            video = av.VideoFrame.from_ndarray(frame, format="rgb24")
            for packet in stream.encode(video):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def make_audio(seconds: float) -> bytes:
    """An m4a (AAC, 44.1 kHz stereo) of a chirp with some noise."""
    rate = 44100
    t = np.arange(round(seconds * rate)) / rate
    wave = 0.4 * np.sin(2 * np.pi * (200 * t + 150 * t * t)) + 0.05 * np.random.default_rng(
        0
    ).standard_normal(t.size)
    samples = np.repeat(wave.astype(np.float32)[None], 2, axis=0)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate, layout="stereo")
        assert isinstance(stream, av.AudioStream)
        size = stream.codec_context.frame_size or 1024
        for start in range(0, samples.shape[1], size):
            chunk = np.ascontiguousarray(samples[:, start : start + size])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def rate(work: Callable[[int], object], count: int, repeats: int) -> float:
    """Median items per second of ``work(i)`` over ``count`` items, ``repeats`` times."""
    work(0)  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for index in range(count):
            work(index)
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def decoded_per_clip(clip: bytes, times: Callable[[int], list[float]], count: int) -> float:
    """Mean frames the seek sampler decodes for ``count`` clips' target times."""
    total = 0
    for index in range(count):
        with av.open(io.BytesIO(clip)) as container:
            stream = container.streams.video[0]
            sampler = SeekSampler(container, stream, timeline(container, stream), "bench", 4096)
            sampler.sample(times(index))
            total += sampler.decoded
    return total / count


def bench_video(
    args: argparse.Namespace, gop: int, peers: dict[str, Decode] | None = None
) -> list[float]:
    clip = make_clip(args.seconds, args.fps, args.width, args.height, gop)
    duration = probe_duration(clip)
    print(
        f"clip: {args.seconds:g} s, {args.width}x{args.height}, {args.fps} fps, h264, "
        f"keyframe every {gop} frames ({gop / args.fps:g} s), {len(clip) / 1e3:.0f} kB"
    )
    ratios: list[float] = []
    for mode in ("eval", "train"):

        def times(index: int, mode: str = mode) -> list[float]:
            rng = random.Random(index) if mode == "train" else None
            return sample_timestamps(duration, args.frames, rng)

        def seek(index: int, mode: str = mode) -> object:
            rng = random.Random(index) if mode == "train" else None
            return decode_video(clip, args.frames, rng=rng)

        def full(index: int) -> object:
            return decode_all_and_subsample(clip, times(index))

        seek_rate = rate(seek, args.clips, args.repeats)
        full_rate = rate(full, args.clips, args.repeats)
        decoded = decoded_per_clip(clip, times, args.clips)
        print(
            f"  {mode:5s} {args.frames} frames: seek {seek_rate:7.1f} clips/s | decode-all "
            f"{full_rate:7.1f} clips/s | speed-up {seek_rate / full_rate:.2f}x | "
            f"{decoded:.1f} frames decoded per clip"
        )
        if peers:
            label = f"{mode} gop {gop}"
            ratio = compare_video(clip, args.fps, times, peers, label, args.clips, args.repeats)
            ratios.extend([] if ratio is None else [ratio])
    return ratios


def bench_audio(args: argparse.Namespace, peers: bool) -> float | None:
    """Print modaloom's spectrograms/s and return modaloom / best peer (``None``: no peer)."""
    data = make_audio(args.seconds)
    processor = AudioProcessor(AudioSpec())
    rng = random.Random(0)

    def spectrograms(value: object) -> object:
        return processor.process(value, key="bench", train=True, rng=rng)

    per_second = rate(lambda index: spectrograms(data), args.clips, args.repeats)
    print(
        f"audio: {args.seconds:g} s AAC 44.1 kHz stereo -> 16 kHz mono -> (1, 64, 512) fbank: "
        f"{per_second:.1f} spectrograms/s"
    )
    if not peers:
        return None
    found = available_audio_peers(make_audio(1.0))
    return compare_audio(data, spectrograms, found, args.clips, args.repeats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--width", type=int, default=398)
    parser.add_argument("--height", type=int, default=224)
    parser.add_argument(
        "--gops",
        type=int,
        nargs="+",
        default=[12, 50, 250],
        help="keyframe intervals in frames (12: 0.5 s, broadcast-like; 50: 2 s, common for web "
        "video; 250: 10 s, x264's default keyint)",
    )
    parser.add_argument("--frames", type=int, default=8, help="frames sampled per clip")
    parser.add_argument("--clips", type=int, default=5, help="decodes per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements (median reported)")
    parser.add_argument(
        "--peers", action="store_true", help="also decord2 and torchcodec (pip install .[bench])"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as in a DataLoader worker; FFmpeg decoders also get 1 thread
    print(f"PyAV {av.__version__}, torch {torch.__version__}, single-threaded")
    peers = available_peers(make_clip(1.0, args.fps, 64, 48, 12)) if args.peers else None
    ratios = [ratio for gop in args.gops for ratio in bench_video(args, gop, peers)]
    audio_ratio = bench_audio(args, args.peers)
    if args.peers:
        video = f"{min(ratios):.2f}" if ratios else "n/a"
        audio = "n/a" if audio_ratio is None else f"{audio_ratio:.2f}"
        print(f"modaloom/best-peer: video {video} audio {audio}")


if __name__ == "__main__":
    main()
