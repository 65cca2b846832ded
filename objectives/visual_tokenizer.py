"""Visual tokenizers: the discrete targets of masked image modelling (COTS's CMVM, SPEC §B8).

A visual tokenizer is a registered kind (`Registry.add_visual_tokenizer`): an objective's
``visual_tokenizer: {type: ...}`` is validated by the config class that ``type`` names
(`visual_tokenizer_config`) and built by its factory (`build_visual_tokenizer`) for the vision
component's patch grid (`PixelGrid`). A tokenizer maps normalised pixels (B, C, H, W) to one code
per ViT patch, (B, grid_h * grid_w), row-major. The built-ins:

- ``kmeans`` (`KMeansPatchTokenizer`, here): a patch's code is its nearest centroid
  (Euclidean) in the space of its raw, data-normalised pixels (C x p x p values). Centroids are
  buffers (checkpointed): initialised from random patches of the first training batch (seeded),
  then refined by mini-batch k-means (Sculley, 2010: per-centroid learning rate ``1 / count``) on
  each of the first ``fit_steps`` training batches, then frozen so the targets stop moving. Under
  DDP the buffers are broadcast from rank 0 at every forward, so all ranks follow rank 0's fit.
  No download; pixel-level targets, which COTS argues against [I: our stand-in].
- ``dvae`` (`modaloom.objectives.dvae`): DALL-E's dVAE encoder (COTS's choice), weights from a
  local safetensors file.
- ``vq`` (`modaloom.objectives.vq_tokenizer`): a small VQ-VAE trained by an objective of its
  own in a stage of its own, for users with no dVAE.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, SerializeAsAny, ValidationInfo, WithJsonSchema
from torch import Tensor

from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import PixelGrid, VisualTokenizer
from modaloom.core.registry import Registry
from modaloom.core.spec import validate_registered
from modaloom.core.spec_models import Seed, VisualTokenizerSpec

__all__ = [
    "KMeansPatchTokenizer",
    "KMeansTokenizerSpec",
    "TokenizerField",
    "build_visual_tokenizer",
    "patchify",
    "tokenizer_view",
    "visual_tokenizer_config",
]

TokenizerField = Annotated[
    SerializeAsAny[VisualTokenizerSpec],
    WithJsonSchema(
        {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}}
    ),
]
"""The type of an objective's ``visual_tokenizer`` field (any registered tokenizer's config;
validate it with `visual_tokenizer_config`)."""


def visual_tokenizer_config(value: Any, info: ValidationInfo) -> VisualTokenizerSpec:
    """Validate a ``visual_tokenizer`` mapping by the registered config its ``type`` names
    (``kmeans`` when it names none, as before the kind existed)."""
    if isinstance(value, dict) and "type" not in value:
        value = {"type": "kmeans", **value}
    config = validate_registered("visual_tokenizer", value, info.context, "visual tokenizer")
    assert isinstance(config, VisualTokenizerSpec)
    return config


def build_visual_tokenizer(
    config: VisualTokenizerSpec, grid: PixelGrid, registry: Registry
) -> VisualTokenizer:
    """The tokenizer ``config`` describes, built by its registered factory for ``grid``."""
    return registry.visual_tokenizer_factory(config.type)(config, grid)


def patchify(pixels: Tensor, patch: int) -> Tensor:
    """(B, C, H, W) -> (B, N, C*p*p) row-major patches (the ViT's patch order)."""
    return F.unfold(pixels, kernel_size=patch, stride=patch).transpose(1, 2)


def tokenizer_view(pixels: Tensor, grid: tuple[int, int], factor: int) -> Tensor:
    """The image a downsampling tokenizer sees: (B, C, H, W) resized (bilinear, antialiased)
    to (grid_h * factor, grid_w * factor), so its code map has the ViT's patch grid (COTS: a
    384 px image, 24 x 24 patches of 16, is seen by the dVAE (factor 8) at 192 px)."""
    size = (grid[0] * factor, grid[1] * factor)
    if tuple(pixels.shape[-2:]) == size:
        return pixels
    return F.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False)


