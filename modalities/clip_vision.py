"""CLIP vision tower (`transformers`) for images and, frame by frame, videos (VALOR, SPEC §A2)."""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor
from transformers import CLIPVisionConfig, CLIPVisionModel

from modaloom.core.compose import BuildContext
from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import Encoder, EncoderOutput
from modaloom.core.registry import Registry
from modaloom.core.spec_models import ComponentSpec
from modaloom.modalities.image import ImageProcessor

__all__ = ["CLIPVisionEncoder", "CLIPVisionSpec", "load_clip_vision"]

SDPA: dict[str, Any] = {"attn_implementation": "sdpa"}
"""Config keyword selecting PyTorch scaled-dot-product attention."""


class CLIPVisionSpec(ComponentSpec):
    """A CLIP ViT vision tower (``model.components.<name>``)."""

    type: Literal["clip_vision"] = "clip_vision"
    pretrained: str | None = None
    """`CLIPVisionModel` checkpoint name or directory; random init when omitted."""
    config: dict[str, Any] = {}
    """`CLIPVisionConfig` fields (random init) or overrides (with ``pretrained``)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""


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


def _visual_size(ctx: BuildContext) -> int | None:
    """Side length of the data's video (else image) frames, if known."""
    video_config = getattr(ctx.processors.get("video"), "config", None)
    if video_config is not None and hasattr(video_config, "size"):
        return int(video_config.size)
    image = ctx.processors.get("image")
    return image.config.size if isinstance(image, ImageProcessor) else None


def load_clip_vision(config: CLIPVisionSpec, ctx: BuildContext) -> CLIPVisionModel:
    """A `CLIPVisionModel` from ``pretrained`` or from a config at the data's frame size."""
    if config.pretrained is not None:
        clip = CLIPVisionModel.from_pretrained(
            config.pretrained, attn_implementation="sdpa", trust_remote_code=False, **config.config
        )
    else:
        size = _visual_size(ctx)
        fields: dict[str, Any] = {
            **({"image_size": size} if size is not None else {}),
            **config.config,
        }
        clip = CLIPVisionModel(CLIPVisionConfig(**fields, **SDPA))
    if config.gradient_checkpointing:
        clip.activation_checkpointing_enable()
    return clip


def make_clip_vision_encoder(config: CLIPVisionSpec, ctx: BuildContext) -> CLIPVisionEncoder:
    """Registry factory of the ``clip_vision`` encoder."""
    return CLIPVisionEncoder(load_clip_vision(config, ctx))


TINY_CLIP_VISION = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "patch_size": 8,
    "image_size": 32,
}


@hookimpl
def modaloom_register_modalities(registry: Registry) -> None:
    """Register the ``clip_vision`` encoder."""
    registry.add(
        "encoder",
        "clip_vision",
        make_clip_vision_encoder,
        CLIPVisionSpec,
        description="CLIP ViT vision tower; videos frame by frame (transformers)",
        modality=("video", "image"),
        tiny={"config": TINY_CLIP_VISION},
    )
