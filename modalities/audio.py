"""Audio modality: waveform clips to AST-style log-Mel filterbank spectrograms (VALOR's recipe).

Per sample: decode the first audio stream to 16 kHz mono (`decode_audio`), cut ``clips`` windows
of ``clip_seconds`` (zero-padded when the audio is shorter), and turn each into a Kaldi-compatible
log-Mel filterbank (25 ms Hamming window, 10 ms hop, ``mel_bins`` bins), padded or cropped to
``target_length`` frames and normalised as AST does: ``(fbank - mean) / (2 * std)``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor
from torchaudio.compliance import kaldi

from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import DataContext, Processor, zeros_like_first
from modaloom.core.registry import Registry
from modaloom.core.spec_models import Spec
from modaloom.modalities.audio_settings import resolve_audio_settings
from modaloom.modalities.media_io import decoding

AST_MEAN = -4.2677393
"""AudioSet mean of the log-Mel filterbank, as used by AST."""
AST_STD = 4.5689974
"""AudioSet standard deviation of the log-Mel filterbank, as used by AST."""


class AudioSpec(Spec):
    """How audio fields are decoded and turned into spectrograms (``data.audio``)."""

    clips: int = Field(1, ge=1)
    """N, clips sampled per sample (VALOR pretrains with 1)."""
    clip_seconds: float = Field(5.0, gt=0.0)
    """Length of one clip in seconds."""
    sample_rate: int = Field(16000, ge=1000)
    """Rate the audio is resampled to, in Hz."""
    mel_bins: int = Field(64, ge=1)
    """Mel filterbank bins per frame."""
    target_length: int = Field(512, ge=1)
    """Spectrogram frames per clip (10 ms hop); shorter ones are zero-padded, longer cropped."""
    mean: float = AST_MEAN
    """Filterbank mean subtracted before scaling (AST's AudioSet value)."""
    std: float = Field(AST_STD, gt=0.0)
    """Filterbank standard deviation; values are divided by ``2 * std`` as in AST."""
    train_sampling: Literal["random", "uniform"] = "random"
    """Training clip starts: random (one per equal segment of the audio) or evenly spaced."""
    max_seconds: float | None = Field(None, gt=0.0)
    """Decode at most this many seconds from the start of long recordings; ``null``: all."""


def clip_starts(total: int, length: int, num: int, rng: random.Random | None) -> list[int]:
    """Start samples of ``num`` clips of ``length`` samples in a waveform of ``total`` samples.

    The possible starts ``[0, total - length]`` are cut into ``num`` equal segments; a clip
    starts at each segment's centre (``rng is None``, evaluation) or at a random point of it
    (training). Audio no longer than one clip gives start 0 for every clip.

    Returns:
        ``num`` ascending start indices.
    """
    span = total - length
    if span <= 0:
        return [0] * num
    if rng is None:
        return [round(span * (index + 0.5) / num) for index in range(num)]
    return [min(span, int(span * (index + rng.random()) / num)) for index in range(num)]


def log_mel_spectrogram(clip: Tensor, config: AudioSpec) -> Tensor:
    """One clip's normalised log-Mel filterbank.

    Args:
        clip: (S,) float waveform at ``config.sample_rate``.
        config: bins, target length and normalisation.

    Returns:
        (mel_bins, target_length) float32: mel bins x time frames.
    """
    fbank = kaldi.fbank(
        clip.unsqueeze(0),
        num_mel_bins=config.mel_bins,
        frame_length=25.0,
        frame_shift=10.0,
        window_type="hamming",
        sample_frequency=float(config.sample_rate),
        htk_compat=True,
        use_energy=False,
        dither=0.0,
    )
    missing = config.target_length - fbank.shape[0]
    fbank = F.pad(fbank, (0, 0, 0, missing)) if missing > 0 else fbank[: config.target_length]
    return ((fbank - config.mean) / (2.0 * config.std)).t().contiguous()


def waveform_to_spectrograms(
    waveform: Tensor, config: AudioSpec, rng: random.Random | None
) -> Tensor:
    """Cut ``config.clips`` clips from a waveform and compute their spectrograms.

    Args:
        waveform: (S,) float mono samples at ``config.sample_rate``.
        config: clip count and length, spectrogram settings.
        rng: random clip starts when given; evenly spaced clips when ``None``.

    Returns:
        (N, mel_bins, target_length) float32, N = ``config.clips``: clips x mel bins x time.
    """
    length = round(config.clip_seconds * config.sample_rate)
    if waveform.shape[0] < length:
        waveform = F.pad(waveform, (0, length - waveform.shape[0]))
    starts = clip_starts(waveform.shape[0], length, config.clips, rng)
    cache: dict[int, Tensor] = {}
    for start in starts:
        if start not in cache:
            cache[start] = log_mel_spectrogram(waveform[start : start + length], config)
    return torch.stack([cache[start] for start in starts])


class AudioProcessor(Processor):
    """Decodes an audio field to ``{"spectrogram": (N, mel_bins, target_length)}``."""

    def __init__(self, config: AudioSpec) -> None:
        self.config = config

    def process(
        self, value: Any, *, key: str, train: bool, rng: random.Random
    ) -> dict[str, Tensor]:
        """Decode one sample's audio and compute its clips' spectrograms.

        Args:
            value: encoded media with an audio stream (bytes, local path or binary file object).
            key: sample key, for error messages.
            train: random clip starts (per ``train_sampling``) when True.
            rng: the sample's random generator.

        Returns:
            ``{"spectrogram": (N, mel_bins, target_length) float32}`` (mel bins x time).

        Raises:
            MediaDecodeError: unreadable container, no audio stream, zero-length audio, or any
                other failure while decoding.
        """
        from modaloom.modalities.audio_decode import decode_audio  # lazily: PyAV with it

        config = self.config
        random_starts = train and config.train_sampling == "random"
        with decoding(key):
            waveform = decode_audio(
                value, sample_rate=config.sample_rate, key=key, max_seconds=config.max_seconds
            )
            spectrograms = waveform_to_spectrograms(
                waveform, config, rng if random_starts else None
            )
        return {"spectrogram": spectrograms}

    def collate(self, items: list[dict[str, Tensor] | None]) -> dict[str, Tensor]:
        """Stack into ``{"spectrogram": (B, N, mel_bins, target_length), "present": (B,) bool}``.

        Missing items (``None``) are zero-filled and marked absent.
        """
        if all(item is None for item in items):
            raise ValueError("collate needs at least one present audio item")
        empty = zeros_like_first(items)
        present = torch.tensor([item is not None for item in items], dtype=torch.bool)
        spectra = torch.stack([(empty if item is None else item)["spectrogram"] for item in items])
        return {"spectrogram": spectra, "present": present}

    def export(self, directory: Path) -> list[str]:
        """The spectrogram settings as a `transformers` `ASTFeatureExtractor`
        (``preprocessor_config.json``): Kaldi fbank of ``mel_bins`` bins at ``sample_rate``,
        ``target_length`` frames, ``(fbank - mean) / (2 * std)``, as here."""
        from transformers import ASTFeatureExtractor

        config = self.config
        extractor = ASTFeatureExtractor(
            num_mel_bins=config.mel_bins,
            max_length=config.target_length,
            sampling_rate=config.sample_rate,
            mean=config.mean,
            std=config.std,
        )
        extractor.save_pretrained(str(directory))
        return ["preprocessor_config.json"]


def make_audio_processor(config: AudioSpec, ctx: DataContext) -> AudioProcessor:
    """Factory registered for the ``audio`` modality: what the spec leaves unset comes from the
    pretrained audio component's feature extractor config (`resolve_audio_settings`)."""
    return AudioProcessor(resolve_audio_settings(config, ctx, "audio"))


@hookimpl
def modaloom_register_modalities(registry: Registry) -> None:
    """Register the ``audio`` modality."""
    registry.add_modality(
        "audio",
        make_audio_processor,
        AudioSpec,
        description="PyAV audio decoding to 16 kHz mono and Kaldi log-Mel spectrogram clips",
    )
