"""`benchmarks/decode.py --peers`: modaloom's video and audio decoding against decord2, torchcodec.

Each peer decodes the same clip at the same frame indices (the frames on screen at the targets
`decode_video` samples, a constant frame rate starting at 0), single-threaded, to a contiguous
(T, 3, H, W) uint8 RGB tensor at full resolution, as `decode_frames_at` returns (decord2 gives
(T, H, W, 3) and torchcodec a channels-last view, so each is made contiguous); each row's
first clip is asserted to decode to the same pixels as modaloom's before any timing. Contenders
run interleaved (each repeat times every contender in turn) and the median clips per second is
reported with modaloom / peer. A peer that is not
installed, or whose libraries cannot load (torchcodec needs FFmpeg's shared libraries on the
system; ``benchmarks/pyav_ffmpeg.py`` serves PyAV's own), is skipped with a printed line.

Audio peers decode the benchmark's stereo file to 16 kHz mono their own fastest way
(decord2's ``AudioReader(mono=True)``, torchcodec's ``AudioDecoder(num_channels=1)``), which is
FFmpeg's default downmix, (L + R) / sqrt(2), where modaloom averages; their samples are divided by
sqrt(2) (`STEREO_DOWNMIX`), asserted equal to modaloom's within 1e-6, and go through the same
`AudioProcessor` (Kaldi fbank) as modaloom's, so a row compares spectrograms per second.
"""

from __future__ import annotations

import io
import math
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import torch

from modaloom.modalities.audio_decode import decode_audio
from modaloom.modalities.video_decode import decode_frames_at

Decode = Callable[[bytes, list[int]], torch.Tensor]
F = TypeVar("F")
STEREO_DOWNMIX = math.sqrt(2.0)
"""FFmpeg's default stereo-to-mono mix, (L + R) / sqrt(2), over an average, (L + R) / 2."""
DecodeAudio = Callable[[bytes, int], torch.Tensor]
"""(file bytes, output rate) -> (S,) float32 mono samples."""


def _decord() -> Decode:
    import decord  # decord2's module (optional, the [bench] extra)

    def decode(clip: bytes, indices: list[int]) -> torch.Tensor:
        reader = decord.VideoReader(io.BytesIO(clip), num_threads=1)
        return (
            torch.from_numpy(reader.get_batch(indices).asnumpy()).permute(0, 3, 1, 2).contiguous()
        )

    return decode


def _torchcodec() -> Decode:
    from torchcodec.decoders import VideoDecoder  # optional, the [bench] extra

    def decode(clip: bytes, indices: list[int]) -> torch.Tensor:
        decoder = VideoDecoder(clip, seek_mode="exact", num_ffmpeg_threads=1)
        return decoder.get_frames_at(indices).data.contiguous()  # a channels-last view

    return decode


def _decord_audio() -> DecodeAudio:
    import decord  # decord2's module (optional, the [bench] extra)

    def decode(data: bytes, rate: int) -> torch.Tensor:
        reader = decord.AudioReader(io.BytesIO(data), sample_rate=rate, mono=True)
        return torch.from_numpy(reader[:].asnumpy())[0] / STEREO_DOWNMIX

    return decode


def _torchcodec_audio() -> DecodeAudio:
    from torchcodec.decoders import AudioDecoder  # optional, the [bench] extra

    def decode(data: bytes, rate: int) -> torch.Tensor:
        decoder = AudioDecoder(data, sample_rate=rate, num_channels=1)
        return decoder.get_all_samples().data[0] / STEREO_DOWNMIX

    return decode


PEERS: dict[str, Callable[[], Decode]] = {"decord2": _decord, "torchcodec": _torchcodec}
AUDIO_PEERS: dict[str, Callable[[], DecodeAudio]] = {
    "decord2": _decord_audio,
    "torchcodec": _torchcodec_audio,
}