class KMeansTokenizerSpec(VisualTokenizerSpec):
    """Codes = nearest centroid of raw patch pixels, fitted online (no download)."""

    type: Literal["kmeans"] = "kmeans"
    codes: int = Field(512, ge=2)
    """Size of the visual-token vocabulary (centroids)."""
    fit_steps: int = Field(1000, ge=0)
    """Training batches that refine the centroids before they are frozen."""
    seed: Seed = 0
    """Seed of the initial choice of patches."""


class KMeansPatchTokenizer(VisualTokenizer):
    """Nearest-centroid codes of raw patches, centroids fitted by online mini-batch k-means.

    Args:
        codes: K.
        patch: the patch side p.
        channels: C (a patch has C*p*p values).
        fit_steps: training calls that update the centroids.
        seed: seeds the choice of initial patches.
    """

    centroids: Tensor
    counts: Tensor
    steps: Tensor

    def __init__(
        self, codes: int, patch: int, channels: int = 3, fit_steps: int = 1000, seed: int = 0
    ) -> None:
        super().__init__()
        self.codes, self.patch, self.fit_steps, self.seed = codes, patch, fit_steps, seed
        self.register_buffer("centroids", torch.zeros(codes, channels * patch * patch))
        self.register_buffer("counts", torch.zeros(codes))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def assign(self, patches: Tensor) -> Tensor:
        """(M, d) -> (M,) index of the nearest centroid."""
        centroids = self.centroids.to(patches.dtype)
        distances = (
            patches.pow(2).sum(1, keepdim=True)
            - 2 * patches @ centroids.T
            + centroids.pow(2).sum(1)[None]
        )
        return distances.argmin(dim=1)

    @torch.no_grad()
    def fit_step(self, patches: Tensor) -> None:
        """One mini-batch k-means update with (M, d) patches (the first call initialises)."""
        patches = patches.float()
        if int(self.steps) == 0:
            generator = torch.Generator().manual_seed(self.seed)
            pick = torch.randint(patches.shape[0], (self.centroids.shape[0],), generator=generator)
            self.centroids.copy_(patches[pick.to(patches.device)])
        codes = self.assign(patches)
        sums = torch.zeros_like(self.centroids).index_add_(0, codes, patches)
        hits = torch.bincount(codes, minlength=self.centroids.shape[0]).to(self.counts)
        self.counts.add_(hits)
        used = hits > 0
        means = sums[used] / hits[used, None]
        rate = (hits[used] / self.counts[used])[:, None]
        self.centroids[used] += rate * (means - self.centroids[used])
        self.steps.add_(1)

    @torch.no_grad()
    def forward(self, pixels: Tensor, grid: tuple[int, int]) -> Tensor:
        """Codes of every patch, (B, N) long; refines the centroids first while fitting."""
        patches = patchify(pixels.float(), self.patch)
        flat = patches.flatten(0, 1)
        if int(self.steps) == 0 or (self.training and int(self.steps) < self.fit_steps):
            self.fit_step(flat)
        return self.assign(flat).view(patches.shape[:2])


def make_kmeans(config: KMeansTokenizerSpec, grid: PixelGrid) -> KMeansPatchTokenizer:
    """Registry factory of the ``kmeans`` visual tokenizer."""
    return KMeansPatchTokenizer(
        config.codes, grid.patch, grid.channels, config.fit_steps, config.seed
    )


@hookimpl
def modaloom_register_objectives(registry: Registry) -> None:
    """Register the ``kmeans`` visual tokenizer."""
    registry.add_visual_tokenizer(
        make_kmeans,
        KMeansTokenizerSpec,
        description="nearest centroid of raw patch pixels, fitted online (no download)",
    )
