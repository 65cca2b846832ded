"""``vq``: a small VQ-VAE as a visual tokenizer, trained in a stage of its own (SPEC §B8).

For users with no dVAE. `VQVAE` (van den Oord et al., 2017): a convolutional encoder
(``log2(downsample)`` stride-2 4x4 convolutions with ReLU, then a 1x1 to ``dim``), a codebook of
``codes`` vectors, and a mirrored decoder (transposed convolutions back to the pixels). The code
of a position is its nearest codebook vector (Euclidean); the decoder sees the quantised map with
the straight-through estimator (``z_e + (z_q - z_e).detach()``). Losses (`vq_losses`):

- ``vq_recon_loss``: mean squared error of the reconstruction of the normalised pixels;
- ``vq_codebook_loss``: ``||sg[z_e] - z_q||^2`` (moves the codebook);
- ``vq_commit_loss``: ``commitment * ||z_e - sg[z_q]||^2`` (0.25 in the paper).

It sees the image at ``downsample`` x the ViT's patch grid (`tokenizer_view`), so its code map is
the patch grid. The VQ-VAE lives in the ``mvlm`` objective (its ``visual_tokenizer``); the
``vq_tokenizer`` objective trains it. Train it in a stage of its own: a source whose
``objectives: [vq_tokenizer]`` in the first stage, and one with the other objectives (not
``vq_tokenizer``) in the next, so the CMVM stage uses frozen codes (no gradient reaches the
VQ-VAE there: CMVM computes its targets without one). CMVM with a VQ-VAE that never trained warns
once.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from modaloom.core.compose import BuildContext, FeatureCache
from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import Objective, PixelGrid, VisualTokenizer
from modaloom.core.registry import Registry
from modaloom.core.spec_models import ObjectiveSpec, Reference, VisualTokenizerSpec
from modaloom.objectives.losses import zero_loss_like
from modaloom.objectives.visual_tokenizer import tokenizer_view

__all__ = ["VQVAE", "VQTokenizer", "VQTokenizerSpec", "VQTrainer", "VQTrainerSpec", "vq_losses"]


class VQTokenizerSpec(VisualTokenizerSpec):
    """A VQ-VAE trained by the ``vq_tokenizer`` objective (in a stage of its own)."""

    type: Literal["vq"] = "vq"
    codes: int = Field(512, ge=2)
    """Codebook size (the CMVM vocabulary)."""
    dim: int = Field(64, ge=1)
    """Width of a code vector."""
    hidden: int = Field(64, ge=1)
    """Channels of the convolutions."""
    downsample: int = Field(4, ge=2)
    """Pixels per code side (a power of 2): the image is seen at ``downsample`` x the patch grid."""
    commitment: float = Field(0.25, ge=0.0)
    """Weight of the commitment term (beta, 0.25 in van den Oord et al.)."""

    @field_validator("downsample")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError(f"must be a power of 2 (2, 4, 8, ...), got {value}")
        return value


class VQOutput(NamedTuple):
    """One VQ-VAE pass.

    Attributes:
        codes: (B, h, w) long.
        latent: encoder output z_e, (B, dim, h, w).
        quantised: codebook vectors z_q, (B, dim, h, w).
        reconstruction: decoder output, (B, C, H, W).
    """

    codes: Tensor
    latent: Tensor
    quantised: Tensor
    reconstruction: Tensor


class VQVAE(nn.Module):
    """Convolutional encoder, codebook and decoder.

    Args:
        codes: codebook size K.
        dim: code width.
        hidden: convolution channels.
        downsample: 2**n, the number of stride-2 layers n each way.
        channels: image channels.
    """

    def __init__(self, codes: int, dim: int, hidden: int, downsample: int, channels: int) -> None:
        super().__init__()
        steps = int(math.log2(downsample))
        down: list[nn.Module] = []
        up: list[nn.Module] = [nn.Conv2d(dim, hidden, 3, padding=1)]
        for step in range(steps):
            down += [nn.Conv2d(channels if step == 0 else hidden, hidden, 4, 2, 1), nn.ReLU()]
            last = step == steps - 1
            up += [nn.ReLU(), nn.ConvTranspose2d(hidden, channels if last else hidden, 4, 2, 1)]
        self.encoder = nn.Sequential(*down, nn.Conv2d(hidden, dim, 1))
        self.codebook = nn.Embedding(codes, dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / codes, 1.0 / codes)
        self.decoder = nn.Sequential(*up)

    def quantise(self, latent: Tensor) -> tuple[Tensor, Tensor]:
        """(B, dim, h, w) -> codes (B, h, w) and their vectors (B, dim, h, w)."""
        flat = latent.permute(0, 2, 3, 1).flatten(0, 2)  # (B*h*w, dim)
        book = self.codebook.weight
        distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.T + book.pow(2).sum(1)[None]
        codes = distances.argmin(dim=1).view(latent.shape[0], *latent.shape[2:])
        return codes, self.codebook(codes).permute(0, 3, 1, 2)

    def forward(self, pixels: Tensor) -> VQOutput:
        """Encode, quantise (straight-through) and decode (B, C, H, W) pixels."""
        latent = self.encoder(pixels)
        codes, quantised = self.quantise(latent)
        straight = latent + (quantised - latent).detach()
        return VQOutput(codes, latent, quantised, self.decoder(straight))


def vq_losses(pixels: Tensor, out: VQOutput, commitment: float) -> dict[str, Tensor]:
    """``vq_recon_loss``, ``vq_codebook_loss`` and ``vq_commit_loss`` of one pass."""
    return {
        "vq_recon_loss": F.mse_loss(out.reconstruction, pixels),
        "vq_codebook_loss": F.mse_loss(out.quantised, out.latent.detach()),
        "vq_commit_loss": commitment * F.mse_loss(out.latent, out.quantised.detach()),
    }


class VQTokenizer(VisualTokenizer):
    """A `VQVAE`'s codes of the ViT's patch grid; ``trained_steps`` counts its training calls.

    Args:
        config: the spec.
        grid: the vision component's patches.
    """

    trained_steps: Tensor
    trainable = True

    def __init__(self, config: VQTokenizerSpec, grid: PixelGrid) -> None:
        super().__init__()
        self.codes, self.downsample, self.commitment = (
            config.codes,
            config.downsample,
            config.commitment,
        )
        self.vqvae = VQVAE(
            config.codes, config.dim, config.hidden, config.downsample, grid.channels
        )
        self.register_buffer("trained_steps", torch.zeros((), dtype=torch.long))

    def losses(self, pixels: Tensor, grid: tuple[int, int]) -> dict[str, Tensor]:
        """The training terms on (B, C, H, W) normalised pixels, seen as CMVM sees them."""
        view = tokenizer_view(pixels, grid, self.downsample)
        if self.training:
            self.trained_steps.add_(1)
        return vq_losses(view, self.vqvae(view), self.commitment)

    @torch.no_grad()
    def forward(self, pixels: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, C, H, W) -> (B, grid_h * grid_w) codes (no gradient: frozen targets)."""
        view = tokenizer_view(pixels, grid, self.downsample)
        latent = self.vqvae.encoder(view.to(self.vqvae.codebook.weight.dtype))
        return self.vqvae.quantise(latent)[0].flatten(1)