def available_peers(probe: bytes) -> dict[str, Decode]:
    """The video peers that load and decode ``probe`` here; prints a line for each skipped."""
    return _loaded(PEERS, lambda decode: decode(probe, [0]))


def available_audio_peers(probe: bytes) -> dict[str, DecodeAudio]:
    """The audio peers that load and decode ``probe`` here; prints a line for each skipped."""
    return _loaded(AUDIO_PEERS, lambda decode: decode(probe, 16000))


def _loaded(peers: dict[str, Callable[[], F]], probe: Callable[[F], object]) -> dict[str, F]:
    found = {}
    for name, load in peers.items():
        try:
            decode = load()
            probe(decode)  # torchcodec loads FFmpeg's libraries only now
            found[name] = decode
        except (ImportError, OSError, RuntimeError) as exc:
            print(f"peers: {name} skipped ({type(exc).__name__}: {str(exc).splitlines()[0]})")
    return found


def interleaved(
    works: dict[str, Callable[[int], object]], count: int, repeats: int
) -> dict[str, float]:
    """Median items per second of each work over ``count`` items, contenders interleaved."""
    for work in works.values():
        work(0)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in works}
    for _ in range(repeats):
        for name, work in works.items():
            start = time.perf_counter()
            for index in range(count):
                work(index)
            rates[name].append(count / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def report_row(label: str, unit: str, rates: dict[str, float]) -> float:
    """Print one row of ``rates`` (modaloom's and each peer's) and return modaloom / best peer."""
    best = max(rate for name, rate in rates.items() if name != "modaloom")
    shown = " | ".join(f"{name} {rate:.1f}" for name, rate in rates.items())
    print(f"  peers {label}: {shown} {unit} | modaloom/best {rates['modaloom'] / best:.2f}x")
    return rates["modaloom"] / best


def compare_video(
    clip: bytes,
    fps: int,
    times: Callable[[int], list[float]],
    peers: dict[str, Decode],
    label: str,
    count: int,
    repeats: int,
) -> float | None:
    """Print one row (modaloom and each peer, clips/s) and return modaloom / best peer."""
    if not peers:
        return None

    def indices(index: int) -> list[int]:
        return [math.floor(t * fps + 1e-6) for t in times(index)]

    ours = decode_frames_at(clip, [i / fps for i in indices(0)])
    for name, peer in peers.items():
        got = peer(clip, indices(0))
        assert torch.equal(got, ours), f"{name} decodes other pixels than modaloom"
    works: dict[str, Callable[[int], object]] = {
        "modaloom": lambda i: decode_frames_at(clip, [j / fps for j in indices(i)])
    }
    for name, peer in peers.items():
        works[name] = lambda i, peer=peer: peer(clip, indices(i))  # type: ignore[misc]
    return report_row(label, "clips/s (same frames asserted)", interleaved(works, count, repeats))


def compare_audio(
    data: bytes,
    spectrograms: Callable[[object], object],
    peers: dict[str, DecodeAudio],
    count: int,
    repeats: int,
) -> float | None:
    """Print one row (spectrograms/s of modaloom and each peer) and return modaloom / best peer.

    ``spectrograms`` turns encoded bytes or a ``(waveform, 16000)`` pair into spectrograms, so
    everything after decoding is the same code for every contender.
    """
    if not peers:
        return None
    ours = decode_audio(data, sample_rate=16000)
    for name, peer in peers.items():
        got = peer(data, 16000)
        assert got.shape == ours.shape and torch.allclose(got, ours, atol=1e-6), (
            f"{name} decodes other samples than modaloom"
        )
    works: dict[str, Callable[[int], object]] = {"modaloom": lambda i: spectrograms(data)}
    for name, peer in peers.items():
        works[name] = lambda i, peer=peer: spectrograms((peer(data, 16000), 16000))  # type: ignore[misc]
    rates = interleaved(works, count, repeats)
    return report_row("audio", "spectrograms/s (same samples asserted)", rates)
