"""Audio decoding and spectrograms on real files written by the fixtures (see conftest.py)."""

from __future__ import annotations

import math
import random

import pytest
import torch
from pydantic import ValidationError
from torchaudio.compliance import kaldi

from modaloom.core.errors import MediaDecodeError
from modaloom.core.interfaces import DataContext
from modaloom.core.registry import Registry
from modaloom.modalities import audio
from modaloom.modalities.audio import (
    AST_MEAN,
    AST_STD,
    AudioProcessor,
    AudioSpec,
    clip_starts,
    log_mel_spectrogram,
    make_audio_processor,
    waveform_to_spectrograms,
)
from modaloom.modalities.audio_decode import decode_audio

LOG_EPS = math.log(torch.finfo(torch.float32).eps)  # Kaldi's floor for the filterbank energy


def mel_bin_of(hz: float, bins: int = 64, low: float = 20.0, high: float = 8000.0) -> int:
    """The Kaldi mel filter centred nearest to ``hz``."""

    def mel(f: float) -> float:
        return 1127.0 * math.log(1.0 + f / 700.0)

    step = (mel(high) - mel(low)) / (bins + 1)
    return round((mel(hz) - mel(low)) / step) - 1


def message(key: str, cause: str) -> str:
    return f"cannot decode sample {key!r}: {cause}"


def test_mp4_audio_track_gives_64_bin_spectrograms(mp4_h264_aac):
    processor = AudioProcessor(AudioSpec(clips=2))
    spec = processor.process(mp4_h264_aac, key="k", train=False, rng=random.Random())["spectrogram"]
    assert spec.shape == (2, 64, 512) and spec.dtype == torch.float32
    # 3 s of audio in a 5 s clip: both clips start at 0 and are identical
    assert torch.equal(spec[0], spec[1])
    peak = spec[0, :, 20:280].argmax(dim=0)
    assert (peak - mel_bin_of(440.0)).abs().max() <= 1
    silence = (LOG_EPS - AST_MEAN) / (2 * AST_STD)  # zero-padded waveform (3 s .. 5 s)
    assert torch.allclose(spec[0, :, 320:490], torch.full((64, 170), silence), atol=1e-3)
    padding = (0.0 - AST_MEAN) / (2 * AST_STD)  # filterbank frames 498..511 padded with zeros
    assert torch.allclose(spec[0, :, 498:], torch.full((64, 14), padding))


@pytest.mark.parametrize(
    ("name", "fmt", "codec", "rate", "layout", "suffix"),
    [
        ("wav", "wav", "pcm_s16le", 22050, "stereo", "wav"),
        ("flac", "flac", "flac", 16000, "mono", "flac"),
        ("opus", "ogg", "libopus", 48000, "stereo", "ogg"),
        ("aac-m4a", "mp4", "aac", 44100, "stereo", "m4a"),
        ("mp3-mp4", "mp4", "libmp3lame", 44100, "mono", "mp4"),
    ],
)
def test_containers_decode_to_16k_mono(
    name, fmt, codec, rate, layout, suffix, make_audio, tmp_path
):
    path = make_audio(
        tmp_path / f"{name}.{suffix}",
        format=fmt,
        codec=codec,
        seconds=2.0,
        rate=rate,
        layout=layout,
    )
    waveform = decode_audio(path, sample_rate=16000)
    assert waveform.dim() == 1 and waveform.dtype == torch.float32
    assert abs(waveform.shape[0] - 32000) <= 1600  # encoder delay and padding
    assert 0.45 <= waveform.abs().max().item() <= 0.56  # channels averaged, not summed


def test_evaluation_clips_are_evenly_spaced(chirp_wav):
    spec = AudioProcessor(AudioSpec(clips=3)).process(
        chirp_wav, key="k", train=False, rng=random.Random()
    )["spectrogram"]
    assert spec.shape == (3, 64, 512)
    assert clip_starts(12 * 16000, 5 * 16000, 3, None) == [18667, 56000, 93333]
    pitch = [spec[i, :, :498].argmax(dim=0).float().mean().item() for i in range(3)]
    assert pitch[0] < pitch[1] < pitch[2]  # the chirp rises, so later clips sit higher


