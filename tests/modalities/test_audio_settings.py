"""Spectrogram settings: the data spec's, else an AST checkpoint's feature extractor config."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import ASTFeatureExtractor

from modaloom.core.errors import SpecError
from modaloom.core.interfaces import DataContext, PretrainedInput
from modaloom.modalities.audio import AudioSpec, make_audio_processor


def ast_checkpoint(directory: Path, **settings: float) -> Path:
    """An AST feature extractor config as `transformers` writes it (weights are not read)."""
    ASTFeatureExtractor(**settings).save_pretrained(str(directory))
    return directory


def context(checkpoint: Path) -> DataContext:
    return DataContext(pretrained={"audio": PretrainedInput("audio", str(checkpoint))})


def test_the_checkpoint_gives_bins_length_rate_and_normalisation(tmp_path: Path) -> None:
    checkpoint = ast_checkpoint(
        tmp_path, num_mel_bins=128, max_length=1024, sampling_rate=16000, mean=-4.5, std=4.25
    )
    config = make_audio_processor(AudioSpec(), context(checkpoint)).config
    assert (config.mel_bins, config.target_length, config.sample_rate) == (128, 1024, 16000)
    assert (config.mean, config.std) == (-4.5, 4.25)


def test_what_the_spec_sets_wins_and_no_checkpoint_changes_nothing(tmp_path: Path) -> None:
    checkpoint = ast_checkpoint(tmp_path, num_mel_bins=128, max_length=1024, mean=-4.5)
    spec = AudioSpec(mel_bins=64, mean=-1.0)
    config = make_audio_processor(spec, context(checkpoint)).config
    assert (config.mel_bins, config.mean, config.target_length) == (64, -1.0, 1024)
    assert make_audio_processor(AudioSpec(), DataContext()).config == AudioSpec()


def test_an_unusable_checkpoint_setting_is_refused(tmp_path: Path) -> None:
    checkpoint = ast_checkpoint(tmp_path, std=0.0)
    with pytest.raises(SpecError) as caught:
        make_audio_processor(AudioSpec(), context(checkpoint))
    assert str(caught.value) == (
        "spec is invalid (1 problem):\n  data.audio: preprocessor_config.json of "
        "model.components.audio.pretrained "
        f"{str(checkpoint)!r}: std must be positive, got 0.0"
    )
