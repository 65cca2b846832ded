"""CLIP vision tower: images directly, videos frame by frame, checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from modaloom.core.compose import BuildContext
from modaloom.core.plugins import load_plugins
from modaloom.modalities.clip_vision import CLIPVisionEncoder
from modaloom.tests.tiny import TINY_CLIP_VISION

REGISTRY = load_plugins(entry_points=False)
TOKENS = 1 + (32 // 8) ** 2  # [CLS] + 16 patches per 32x32 frame


def build(fields: dict[str, Any]) -> Any:
    entry = REGISTRY.get("encoder", fields["type"])
    assert entry.config is not None and entry.factory is not None
    module = entry.factory(entry.config.model_validate(fields), BuildContext(REGISTRY))
    return module


def tiny_encoder() -> CLIPVisionEncoder:
    torch.manual_seed(0)
    module = build({"type": "clip_vision", "config": TINY_CLIP_VISION}).eval()
    assert isinstance(module, CLIPVisionEncoder)
    return module


def test_an_image_gives_clip_tokens_and_the_post_layernorm_cls() -> None:
    encoder = tiny_encoder()
    images = torch.randn(2, 3, 32, 32)
    output = encoder({"pixel_values": images})
    reference = encoder.clip(pixel_values=images)
    assert output.sequence.shape == (2, TOKENS, 32) and output.mask is None
    torch.testing.assert_close(output.sequence, reference.last_hidden_state)
    torch.testing.assert_close(output.pooled, reference.pooler_output)


def test_video_frames_are_encoded_independently_and_pooled_by_mean() -> None:
    encoder = tiny_encoder()
    videos = torch.randn(2, 3, 3, 32, 32)
    output = encoder({"pixel_values": videos})
    assert output.sequence.shape == (2, 3 * TOKENS, 32)
    pooled = []
    for frame in range(3):
        reference = encoder.clip(pixel_values=videos[:, frame])
        chunk = output.sequence[:, frame * TOKENS : (frame + 1) * TOKENS]
        torch.testing.assert_close(chunk, reference.last_hidden_state)
        pooled.append(reference.pooler_output)
    torch.testing.assert_close(output.pooled, torch.stack(pooled, dim=1).mean(dim=1))


def test_clip_vision_loads_a_pretrained_directory(tmp_path: Path) -> None:
    saved = CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP_VISION))
    saved.save_pretrained(tmp_path)
    encoder = build({"type": "clip_vision", "pretrained": str(tmp_path)})
    loaded = encoder.clip.state_dict()
    assert loaded.keys() == saved.state_dict().keys()
    for name, tensor in saved.state_dict().items():
        assert torch.equal(loaded[name], tensor), name
