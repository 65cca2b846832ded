"""Frame-mean video encoder: a ViT run on each frame, features averaged over time (COTS, SPEC §A3).

Token layout of the output sequence: one feature per frame, (B, T, D).

Its parameters are named as a ``vit`` image encoder's (``vit.*``), so the weights of an image
model's ``vit`` component load into it as they are; run checkpoints written when it held them
under ``image.vit.*`` still load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from torch import Tensor, nn
from transformers import ViTConfig

from modaloom.core.compose import BuildContext
from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import EncoderOutput
from modaloom.core.registry import Registry
from modaloom.modalities.hf import HFEncoderSpec, Pooling
from modaloom.modalities.image import ViTImageEncoder, load_vit, visual_size

if TYPE_CHECKING:
    from transformers import ViTModel

__all__ = ["FrameMeanEncoder", "FrameMeanSpec"]


class FrameMeanSpec(HFEncoderSpec):
    """A ViT run on each frame, features averaged over time (COTS video retrieval, SPEC §A3).

    ``pretrained`` and ``config`` refer to `transformers`' `ViTModel` and `ViTConfig` (a ``vit``
    component's weights fit it too). A random init takes its image size from ``data.video.size``
    (else ``data.image.size``).
    """

    type: Literal["frame_mean"] = "frame_mean"
    hf_config = ViTConfig
    pooling: Pooling = "cls"
    """Per-frame feature: the frame's [CLS] token or the mean of its patch tokens."""


class FrameMeanEncoder(ViTImageEncoder):
    """A ViT image encoder applied frame by frame to ``{"pixel_values": (B, T, 3, H, W)}``.

    Returns sequence (B, T, D) of per-frame features (each the `ViTImageEncoder` pooled
    feature), pooled (B, D) = their mean over T, no mask. An image (B, 3, H, W) is read as a
    one-frame video. The parameters are the `ViTImageEncoder`'s (``vit.*``).
    """

    modality = "video"

    def __init__(self, vit: ViTModel, pooling: str = "cls") -> None:
        super().__init__(vit, pooling)
        self.register_load_state_dict_pre_hook(_rename_image_keys)

    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        pixels = inputs["pixel_values"]
        video = pixels if pixels.ndim == 5 else pixels.unsqueeze(1)
        batch, frames = video.shape[:2]
        per_frame = super().forward({"pixel_values": video.flatten(0, 1)}).pooled  # (B*T, D)
        sequence = per_frame.unflatten(0, (batch, frames))
        return EncoderOutput(sequence, sequence.mean(dim=1), None)


LEGACY_PREFIX = "image."
"""Where the ViT's parameters were before they took a ``vit`` encoder's names."""


def _rename_image_keys(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any
) -> None:
    """Load-state-dict pre-hook: ``<prefix>image.vit.*`` -> ``<prefix>vit.*`` (older runs)."""
    legacy = prefix + LEGACY_PREFIX
    for key in [key for key in state_dict if key.startswith(legacy)]:
        state_dict[prefix + key[len(legacy) :]] = state_dict.pop(key)


def make_frame_mean_encoder(config: FrameMeanSpec, ctx: BuildContext) -> FrameMeanEncoder:
    """Registry factory of the ``frame_mean`` encoder."""
    vit = load_vit(config, ctx, image_size=visual_size(ctx))
    return FrameMeanEncoder(vit, config.pooling)


@hookimpl
def modaloom_register_modalities(registry: Registry) -> None:
    """Register the ``frame_mean`` encoder."""
    registry.add_encoder(
        make_frame_mean_encoder,
        FrameMeanSpec,
        description="ViT per frame, features averaged over time (COTS)",
        modality="video",
    )
