"""Audio decoding with PyAV: any container FFmpeg reads, resampled to mono float at one rate.

Works for audio files (wav, flac, mp3, ogg/opus, m4a) and for the audio track of a video
container (mp4, webm, mkv); only the first audio stream's packets are decoded.
"""

from __future__ import annotations

import av
import numpy as np
import torch
from torch import Tensor

from modaloom.core.errors import MediaDecodeError
from modaloom.modalities.media_io import MediaSource, open_media

_DOWNMIX_AVERAGE = {"rematrix_maxval": "1.0"}
"""Scale FFmpeg's downmix so its coefficients sum to 1: stereo becomes (L + R) / 2, as
averaging channels does (without it FFmpeg mixes at -3 dB each and can exceed 1.0)."""


def decode_audio(
    source: MediaSource,
    *,
    sample_rate: int = 16000,
    key: str = "<audio>",
    max_seconds: float | None = None,
) -> Tensor:
    """Decode the first audio stream to a mono waveform.

    Args:
        source: encoded media (bytes, path or binary file object).
        sample_rate: output rate in Hz (FFmpeg's resampler converts; channels are averaged).
        key: sample key used in error messages.
        max_seconds: stop after this many seconds of output; ``None`` decodes everything.

    Returns:
        (S,) float32 samples in [-1, 1].

    Raises:
        MediaDecodeError: unreadable container, no audio stream, no samples, corrupt stream.
    """
    limit = None if max_seconds is None else round(max_seconds * sample_rate)
    with open_media(source, key) as container:
        if not container.streams.audio:
            raise MediaDecodeError(key, "no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(
            format="fltp", layout="mono", rate=sample_rate, options=_DOWNMIX_AVERAGE
        )
        chunks: list[np.ndarray] = []
        total = 0
        for packet in container.demux(stream):
            for frame in stream.codec_context.decode(packet):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray()[0])
                    total += chunks[-1].shape[0]
            if limit is not None and total >= limit:
                break
        else:
            chunks.extend(out.to_ndarray()[0] for out in resampler.resample(None))
    if not chunks or sum(chunk.shape[0] for chunk in chunks) == 0:
        raise MediaDecodeError(key, "no audio samples")
    waveform = torch.from_numpy(np.concatenate(chunks).astype(np.float32, copy=False))
    return waveform if limit is None else waveform[:limit]
