"""CLIP vision tower (`transformers`) for images and, frame by frame, videos (VALOR, SPEC §A2)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from torch import Tensor
from transformers import CLIPVisionConfig

from modaloom.core.compose import BuildContext
from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import Encoder, EncoderOutput
from modaloom.core.registry import Registry
from modaloom.modalities.hf import (
    HFEncoderSpec,
    load_hf_model,
    log_position_resize,
    save_hf_config,
    save_hf_model,
)
from modaloom.modalities.image import visual_size

if TYPE_CHECKING:
    from transformers import CLIPVisionModel

__all__ = ["CLIPVisionEncoder", "CLIPVisionSpec", "load_clip_vision"]


CLIP_UNUSED = (r"text_model\.", r"text_projection\.", r"visual_projection\.", r"logit_scale$")
"""Tensors of a whole `CLIPModel` checkpoint the vision tower leaves out: the text tower and
the projections."""


class CLIPVisionSpec(HFEncoderSpec):
    """A CLIP ViT vision tower: `transformers`' `CLIPVisionModel` and `CLIPVisionConfig`
    (``model.components.<name>``).

    ``pretrained`` is a vision tower or a whole `CLIPModel` (its text tower is left out). A
    random init takes its image size from ``data.video.size`` (else ``data.image.size``). With a
    checkpoint, the data's pixel mean, std and size default to its ``preprocessor_config.json``
    (CLIP's statistics and crop) unless ``data.video`` / ``data.image`` set them.
    """

    type: Literal["clip_vision"] = "clip_vision"
    hf_config = CLIPVisionConfig


class CLIPVisionEncoder(Encoder):
    """CLIP vision tower over ``{"pixel_values": (B, 3, H, W) | (B, T, 3, H, W)}``.

    Frames are encoded independently (VALOR); an image is a one-frame video. Returns sequence
    (B, T*(1+P), D): each frame's [CLS] and P patch tokens (CLIP's last hidden state, before the
    post-LayerNorm), frame after frame; pooled (B, D) = the mean over frames of the
    post-LayerNorm [CLS]; no mask.
    """

    modality = "video"

    def __init__(self, clip: CLIPVisionModel) -> None:
        super().__init__()
        self.clip = clip
        self.output_dim = int(clip.config.hidden_size)

    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        pixels = inputs["pixel_values"]
        video = pixels if pixels.ndim == 5 else pixels.unsqueeze(1)
        batch, frames = video.shape[:2]
        dtype = self.clip.embeddings.patch_embedding.weight.dtype
        output = self.clip(
            pixel_values=video.flatten(0, 1).to(dtype), interpolate_pos_encoding=True
        )
        sequence = output.last_hidden_state.unflatten(0, (batch, frames)).flatten(1, 2)
        pooled = output.pooler_output.unflatten(0, (batch, frames)).mean(dim=1)
        return EncoderOutput(sequence, pooled, None)

    export_class = "CLIPVisionModel"

    def save_config(self, directory: Path) -> None:
        save_hf_config(self.clip, directory)

    def export_pretrained(self, directory: Path) -> None:
        save_hf_model(self.clip, directory)


def load_clip_vision(config: CLIPVisionSpec, ctx: BuildContext) -> CLIPVisionModel:
    """A `CLIPVisionModel` from ``pretrained`` (a vision tower or a whole `CLIPModel`) or from a
    config at the data's frame size."""
    from transformers import CLIPVisionModel  # lazily: only a spec that uses it loads it

    size = visual_size(ctx)
    defaults = {"image_size": size} if size is not None else {}
    clip = load_hf_model(
        CLIPVisionModel, CLIPVisionConfig, config, ctx, defaults=defaults, unused=CLIP_UNUSED
    )
    if config.pretrained is not None:
        log_position_resize(config, ctx, clip.config, size)
    return clip


def make_clip_vision_encoder(config: CLIPVisionSpec, ctx: BuildContext) -> CLIPVisionEncoder:
    """Registry factory of the ``clip_vision`` encoder."""
    return CLIPVisionEncoder(load_clip_vision(config, ctx))


@hookimpl
def modaloom_register_modalities(registry: Registry) -> None:
    """Register the ``clip_vision`` encoder."""
    registry.add_encoder(
        make_clip_vision_encoder,
        CLIPVisionSpec,
        description="CLIP ViT vision tower; videos frame by frame (transformers)",
        modality=("video", "image"),
    )