def test_training_clips_are_deterministic_for_a_seed(chirp_wav):
    processor = AudioProcessor(AudioSpec(clips=2))
    runs = [
        processor.process(chirp_wav, key="k", train=True, rng=random.Random(seed))["spectrogram"]
        for seed in (4, 4, 5)
    ]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    rng = random.Random(9)
    starts = clip_starts(192000, 80000, 4, rng)
    assert starts == clip_starts(192000, 80000, 4, random.Random(9))
    segment = (192000 - 80000) / 4
    assert all(i * segment <= s < (i + 1) * segment + 1 for i, s in enumerate(starts))


def test_short_audio_is_zero_padded_and_repeated():
    config = AudioSpec(clips=3, clip_seconds=1.0, target_length=128)
    wave = torch.sin(torch.arange(4000) * 2 * math.pi * 440 / 16000) * 0.5
    spec = waveform_to_spectrograms(wave, config, random.Random(0))
    assert spec.shape == (3, 64, 128)
    assert torch.equal(spec[0], spec[2])
    assert clip_starts(4000, 16000, 3, None) == [0, 0, 0]


def test_spectrogram_matches_kaldi_fbank_layout():
    wave = torch.randn(16000) * 0.1
    config = AudioSpec(target_length=50, mean=0.0, std=0.5)
    spec = log_mel_spectrogram(wave, config)
    expected = kaldi.fbank(
        wave.unsqueeze(0),
        num_mel_bins=64,
        frame_length=25.0,
        frame_shift=10.0,
        window_type="hamming",
        sample_frequency=16000.0,
        htk_compat=True,
        use_energy=False,
        dither=0.0,
    )
    assert spec.shape == (64, 50)  # mel bins x time, cropped from 98 frames
    assert torch.allclose(spec, expected[:50].t())  # (x - 0) / (2 * 0.5) is the identity


def test_max_seconds_stops_decoding_early(chirp_wav):
    assert decode_audio(chirp_wav, max_seconds=1.5).shape == (24000,)


def test_zero_length_audio_raises(make_audio, tmp_path):
    path = make_audio(
        tmp_path / "empty.wav", format="wav", codec="pcm_s16le", seconds=0.0, rate=16000
    )
    with pytest.raises(MediaDecodeError) as info:
        AudioProcessor(AudioSpec()).process(path, key="e", train=False, rng=random.Random())
    assert str(info.value) == message("e", "no audio samples")


def test_video_without_audio_raises(webm_vp9):
    with pytest.raises(MediaDecodeError) as info:
        AudioProcessor(AudioSpec()).process(webm_vp9, key="v", train=True, rng=random.Random())
    assert str(info.value) == message("v", "no audio stream")


@pytest.mark.parametrize("corrupt", ["random", "truncated"])
def test_corrupt_bytes_raise(corrupt, mp4_h264_aac):
    data = mp4_h264_aac.read_bytes()
    value = random.Random(1).randbytes(8000) if corrupt == "random" else data[: len(data) // 3]
    with pytest.raises(MediaDecodeError) as info:
        AudioProcessor(AudioSpec()).process(value, key="c", train=False, rng=random.Random())
    assert str(info.value) == message(
        "c", "unreadable or unknown container (Invalid data found when processing input)"
    )


def test_collate_stacks_and_zero_fills(flac_file):
    processor = make_audio_processor(AudioSpec(clips=2), DataContext())
    item = processor.process(flac_file, key="k", train=False, rng=random.Random())
    batch = processor.collate([None, item])
    assert batch["spectrogram"].shape == (2, 2, 64, 512)
    assert batch["present"].tolist() == [False, True]
    assert not batch["spectrogram"][0].any()
    assert torch.equal(batch["spectrogram"][1], item["spectrogram"])
    with pytest.raises(ValueError, match="collate needs at least one present audio item"):
        processor.collate([None])


def test_spec_validation():
    assert AudioSpec().model_dump() == {
        "clips": 1,
        "clip_seconds": 5.0,
        "sample_rate": 16000,
        "mel_bins": 64,
        "target_length": 512,
        "mean": AST_MEAN,
        "std": AST_STD,
        "train_sampling": "random",
        "max_seconds": None,
    }
    with pytest.raises(ValidationError, match="greater than 0"):
        AudioSpec(std=0.0)


def test_registers_the_audio_modality():
    registry = Registry()
    audio.modaloom_register_modalities(registry)
    component = registry.get("modality", "audio")
    assert component.config is AudioSpec and component.factory is make_audio_processor
    assert isinstance(component.factory(AudioSpec(), DataContext()), AudioProcessor)
