"""Hugging Face `TimesformerModel` checkpoints load into the ``timesformer`` encoder whole."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    TimesformerConfig,
    TimesformerForVideoClassification,
    TimesformerModel,
)

from modaloom.core.compose import BuildContext
from modaloom.core.errors import SpecError
from modaloom.core.plugins import load_plugins
from modaloom.modalities.timesformer import TimeSformerEncoder
from modaloom.tests.tiny import TINY_VIT

REGISTRY = load_plugins(entry_points=False)
FRAMES, PATCHES, WIDTH = 3, (32 // 8) ** 2, 32


def build(fields: dict[str, Any], name: str = "vision") -> Any:
    entry = REGISTRY.get("encoder", fields["type"])
    assert entry.config is not None and entry.factory is not None
    spec = entry.config.model_validate(fields)
    return entry.factory(spec, BuildContext(REGISTRY, specs={name: spec}))


def saved_timesformer(path: Path, **fields: Any) -> TimesformerModel:
    """A random tiny `TimesformerModel`, every tensor perturbed so no two are equal, saved."""
    torch.manual_seed(0)
    model = TimesformerModel(TimesformerConfig(**{**TINY_VIT, "num_frames": FRAMES, **fields}))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    model.eval().save_pretrained(path)
    return model


def frame_major(hidden: torch.Tensor, frames: int) -> torch.Tensor:
    """Hugging Face's position-major tokens (the T frames of each patch) in modaloom's
    frame-major order (the P patches of each frame), [CLS] first in both."""
    tokens = hidden.shape[1]
    patches = hidden[:, 1:].unflatten(1, ((tokens - 1) // frames, frames)).transpose(1, 2)
    return torch.cat([hidden[:, :1], patches.flatten(1, 2)], dim=1)


def holders(encoder: TimeSformerEncoder, tensor: torch.Tensor) -> list[str]:
    """The encoder's tensors equal to ``tensor``, or to one third of it (a fused qkv)."""
    own = encoder.model.state_dict()
    parts = tensor.chunk(3, dim=0) if tensor.shape[0] % 3 == 0 else ()
    return [
        name
        for name, mine in own.items()
        if (mine.shape == tensor.shape and torch.equal(mine, tensor))
        or any(part.shape == mine.shape and torch.equal(mine, part) for part in parts)
    ]


def test_every_checkpoint_tensor_is_used_and_the_output_matches(tmp_path: Path) -> None:
    saved = saved_timesformer(tmp_path)
    encoder = build({"type": "timesformer", "pretrained": str(tmp_path)}).eval()
    assert isinstance(encoder, TimeSformerEncoder)
    filled = set()
    for name, tensor in saved.state_dict().items():
        found = holders(encoder, tensor)
        assert found, f"checkpoint tensor {name} is not in the encoder"
        filled.update(found)
    assert filled == set(encoder.model.state_dict()), "encoder tensors left at their init"
    assert encoder.model.time_embed.shape == (1, FRAMES, WIDTH)
    pixels = torch.randn(2, FRAMES, 3, 32, 32)
    with torch.no_grad():
        sequence = encoder({"pixel_values": pixels}).sequence
        expected = saved(pixel_values=pixels).last_hidden_state
    assert sequence.shape == (2, 1 + FRAMES * PATCHES, WIDTH)
    torch.testing.assert_close(sequence, frame_major(expected, FRAMES), atol=1e-4, rtol=0)


def test_a_classification_checkpoint_loads_without_its_classifier(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = TimesformerConfig(**TINY_VIT, num_frames=FRAMES, num_labels=5)
    classifier = TimesformerForVideoClassification(config).eval()
    classifier.save_pretrained(tmp_path)
    encoder = build({"type": "timesformer", "pretrained": str(tmp_path)}).eval()
    pixels = torch.randn(1, FRAMES, 3, 32, 32)
    with torch.no_grad():
        sequence = encoder({"pixel_values": pixels}).sequence
        expected = classifier.timesformer(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(sequence, frame_major(expected, FRAMES), atol=1e-4, rtol=0)


def test_time_embeddings_for_another_frame_count_are_resized_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saved = saved_timesformer(tmp_path)
    with caplog.at_level(logging.WARNING):
        encoder = build({"type": "timesformer", "pretrained": str(tmp_path), "num_frames": 6})
    trained = saved.embeddings.time_embeddings.detach()
    assert torch.equal(encoder.model.time_embed, trained[:, [0, 0, 1, 1, 2, 2]])
    assert [record.getMessage() for record in caplog.records] == [
        f"model.components.vision.pretrained {str(tmp_path)!r}: time embeddings for 3 frames "
        "are interpolated (nearest) to 6 frames"
    ]


def test_a_space_only_checkpoint_is_refused(tmp_path: Path) -> None:
    saved_timesformer(tmp_path, attention_type="space_only")
    with pytest.raises(SpecError) as info:
        build({"type": "timesformer", "pretrained": str(tmp_path)})
    assert str(info.value) == (
        "spec is invalid (1 problem):\n  model.components.vision.pretrained: checkpoint "
        f"{str(tmp_path)!r} uses 'space_only' attention; the timesformer encoder loads "
        "divided_space_time checkpoints only"
    )


def test_a_timesformer_checkpoint_given_to_a_vit_is_refused(tmp_path: Path) -> None:
    saved_timesformer(tmp_path)
    with pytest.raises(SpecError) as info:
        build({"type": "vit", "pretrained": str(tmp_path)})
    assert str(info.value) == (
        "spec is invalid (1 problem):\n  model.components.vision.pretrained: checkpoint "
        f"{str(tmp_path)!r} does not fit a ViTModel: 12 weights of the component are not in it "
        "(layers.0.attention.k_proj.bias, layers.0.attention.k_proj.weight, "
        "layers.0.attention.q_proj.bias, ...); 21 tensors of it would be unused "
        "(embeddings.time_embeddings, layers.0.attention.attention.qkv.bias, "
        "layers.0.attention.attention.qkv.weight, ...). It is a checkpoint of another "
        "architecture or size: give a ViTModel checkpoint, or remove `pretrained` to start "
        "from a random init"
    )
