"""Audio decoding with FFmpeg: any container it reads, resampled to mono float at one rate.

Works for audio files (wav, flac, mp3, ogg/opus, m4a) and for the audio track of a video
container (mp4, webm, mkv); only the first audio stream's packets are decoded. FFmpeg's own
reader (`modaloom.modalities.audio_reader`) reads bytes and paths; PyAV's demuxer and decoder
read the rest, what that reader stops on (a format change midway, undecodable packets), and
the container the video reader of the same sample keeps open (`open_media`'s ``share``).
Both give the same samples.
"""

from __future__ import annotations

from typing import Any

import av
import av.container
import numpy as np
import torch
from torch import Tensor

from modaloom.core.errors import MediaDecodeError
from modaloom.modalities.array_inputs import is_encoded, waveform_of
from modaloom.modalities.audio_reader import read_mono
from modaloom.modalities.audio_resample import MonoResampler, samples_to_gather
from modaloom.modalities.media_io import MediaSource, decoding, kept_for, open_media

MAX_BAD_PACKETS = 16
"""Undecodable packets skipped per sample (the joins of concatenated files, a damaged frame),
as FFmpeg's command line skips them, before the stream is declared corrupt."""


def _audio_stream(container: av.container.InputContainer, key: str) -> av.AudioStream:
    """The first audio stream, if FFmpeg can decode it."""
    if not container.streams.audio:
        raise MediaDecodeError(key, "no audio stream")
    stream = container.streams.audio[0]
    if stream.codec_context is None:  # PyAV leaves it unset when no decoder exists
        raise MediaDecodeError(
            key, f"no decoder for the audio stream (format {container.format.name})"
        )
    return stream


def _decode_chunks(
    container: av.container.InputContainer, key: str, sample_rate: int, limit: int | None
) -> list[np.ndarray]:
    """Mono chunks of the first audio stream until ``limit`` samples (``None``: the end)."""
    stream = _audio_stream(container, key)
    mono = MonoResampler(sample_rate)
    wanted = None if limit is None else samples_to_gather(limit, sample_rate)
    chunks: list[np.ndarray] = []
    total = bad = 0
    for packet in container.demux(stream):
        try:
            frames = stream.codec_context.decode(packet)
        except av.InvalidDataError:
            bad += 1
            if bad > MAX_BAD_PACKETS:
                raise MediaDecodeError(
                    key, f"corrupt stream (more than {MAX_BAD_PACKETS} undecodable packets)"
                ) from None
            continue
        for frame in frames:
            for chunk in mono.resample(frame):
                chunks.append(chunk)
                total += chunk.shape[0]
        if wanted is not None and total + mono.pending_seconds * sample_rate >= wanted:
            break
    return chunks + mono.resample(None)


def decode_audio(
    source: MediaSource | Any,
    *,
    sample_rate: int = 16000,
    key: str = "<audio>",
    max_seconds: float | None = None,
) -> Tensor:
    """Decode the first audio stream to a mono waveform.

    Rate, layout or sample format may change mid-stream (concatenated files); up to
    `MAX_BAD_PACKETS` undecodable packets are skipped. Audio in memory, ``(waveform, rate)``,
    is converted by `modaloom.modalities.array_inputs.waveform_of`.

    Args:
        source: encoded media (bytes, path or binary file object), or audio in memory.
        sample_rate: output rate in Hz (FFmpeg's resampler converts; channels are averaged).
        key: sample key used in error messages.
        max_seconds: stop after this many seconds of output; ``None`` decodes everything.

    Returns:
        (S,) float32 samples in [-1, 1].

    Raises:
        MediaDecodeError: unreadable container, no audio stream or decoder, no samples, corrupt
            stream, or any other failure while decoding (the cause's type and message).
    """
    limit = None if max_seconds is None else round(max_seconds * sample_rate)
    if not is_encoded(source):
        with decoding(key):
            waveform = waveform_of(source, sample_rate, key)
        return waveform if limit is None else waveform[:limit]
    with decoding(key):
        chunks = None if kept_for(source, key, "audio") else read_mono(source, sample_rate, limit)
        if chunks is None:
            with open_media(source, key, share="audio") as container:
                chunks = _decode_chunks(container, key, sample_rate, limit)
        if not chunks or sum(chunk.shape[0] for chunk in chunks) == 0:
            raise MediaDecodeError(key, "no audio samples")
        waveform = torch.from_numpy(np.concatenate(chunks).astype(np.float32, copy=False))
    return waveform if limit is None else waveform[:limit]
