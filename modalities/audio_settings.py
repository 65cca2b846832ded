"""Spectrogram settings of the audio processor: the data spec's, else those of the checkpoint a
``pretrained`` audio component starts from (an AST's ``preprocessor_config.json``, written by
`transformers`' `ASTFeatureExtractor`), else `AudioSpec`'s defaults.

A field counts as set by the spec when the spec (or a preset it is based on) names it, whatever
its value (pydantic's ``model_fields_set``), so ``mel_bins: 64`` beside an AST checkpoint trained
with 128 bins is kept (the position embeddings are then interpolated by the encoder, logged).
"""

from __future__ import annotations

from typing import Any

from modaloom.core.interfaces import DataContext
from modaloom.modalities.hf_checkpoint import preprocessor_config, take_from_checkpoint

__all__ = ["AST_FEATURE_KEYS", "checkpoint_audio_settings", "resolve_audio_settings"]

AST_FEATURE_KEYS = {
    "mel_bins": "num_mel_bins",
    "target_length": "max_length",
    "sample_rate": "sampling_rate",
    "mean": "mean",
    "std": "std",
}
"""``data.audio`` field -> `ASTFeatureExtractor` config key."""


def checkpoint_audio_settings(checkpoint: str) -> dict[str, Any]:
    """The ``data.audio`` fields a checkpoint's feature extractor config gives (absent keys are
    left out; no file gives ``{}``).

    Raises:
        ValueError: an entry has an unusable value (a count below 1, a non-positive std).
    """
    settings = preprocessor_config(checkpoint)
    found: dict[str, Any] = {}
    for name, key in AST_FEATURE_KEYS.items():
        if key not in settings:
            continue
        value = settings[key]
        if name in ("mean", "std"):
            found[name] = float(value)
        else:
            found[name] = int(value)
            if found[name] < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
    if found.get("std", 1.0) <= 0.0:
        raise ValueError(f"std must be positive, got {settings['std']!r}")
    return found


def resolve_audio_settings(config: Any, ctx: DataContext, field: str) -> Any:
    """``config`` (``data.<field>``, an `AudioSpec`) with the fields the spec does not set taken
    from the checkpoint of the pretrained component that reads ``field``.

    Raises:
        SpecError: at ``data.<field>``: the checkpoint's feature extractor config is unusable.
    """
    pretrained = ctx.pretrained.get(field)
    unset = [name for name in AST_FEATURE_KEYS if name not in config.model_fields_set]
    if pretrained is None or not unset:
        return config
    return take_from_checkpoint(config, unset, pretrained, field, checkpoint_audio_settings)
