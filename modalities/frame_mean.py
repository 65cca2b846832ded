"""Frame-mean video encoder: a ViT run on each frame, features averaged over time (COTS, SPEC §A3).

Token layout of the output sequence: one feature per frame, (B, T, D).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor
from transformers import ViTConfig

from modaloom.core.compose import BuildContext
from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import Encoder, EncoderOutput
from modaloom.core.registry import Registry
from modaloom.modalities.hf import HFEncoderSpec, Pooling
from modaloom.modalities.image import ViTImageEncoder, load_vit, visual_size

__all__ = ["FrameMeanEncoder", "FrameMeanSpec"]


class FrameMeanSpec(HFEncoderSpec):
    """A ViT run on each frame, features averaged over time (COTS video retrieval, SPEC §A3).

    ``pretrained`` and ``config`` refer to `transformers`' `ViTModel` and `ViTConfig`. A random
    init takes its image size from ``data.video.size`` (else ``data.image.size``).
    """

    type: Literal["frame_mean"] = "frame_mean"
    hf_config = ViTConfig
    pooling: Pooling = "cls"
    """Per-frame feature: the frame's [CLS] token or the mean of its patch tokens."""


class FrameMeanEncoder(Encoder):
    """An image encoder applied frame by frame to ``{"pixel_values": (B, T, 3, H, W)}``.

    Returns sequence (B, T, D) of per-frame features, pooled (B, D) = their mean over T, no
    mask. An image (B, 3, H, W) is read as a one-frame video.
    """

    modality = "video"

    def __init__(self, image_encoder: Encoder) -> None:
        super().__init__()
        self.image = image_encoder
        self.output_dim = image_encoder.output_dim

    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        pixels = inputs["pixel_values"]
        video = pixels if pixels.ndim == 5 else pixels.unsqueeze(1)
        batch, frames = video.shape[:2]
        per_frame = self.image({"pixel_values": video.flatten(0, 1)}).pooled  # (B*T, D)
        sequence = per_frame.unflatten(0, (batch, frames))
        return EncoderOutput(sequence, sequence.mean(dim=1), None)


def make_frame_mean_encoder(config: FrameMeanSpec, ctx: BuildContext) -> FrameMeanEncoder:
    """Registry factory of the ``frame_mean`` encoder."""
    vit = load_vit(config, ctx, image_size=visual_size(ctx))
    return FrameMeanEncoder(ViTImageEncoder(vit, config.pooling))


@hookimpl
def modaloom_register_modalities(registry: Registry) -> None:
    """Register the ``frame_mean`` encoder."""
    registry.add_encoder(
        make_frame_mean_encoder,
        FrameMeanSpec,
        description="ViT per frame, features averaged over time (COTS)",
        modality="video",
    )
