"""OmniVL's 3-D tubelet embedding on the ``timesformer`` encoder (issue 16 §2)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.testing import assert_close

from modaloom.core.compose import BuildContext
from modaloom.core.errors import SpecError
from modaloom.core.plugins import load_plugins
from modaloom.core.spec_models import ComponentSpec
from modaloom.modalities.timesformer import TimeSformer, TimeSformerEncoder
from modaloom.objectives.fine_grained import frame_features
from modaloom.tests.tiny import TINY_VIT

REGISTRY = load_plugins(entry_points=False)
PATCHES = (32 // 8) ** 2  # 16 patches per 32x32 frame


def build(**fields: Any) -> TimeSformerEncoder:
    torch.manual_seed(0)
    entry = REGISTRY.get("encoder", "timesformer")
    assert entry.config is not None and entry.factory is not None
    spec = entry.config.model_validate({"type": "timesformer", "config": TINY_VIT, **fields})
    specs: dict[str, ComponentSpec] = {"vision": spec}  # type: ignore[dict-item]
    module = entry.factory(spec, BuildContext(REGISTRY, specs=specs))
    assert isinstance(module, TimeSformerEncoder)
    return module.eval()


def patch_tokens(model: TimeSformer, video: torch.Tensor) -> torch.Tensor:
    """The patch embedding with positions, before the blocks: (B, T', P, D)."""
    steps = model.steps(video.shape[1])
    return (
        model.embed(video)[:, 1:].unflatten(1, (steps, -1))
        - model.frame_embedding(steps)[:, :, None]
    )


@pytest.mark.parametrize("init", ["average", "central"])
def test_a_static_video_embeds_like_its_frame_with_the_2d_kernel(init: str) -> None:
    """Inflation equivalence: tubelet 2 on a static clip == tubelet 1 (the ViT's 2-D kernel)."""
    tubelet = build(num_frames=4, tubelet=2, tubelet_init=init).model
    frame_wise = build(num_frames=4).model
    assert torch.equal(
        tubelet.vit.embeddings.patch_embeddings.projection.weight,
        frame_wise.vit.embeddings.patch_embeddings.projection.weight,
    )
    frame = torch.randn(2, 1, 3, 32, 32)
    static = frame.expand(2, 4, 3, 32, 32)
    with torch.no_grad():
        ours = patch_tokens(tubelet, static)  # (2, 2, 16, D)
        reference = patch_tokens(frame_wise, static)  # (2, 4, 16, D)
    assert ours.shape == (2, 2, PATCHES, 32)
    assert_close(ours, reference[:, ::2], rtol=0, atol=1e-5)
    assert_close(model_cls(tubelet, static), model_cls(frame_wise, static), rtol=0, atol=0)


def model_cls(model: TimeSformer, video: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.embed(video)[:, 0]


def test_the_kernels_are_inflated_as_configured() -> None:
    average = build(num_frames=4, tubelet=2).model
    central = build(num_frames=4, tubelet=2, tubelet_init="central").model
    kernel = average.vit.embeddings.patch_embeddings.projection.weight
    assert average.tubelet_embed is not None and central.tubelet_embed is not None
    assert_close(average.tubelet_embed.weight, torch.stack([kernel / 2, kernel / 2], dim=2))
    assert torch.equal(central.tubelet_embed.weight[:, :, 1], kernel)
    assert not central.tubelet_embed.weight[:, :, 0].any()


def test_shapes_time_embeddings_and_images() -> None:
    encoder = build(num_frames=4, tubelet=2)
    assert encoder.model.time_embed.shape == (1, 2, 32)  # T / tubelet positions
    video = encoder({"pixel_values": torch.randn(2, 4, 3, 32, 32)})
    assert video.sequence.shape == (2, 1 + 2 * PATCHES, 32) and video.pooled.shape == (2, 32)
    image = encoder({"pixel_values": torch.randn(2, 3, 32, 32)})
    assert image.sequence.shape == (2, 1 + PATCHES, 32)  # images keep the 2-D patches
    video.sequence.sum().backward()
    assert encoder.model.tubelet_embed is not None
    assert encoder.model.tubelet_embed.weight.grad is not None


def test_frames_not_a_multiple_of_the_tubelet_are_refused() -> None:
    with pytest.raises(SpecError) as info:
        build(num_frames=3, tubelet=2)
    assert info.value.problems == [
        (
            "model.components.vision.tubelet",
            "3 frames cannot be cut into tubelets of 2; set data.video.frames (or num_frames) "
            "to a multiple of 2",
        )
    ]
    encoder = build(num_frames=4, tubelet=2)
    with pytest.raises(SpecError) as info:
        encoder({"pixel_values": torch.randn(1, 3, 3, 32, 32)})
    assert info.value.problems == [
        (
            "data.video.frames",
            "3 frames cannot be cut into tubelets of 2; give a multiple of 2 frames or set the "
            "encoder's tubelet: 1",
        )
    ]


def test_the_inflate_stage_action_reinflates_from_the_trained_2d_kernel() -> None:
    encoder = build(num_frames=4, tubelet=2)
    projection = encoder.model.vit.embeddings.patch_embeddings.projection
    with torch.no_grad():
        projection.weight.normal_()  # image-only training moved the 2-D kernel
    encoder.stage_actions()["inflate"]()
    assert encoder.model.tubelet_embed is not None
    assert_close(encoder.model.tubelet_embed.weight[:, :, 0], projection.weight / 2)


def test_the_default_path_is_unchanged() -> None:
    encoder = build(num_frames=2)
    assert encoder.model.tubelet == 1 and encoder.model.tubelet_embed is None
    assert not any("tubelet" in key for key in encoder.state_dict())


def test_mga_takes_one_vector_per_tubelet_position() -> None:
    encoder = build(num_frames=4, tubelet=2)
    inputs = {"pixel_values": torch.randn(2, 4, 3, 32, 32)}
    with torch.no_grad():
        output = encoder(inputs)
    features, mask = frame_features(output, encoder, inputs, "cls")
    assert features.shape == (2, 2, 32) and mask.shape == (2, 2)
    expected = output.sequence[:, 1:].unflatten(1, (2, PATCHES)).mean(dim=2)
    assert_close(features, expected)
