"""Image modality: PIL decoding (JPEG, PNG, WebP, ...), transforms, and the ViT encoder."""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field
from torch import Tensor
from transformers import ViTConfig

from modaloom.core.compose import BuildContext
from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import (
    DataContext,
    Encoder,
    EncoderOutput,
    Processor,
    zeros_like_first,
)
from modaloom.core.registry import Registry
from modaloom.core.spec_models import Spec
from modaloom.modalities.hf import (
    HFEncoderSpec,
    Pooling,
    load_hf_model,
    log_position_resize,
    pool_tokens,
    save_hf_config,
    save_hf_model,
)
from modaloom.modalities.image_decode import decode_image
from modaloom.modalities.media_io import DEFAULT_MAX_PIXELS, decoding
from modaloom.modalities.pixels import default_pixels, export_pixels, pixels, resolve_pixels
from modaloom.modalities.transforms import (
    augment,
    decode_side,
    normalize,
)

if TYPE_CHECKING:
    from transformers import ViTModel


class ImageSpec(Spec):
    """Image processing (``data.image``)."""

    size: int | None = Field(None, ge=8)
    """Output side length in pixels; default: a pretrained vision checkpoint's (its
    ``preprocessor_config.json``), else 224 (`modaloom.modalities.pixels`)."""
    scale: tuple[float, float] = (0.5, 1.0)
    """Area range of the random resized crop in training."""
    flip: bool = True
    """Random horizontal flip in training."""
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    """Larger images (width x height, read from the header) are skipped, not decoded."""
    mean: tuple[float, float, float] | None = None
    """Per-channel mean for normalisation; default: a pretrained vision checkpoint's, else
    ImageNet's."""
    std: tuple[float, float, float] | None = None
    """Per-channel standard deviation for normalisation; default: a pretrained vision
    checkpoint's, else ImageNet's."""


class ImageProcessor(Processor):
    """Decode, crop, flip and normalise images to ``{"pixel_values": (3, S, S)}``."""

    def __init__(self, config: ImageSpec) -> None:
        self.config = default_pixels(config)
        self.pixels = pixels(self.config)

    def process(
        self, value: Any, *, key: str, train: bool, rng: random.Random
    ) -> dict[str, Tensor]:
        cfg, (mean, std, size) = self.config, self.pixels
        with decoding(key):
            side = decode_side(size, cfg.scale[0])
            image = decode_image(value, key, max_pixels=cfg.max_pixels, min_side=side)
            out = augment(image, size, train=train, rng=rng, scale=cfg.scale, flip=cfg.flip)
        return {"pixel_values": normalize(out, mean, std)}

    def collate(self, items: list[dict[str, Tensor] | None]) -> dict[str, Tensor]:
        blank = zeros_like_first(items)
        pixels = torch.stack([(item or blank)["pixel_values"] for item in items])
        return {"pixel_values": pixels, "present": torch.tensor([i is not None for i in items])}

    def export(self, directory: Path) -> list[str]:
        return export_pixels(self.pixels, directory)


def make_image_processor(config: ImageSpec, ctx: DataContext) -> ImageProcessor:
    """Registry factory of the ``image`` modality (unset pixel settings resolved)."""
    return ImageProcessor(resolve_pixels(config, ctx, "image"))


# ------------------------------------------------------------------------------ encoder


VIT_UNUSED = (r"pooler\.", r"classifier\.")
"""Checkpoint tensors a ViT leaves out: the pooler and a classification head."""


class ViTEncoderSpec(HFEncoderSpec):
    """A ViT image encoder: `transformers`' `ViTModel` and `ViTConfig` (``model.components.*``).

    A random init takes its image size from ``data.image.size`` (224 without an image spec).
    """

    type: Literal["vit"] = "vit"
    hf_config = ViTConfig
    pooling: Pooling = "cls"
    """Global feature: the [CLS] token or the mean of patch tokens."""


class ViTImageEncoder(Encoder):
    """ViT over ``{"pixel_values": (B, 3, H, W)}``.

    Returns sequence (B, 1 + N, D) ([CLS] first), pooled (B, D) and no mask.
    """

    modality = "image"

    def __init__(self, vit: ViTModel, pooling: str = "cls") -> None:
        super().__init__()
        self.vit = vit
        self.pooling = pooling
        self.output_dim = int(vit.config.hidden_size)

    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        pixels = inputs["pixel_values"].to(
            self.vit.embeddings.patch_embeddings.projection.weight.dtype
        )
        sequence = self.vit(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
        return EncoderOutput(sequence, pool_tokens(sequence, self.pooling), None)

    export_class = "ViTModel"

    def save_config(self, directory: Path) -> None:
        save_hf_config(self.vit, directory)

    def export_pretrained(self, directory: Path) -> None:
        """The `ViTModel` (without the pooler it does not use)."""
        save_hf_model(self.vit, directory)


def image_size_of(ctx: BuildContext, default: int = 224) -> int:
    """Side length the data's image processor produces."""
    processor = ctx.processors.get("image")
    return processor.pixels.size if isinstance(processor, ImageProcessor) else default


def visual_size(ctx: BuildContext) -> int | None:
    """Side length of the data's video (else image) frames, if known."""
    video_config = getattr(ctx.processors.get("video"), "config", None)
    if video_config is not None and hasattr(video_config, "size"):
        return int(video_config.size)
    image = ctx.processors.get("image")
    return image.pixels.size if isinstance(image, ImageProcessor) else None


def load_vit(
    config: HFEncoderSpec,
    ctx: BuildContext,
    *,
    image_size: int | None = None,
    gradient_checkpointing: bool | None = None,
) -> ViTModel:
    """A `ViTModel` from ``pretrained`` or from a config at the data's image size.

    Args:
        config: a ``vit``, ``timesformer`` or ``frame_mean`` spec.
        ctx: the build context.
        image_size: the data's frame size (default: `image_size_of`): a random init's image
            size; a checkpoint of another size has its position embeddings interpolated.
        gradient_checkpointing: as in `load_hf_model`.
    """
    from transformers import ViTModel  # lazily: only a spec that uses it loads it

    vit = load_hf_model(
        ViTModel,
        ViTConfig,
        config,
        ctx,
        defaults={"image_size": image_size or image_size_of(ctx)},
        model_kwargs={"add_pooling_layer": False},
        gradient_checkpointing=gradient_checkpointing,
        unused=VIT_UNUSED,
    )
    if config.pretrained is not None:
        log_position_resize(config, ctx, vit.config, image_size or image_size_of(ctx, 0) or None)
    return vit


def make_vit_encoder(config: ViTEncoderSpec, ctx: BuildContext) -> ViTImageEncoder:
    """Registry factory of the ``vit`` encoder."""
    return ViTImageEncoder(load_vit(config, ctx), config.pooling)


@hookimpl
def modaloom_register_modalities(registry: Registry) -> None:
    """Register the image modality and the ViT encoder."""
    registry.add_modality(
        "image",
        make_image_processor,
        ImageSpec,
        description="PIL image decoding, random resized crop, flip, normalise",
    )
    registry.add_encoder(
        make_vit_encoder,
        ViTEncoderSpec,
        description="ViT image encoder (transformers)",
        modality="image",
    )
