"""Image modality: PIL decoding (JPEG, PNG, WebP, ...), transforms, and the ViT encoder."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import Field
from torch import Tensor
from transformers import ViTConfig, ViTModel

from modaloom.core.compose import BuildContext
from modaloom.core.errors import MediaDecodeError
from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import (
    DataContext,
    Encoder,
    EncoderOutput,
    Processor,
    zeros_like_first,
)
from modaloom.core.registry import Registry
from modaloom.core.spec_models import ComponentSpec, Spec
from modaloom.modalities.transforms import IMAGENET_MEAN, IMAGENET_STD, augment, normalize


class ImageSpec(Spec):
    """Image processing (``data.image``)."""

    size: int = Field(224, ge=8)
    """Output side length in pixels."""
    scale: tuple[float, float] = (0.5, 1.0)
    """Area range of the random resized crop in training."""
    flip: bool = True
    """Random horizontal flip in training."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    """Per-channel mean for normalisation."""
    std: tuple[float, float, float] = IMAGENET_STD
    """Per-channel standard deviation for normalisation."""


def decode_image(value: Any, key: str) -> Tensor:
    """Decode bytes or a path with PIL into (3, H, W) float in [0, 1].

    Raises:
        MediaDecodeError: unreadable, truncated or not an image.
    """
    try:
        source = io.BytesIO(value) if isinstance(value, bytes | bytearray) else Path(value)
        with Image.open(source) as image:
            rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, TypeError) as exc:
        raise MediaDecodeError(key, f"{type(exc).__name__}: {exc}") from exc
    array = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


class ImageProcessor(Processor):
    """Decode, crop, flip and normalise images to ``{"pixel_values": (3, S, S)}``."""

    def __init__(self, config: ImageSpec) -> None:
        self.config = config

    def process(
        self, value: Any, *, key: str, train: bool, rng: random.Random
    ) -> dict[str, Tensor]:
        pixels = decode_image(value, key)
        cfg = self.config
        out = augment(pixels, cfg.size, train=train, rng=rng, scale=cfg.scale, flip=cfg.flip)
        return {"pixel_values": normalize(out, cfg.mean, cfg.std)}

    def collate(self, items: list[dict[str, Tensor] | None]) -> dict[str, Tensor]:
        blank = zeros_like_first(items)
        pixels = torch.stack([(item or blank)["pixel_values"] for item in items])
        return {"pixel_values": pixels, "present": torch.tensor([i is not None for i in items])}


def make_image_processor(config: ImageSpec, ctx: DataContext) -> ImageProcessor:
    """Registry factory of the ``image`` modality."""
    return ImageProcessor(config)


# ------------------------------------------------------------------------------ encoder


class ViTEncoderSpec(ComponentSpec):
    """A ViT image encoder from `transformers` (``model.components.<name>``)."""

    type: Literal["vit"] = "vit"
    pretrained: str | None = None
    """Checkpoint name or directory for `ViTModel.from_pretrained`; random init when omitted."""
    config: dict[str, Any] = {}
    """`ViTConfig` fields (random init) or overrides (with ``pretrained``)."""
    pooling: Literal["cls", "mean"] = "cls"
    """Global feature: the [CLS] token or the mean of patch tokens."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""


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
        pooled = sequence[:, 0] if self.pooling == "cls" else sequence[:, 1:].mean(dim=1)
        return EncoderOutput(sequence, pooled, None)


def image_size_of(ctx: BuildContext, default: int = 224) -> int:
    """Side length the data's image processor produces."""
    processor = ctx.processors.get("image")
    return processor.config.size if isinstance(processor, ImageProcessor) else default


def load_vit(config: ViTEncoderSpec, ctx: BuildContext) -> ViTModel:
    """A `ViTModel` from ``pretrained`` or from a config at the data's image size."""
    if config.pretrained is not None:
        vit = ViTModel.from_pretrained(
            config.pretrained,
            add_pooling_layer=False,
            attn_implementation="sdpa",
            trust_remote_code=False,
            **config.config,
        )
    else:
        fields = {"image_size": image_size_of(ctx), **config.config}
        vit_config = ViTConfig(**fields, attn_implementation="sdpa")  # type: ignore[call-arg]
        vit = ViTModel(vit_config, add_pooling_layer=False)
    if config.gradient_checkpointing:
        vit.activation_checkpointing_enable()
    return vit


def make_vit_encoder(config: ViTEncoderSpec, ctx: BuildContext) -> ViTImageEncoder:
    """Registry factory of the ``vit`` encoder."""
    return ViTImageEncoder(load_vit(config, ctx), config.pooling)


TINY_VIT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "patch_size": 8,
    "image_size": 32,
}


@hookimpl
def modaloom_register_modalities(registry: Registry) -> None:
    """Register the image modality and the ViT encoder."""
    registry.add(
        "modality",
        "image",
        make_image_processor,
        ImageSpec,
        description="PIL image decoding, random resized crop, flip, normalise",
    )
    registry.add(
        "encoder",
        "vit",
        make_vit_encoder,
        ViTEncoderSpec,
        description="ViT image encoder (transformers)",
        modality="image",
        tiny={"config": TINY_VIT},
    )
