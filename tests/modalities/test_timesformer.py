"""TimeSformer: divided space-time attention, inflated from a ViT."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import ViTConfig, ViTModel

from modaloom.core.compose import BuildContext
from modaloom.core.plugins import load_plugins
from modaloom.modalities.timesformer import TimeSformer, TimeSformerEncoder, inflate_from_vit
from modaloom.tests.tiny import TINY_VIT

REGISTRY = load_plugins(entry_points=False)
PATCHES = (32 // 8) ** 2  # 16 patches per 32x32 frame


def build(fields: dict[str, Any]) -> Any:
    entry = REGISTRY.get("encoder", fields["type"])
    assert entry.config is not None and entry.factory is not None
    module = entry.factory(entry.config.model_validate(fields), BuildContext(REGISTRY))
    return module


@pytest.fixture
def vit() -> ViTModel:
    torch.manual_seed(0)
    return ViTModel(ViTConfig(**TINY_VIT), add_pooling_layer=False).eval()


def test_an_image_and_a_video_go_through_the_same_module() -> None:
    encoder = build({"type": "timesformer", "config": TINY_VIT, "num_frames": 3}).eval()
    assert isinstance(encoder, TimeSformerEncoder)
    images = torch.randn(2, 3, 32, 32)
    videos = torch.randn(2, 3, 3, 32, 32)
    image_out = encoder({"pixel_values": images})
    video_out = encoder({"pixel_values": videos})
    assert image_out.sequence.shape == (2, 1 + PATCHES, 32)
    assert video_out.sequence.shape == (2, 1 + 3 * PATCHES, 32)
    assert image_out.pooled.shape == video_out.pooled.shape == (2, 32)
    torch.testing.assert_close(image_out.pooled, image_out.sequence[:, 0])
    one_frame = encoder({"pixel_values": images[:, None]})
    torch.testing.assert_close(one_frame.sequence, image_out.sequence, rtol=0, atol=0)


def test_inflated_vit_gives_the_vit_output_for_a_one_frame_video(vit: ViTModel) -> None:
    """[CLS] and every patch token of ViT(image) equal TimeSformer(image as a 1-frame video)."""
    model = inflate_from_vit(copy.deepcopy(vit), num_frames=4).eval()
    with torch.no_grad():  # make the temporal branch non-trivial: T == 1 must still skip it
        for temporal in model.temporal:
            temporal.temporal_fc.weight.normal_()
        model.time_embed.normal_()
    images = torch.randn(2, 3, 32, 32)
    expected = vit(pixel_values=images).last_hidden_state
    torch.testing.assert_close(model(images[:, None]), expected, rtol=0, atol=1e-5)


def test_static_video_with_zero_temporal_fc_gives_the_vit_output_on_every_frame(
    vit: ViTModel,
) -> None:
    """A video of T=3 copies of one image, freshly inflated (temporal_fc and time_embed zero).

    The temporal branch then adds nothing, each frame's spatial attention sees exactly the ViT's
    tokens, and the [CLS] average over identical frames is the ViT's [CLS]. So: the [CLS] equals
    ViT(image)[:, 0] and the patch tokens of *each* frame equal ViT(image)[:, 1:].
    """
    model = inflate_from_vit(copy.deepcopy(vit), num_frames=3).eval()
    images = torch.randn(2, 3, 32, 32)
    expected = vit(pixel_values=images).last_hidden_state
    output = model(images[:, None].expand(2, 3, 3, 32, 32))
    torch.testing.assert_close(output[:, 0], expected[:, 0], rtol=0, atol=1e-5)
    per_frame = output[:, 1:].unflatten(1, (3, PATCHES))
    for frame in range(3):
        torch.testing.assert_close(per_frame[:, frame], expected[:, 1:], rtol=0, atol=1e-5)


def test_temporal_attention_mixes_frames_once_temporal_fc_is_trained(vit: ViTModel) -> None:
    model = inflate_from_vit(vit, num_frames=3).eval()
    with torch.no_grad():
        for temporal in model.temporal:
            temporal.temporal_fc.weight.normal_(std=0.5)
    video = torch.randn(1, 3, 3, 32, 32)
    changed = video.clone()
    changed[:, 2] = torch.randn(3, 32, 32)
    first = model(video)[:, 1 : 1 + PATCHES]
    second = model(changed)[:, 1 : 1 + PATCHES]
    assert (first - second).abs().max() > 1e-3  # frame 0's patches see frame 2


def test_inflation_copies_spatial_weights_and_zeroes_temporal_fc_in_every_block(
    vit: ViTModel,
) -> None:
    model = inflate_from_vit(vit, num_frames=2)
    assert model.vit is vit
    for layer, temporal in zip(vit.layers, model.temporal, strict=True):
        assert torch.equal(temporal.attention.q_proj.weight, layer.attention.q_proj.weight)
        assert temporal.attention.q_proj.weight is not layer.attention.q_proj.weight
        assert torch.equal(temporal.layernorm.weight, layer.layernorm_before.weight)
        assert not temporal.temporal_fc.weight.any() and not temporal.temporal_fc.bias.any()
    assert not model.time_embed.any()


def test_time_embed_is_interpolated_to_other_frame_counts(vit: ViTModel) -> None:
    model = TimeSformer(vit, num_frames=2)
    with torch.no_grad():
        model.time_embed.copy_(torch.tensor([1.0, 2.0])[None, :, None].expand(1, 2, 32))
    resized = model.frame_embedding(4)
    assert resized.shape == (1, 4, 32)
    assert resized[0, :, 0].tolist() == [1.0, 1.0, 2.0, 2.0]
    assert model(torch.randn(1, 4, 3, 32, 32)).shape == (1, 1 + 4 * PATCHES, 32)


def test_a_vit_checkpoint_loads_and_is_inflated(tmp_path: Path, vit: ViTModel) -> None:
    vit.save_pretrained(tmp_path)
    encoder = build({"type": "timesformer", "pretrained": str(tmp_path), "num_frames": 2})
    assert isinstance(encoder, TimeSformerEncoder)
    loaded = encoder.model.vit.state_dict()
    for name, tensor in vit.state_dict().items():
        assert torch.equal(loaded[name], tensor), name
    first_temporal, first_spatial = encoder.model.temporal[0], encoder.model.vit.layers[0]
    assert torch.equal(
        first_temporal.attention.v_proj.weight, first_spatial.attention.v_proj.weight
    )