def make_vq(config: VQTokenizerSpec, grid: PixelGrid) -> VQTokenizer:
    """Registry factory of the ``vq`` visual tokenizer."""
    return VQTokenizer(config, grid)


# ------------------------------------------------------------------------- the training objective


class VQTrainerSpec(ObjectiveSpec):
    """Trains the ``vq`` visual tokenizer of an ``mvlm`` objective (a stage of its own)."""

    type: Literal["vq_tokenizer"] = "vq_tokenizer"
    mvlm: str = "mvlm"
    """The ``mvlm`` objective (by name) whose ``visual_tokenizer: {type: vq}`` this trains."""

    def references(self) -> list[Reference]:
        """``mvlm`` names an ``mvlm`` objective."""
        return [Reference("mvlm", self.mvlm, "objective", ("mvlm",))]


class VQTrainer(Objective):
    """Returns `vq_losses` on the images of the ``mvlm`` objective's vision component."""

    def __init__(self, config: VQTrainerSpec) -> None:
        super().__init__()
        self.config = config

    def forward(self, features: FeatureCache) -> dict[str, Tensor]:
        mvlm = features.model.objective_with(
            lambda objective: isinstance(getattr(objective, "tokenizer", None), VQTokenizer),
            self.config.mvlm,
            what="provide a vq visual tokenizer",
            fix="set its visual_tokenizer: {type: vq}",
        )
        tokenizer: VQTokenizer = mvlm.tokenizer  # type: ignore[assignment]
        vision = mvlm.config.vision  # type: ignore[union-attr]
        field = features.model.input_field(vision, features.batch)
        pixels = features.batch[field]["pixel_values"]
        present = features.present(vision)
        if pixels.ndim != 4 or not bool(present.any()):  # a video or an empty batch
            terms = ("vq_recon_loss", "vq_codebook_loss", "vq_commit_loss")
            return {term: zero_loss_like(*tokenizer.parameters()) for term in terms}
        patch = int(mvlm.patch)  # type: ignore[union-attr]
        grid = (pixels.shape[2] // patch, pixels.shape[3] // patch)
        return tokenizer.losses(pixels[present], grid)


def make_vq_trainer(config: VQTrainerSpec, ctx: BuildContext) -> VQTrainer:
    """Registry factory of the ``vq_tokenizer`` objective."""
    return VQTrainer(config)


@hookimpl
def modaloom_register_objectives(registry: Registry) -> None:
    """Register the ``vq`` visual tokenizer and the ``vq_tokenizer`` objective that trains it."""
    registry.add_visual_tokenizer(
        make_vq, VQTokenizerSpec, description="a small VQ-VAE, trained by vq_tokenizer"
    )
    registry.add_objective(
        make_vq_trainer,
        VQTrainerSpec,
        description="trains an mvlm objective's vq visual tokenizer (a stage of its own)",
    )
