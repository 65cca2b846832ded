"""A third-party modaloom plugin in one file: an encoder, an objective and a data source."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from typing import Literal

import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

import modaloom
from modaloom.core.spec_models import ComponentSpec, ObjectiveSpec, SourceSpec

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


class PixelMLPSpec(ComponentSpec):
    """Flattens each 8x8 patch and maps it through a small MLP."""

    type: Literal["pixel_mlp"] = "pixel_mlp"
    hidden: int = 32


class PixelMLP(modaloom.Encoder):
    modality = "image"

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3 * 64, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.output_dim = hidden

    def forward(self, inputs: dict[str, Tensor]) -> modaloom.EncoderOutput:
        patches = F.unfold(inputs["pixel_values"], kernel_size=8, stride=8).transpose(1, 2)
        sequence = self.mlp(patches)
        return modaloom.EncoderOutput(sequence, sequence.mean(dim=1), None)


class CosineAlignSpec(ObjectiveSpec):
    """Pulls paired pooled features together: mean of 1 - cos(a, b)."""

    type: Literal["cosine_align"] = "cosine_align"
    a: str = "vision"
    b: str = "text"


class CosineAlign(modaloom.Objective):
    def __init__(self, config: CosineAlignSpec, dim_a: int, dim_b: int) -> None:
        super().__init__()
        self.config = config
        self.proj = nn.Linear(dim_b, dim_a)

    def forward(self, features) -> dict[str, Tensor]:  # type: ignore[no-untyped-def]
        a = features[self.config.a].pooled
        b = self.proj(features[self.config.b].pooled)
        return {"align_loss": (1 - F.cosine_similarity(a, b, dim=-1)).mean()}


class ColorSquaresSpec(SourceSpec):
    """Generated in memory: one colored square per image, captioned with its color."""

    type: Literal["color_squares"] = "color_squares"
    size: int = 48
    seed: int = 0


class ColorSquares(modaloom.Source):
    def __init__(self, config: ColorSquaresSpec) -> None:
        self.config = config

    def __len__(self) -> int:
        return self.config.size

    def __getitem__(self, index: int) -> dict[str, object]:
        rng = random.Random(self.config.seed * 100_003 + index)
        name = rng.choice(sorted(COLORS))
        image = Image.new("RGB", (32, 32), COLORS[name])
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return {
            "__key__": f"square-{index}",
            "image": buffer.getvalue(),
            "text": f"a {name} square",
        }

    def iter_raw(self) -> Iterator[dict[str, object]]:
        return (self[i] for i in range(len(self)))


@modaloom.hookimpl
def modaloom_register_modalities(registry: modaloom.Registry) -> None:
    registry.add_encoder(
        lambda cfg, ctx: PixelMLP(cfg.hidden),
        PixelMLPSpec,
        description="patch MLP image encoder",
        modality="image",
    )


@modaloom.hookimpl
def modaloom_register_objectives(registry: modaloom.Registry) -> None:
    registry.add_objective(
        lambda cfg, ctx: CosineAlign(cfg, ctx.output_dim(cfg.a), ctx.output_dim(cfg.b)),
        CosineAlignSpec,
        description="1 - cosine similarity of paired features",
    )


@modaloom.hookimpl
def modaloom_register_sources(registry: modaloom.Registry) -> None:
    registry.add_source(
        ColorSquares,
        ColorSquaresSpec,
        description="in-memory colored squares with captions",
    )
