"""Frame-mean encoder: a ViT per frame, features averaged over time."""

from __future__ import annotations

from typing import Any

import torch

from modaloom.core.compose import BuildContext
from modaloom.core.plugins import load_plugins
from modaloom.modalities.frame_mean import FrameMeanEncoder
from modaloom.modalities.image import ImageProcessor, ImageSpec, ViTImageEncoder
from modaloom.modalities.video import VideoProcessor, VideoSpec
from modaloom.tests.tiny import TINY_VIT

REGISTRY = load_plugins(entry_points=False)
UNSIZED_VIT = {k: v for k, v in TINY_VIT.items() if k != "image_size"}


def build(fields: dict[str, Any], ctx: BuildContext | None = None) -> Any:
    entry = REGISTRY.get("encoder", fields["type"])
    assert entry.config is not None and entry.factory is not None
    module = entry.factory(entry.config.model_validate(fields), ctx or BuildContext(REGISTRY))
    return module


def test_frame_mean_averages_the_vit_features_of_each_frame() -> None:
    encoder = build({"type": "frame_mean", "config": TINY_VIT}).eval()
    assert isinstance(encoder, FrameMeanEncoder)
    reference = ViTImageEncoder(encoder.vit).eval()
    videos = torch.randn(2, 3, 3, 32, 32)
    output = encoder({"pixel_values": videos})
    assert output.sequence.shape == (2, 3, 32) and output.mask is None
    for frame in range(3):
        expected = reference({"pixel_values": videos[:, frame]}).pooled
        torch.testing.assert_close(output.sequence[:, frame], expected)
    torch.testing.assert_close(output.pooled, output.sequence.mean(dim=1))


def test_an_image_is_a_one_frame_video() -> None:
    encoder = build({"type": "frame_mean", "config": TINY_VIT}).eval()
    images = torch.randn(2, 3, 32, 32)
    output = encoder({"pixel_values": images})
    assert output.sequence.shape == (2, 1, 32)
    reference = ViTImageEncoder(encoder.vit).eval()
    torch.testing.assert_close(output.pooled, reference({"pixel_values": images}).pooled)


def test_a_random_init_takes_the_video_frame_size_before_the_image_size() -> None:
    image = ImageProcessor(ImageSpec(size=24))
    video = VideoProcessor(VideoSpec(size=40))
    both = BuildContext(REGISTRY, processors={"image": image, "video": video})
    only_image = BuildContext(REGISTRY, processors={"image": image})
    fields = {"type": "frame_mean", "config": UNSIZED_VIT}
    assert build(fields, both).vit.config.image_size == 40
    assert build(fields, only_image).vit.config.image_size == 24
    assert build(fields).vit.config.image_size == 224


def test_the_weights_of_a_vit_component_load_as_they_are() -> None:
    torch.manual_seed(0)
    image_model = build({"type": "vit", "config": TINY_VIT})
    encoder = build({"type": "frame_mean", "config": TINY_VIT})
    assert encoder.state_dict().keys() == image_model.state_dict().keys()
    encoder.load_state_dict(image_model.state_dict(), strict=True)
    for name, tensor in image_model.state_dict().items():
        assert torch.equal(encoder.state_dict()[name], tensor), name


def test_a_run_checkpoint_with_the_former_image_vit_names_still_loads() -> None:
    torch.manual_seed(0)
    saved = build({"type": "frame_mean", "config": TINY_VIT})
    former = {f"components.video.image.{k}": v for k, v in saved.state_dict().items()}
    model = torch.nn.ModuleDict({"video": build({"type": "frame_mean", "config": TINY_VIT})})
    holder = torch.nn.Module()
    holder.components = model
    result = holder.load_state_dict(former, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for name, tensor in saved.state_dict().items():
        assert torch.equal(model["video"].state_dict()[name], tensor), name
