"""``dvae``: DALL-E's dVAE encoder as a visual tokenizer (COTS's CMVM targets, SPEC §A3/§B8).

`DALLEEncoder` is the architecture of ``dall_e/encoder.py`` in the public ``openai/DALL-E``
repository, written here with `torch.nn` layers: a 7x7 input convolution to ``hidden`` channels,
four groups of ``blocks_per_group`` residual blocks (widths ``hidden``, 2x, 4x, 8x; 2x2 max
pooling after each of the first three groups, so the code map is 8x smaller than the image),
then ReLU and a 1x1 convolution to ``codes`` logits (8192 in the published encoder). A residual
block is ``id_path(x) + res_path(x) / n_layers**2`` (``n_layers`` = 4 * ``blocks_per_group``),
``res_path`` = ReLU, 3x3 conv to width/4, ReLU, 3x3, ReLU, 3x3, ReLU, 1x1 back to the width;
``id_path`` is a 1x1 convolution where the width changes. Every convolution pads to keep the size.

The module's state-dict keys are the published encoder's with ``.w``/``.b`` renamed
``.weight``/``.bias`` (``blocks.group_1.block_1.res_path.conv_1.weight``, ...);
``scripts/convert_dalle_encoder.py`` converts ``encoder.pkl`` to a safetensors file in this
layout. The file must hold exactly these keys with these shapes (else a `SpecError` says which
differ). The tokenizer is frozen: its parameters never train.

Codes: the normalised image is brought back to [0, 1] with ``data.image``'s mean and std,
resized to 8x the ViT's patch grid (`tokenizer_view`: COTS's 384 px images, 24 x 24 patches of
16, are seen at 192 px [I: SPEC §A3]), mapped as DALL-E's ``map_pixels`` does
(``0.8 * x + 0.1``), and each position's code is the argmax of its logits.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator
from safetensors.torch import load_file
from torch import Tensor, nn

from modaloom.core.errors import SpecError
from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import PixelGrid, VisualTokenizer
from modaloom.core.registry import Registry
from modaloom.core.spec_models import VisualTokenizerSpec
from modaloom.objectives.visual_tokenizer import tokenizer_view

__all__ = ["DALLEEncoder", "DVAETokenizer", "DVAETokenizerSpec", "load_dalle_encoder"]

logger = logging.getLogger(__name__)

DOWNSAMPLE = 8
"""The encoder's code map is 8x smaller than its input (three 2x2 poolings)."""
LOGIT_LAPLACE_EPS = 0.1
"""DALL-E's ``map_pixels``: x -> (1 - 2 eps) x + eps."""
CONVERT_HINT = "convert DALL-E's encoder.pkl with scripts/convert_dalle_encoder.py"


class DVAETokenizerSpec(VisualTokenizerSpec):
    """DALL-E's dVAE encoder, frozen, weights from a local safetensors file (COTS)."""

    type: Literal["dvae"] = "dvae"
    path: str
    """A safetensors file in modaloom's layout (``scripts/convert_dalle_encoder.py``)."""
    codes: int = Field(8192, ge=2)
    """Vocabulary size: the published encoder's 8192."""
    hidden: int = Field(256, ge=4)
    """Width of the first group (``n_hid``; 256 published); a multiple of 4."""
    blocks_per_group: int = Field(2, ge=1)
    """Residual blocks per group (``n_blk_per_group``; 2 published)."""

    @field_validator("path")
    @classmethod
    def _file_exists(cls, path: str) -> str:
        if not Path(path).expanduser().is_file():
            raise ValueError(f"{path} is not a file; {CONVERT_HINT}")
        return path

    @field_validator("hidden")
    @classmethod
    def _multiple_of_four(cls, hidden: int) -> int:
        if hidden % 4:
            raise ValueError(f"must be a multiple of 4, got {hidden}")
        return hidden


class EncoderBlock(nn.Module):
    """One residual block: ``id_path(x) + post_gain * res_path(x)``.

    Args:
        n_in: input channels.
        n_out: output channels (a multiple of 4).
        n_layers: blocks in the whole encoder (``post_gain = 1 / n_layers**2``).
    """

    def __init__(self, n_in: int, n_out: int, n_layers: int) -> None:
        super().__init__()
        hidden = n_out // 4
        self.post_gain = 1 / n_layers**2
        self.id_path: nn.Module = nn.Conv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        self.res_path = nn.Sequential(
            OrderedDict(
                [
                    ("relu_1", nn.ReLU()),
                    ("conv_1", nn.Conv2d(n_in, hidden, 3, padding=1)),
                    ("relu_2", nn.ReLU()),
                    ("conv_2", nn.Conv2d(hidden, hidden, 3, padding=1)),
                    ("relu_3", nn.ReLU()),
                    ("conv_3", nn.Conv2d(hidden, hidden, 3, padding=1)),
                    ("relu_4", nn.ReLU()),
                    ("conv_4", nn.Conv2d(hidden, n_out, 1)),
                ]
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, n_in, H, W) -> (B, n_out, H, W)."""
        return self.id_path(x) + self.post_gain * self.res_path(x)  # type: ignore[no-any-return]


class DALLEEncoder(nn.Module):
    """DALL-E's dVAE encoder: (B, C, H, W) in DALL-E's pixel map -> (B, codes, H/8, W/8) logits.

    Args:
        codes: vocabulary size.
        hidden: width of the first group.
        blocks_per_group: residual blocks per group.
        channels: input channels.
    """

    def __init__(
        self, codes: int = 8192, hidden: int = 256, blocks_per_group: int = 2, channels: int = 3
    ) -> None:
        super().__init__()
        self.codes = codes
        n_layers = 4 * blocks_per_group
        widths = [hidden, hidden, 2 * hidden, 4 * hidden, 8 * hidden]  # into group g: widths[g-1]
        layers: list[tuple[str, nn.Module]] = [("input", nn.Conv2d(channels, hidden, 7, padding=3))]
        for group in range(1, 5):
            blocks: list[tuple[str, nn.Module]] = [
                (
                    f"block_{i + 1}",
                    EncoderBlock(
                        widths[group - 1] if i == 0 else widths[group], widths[group], n_layers
                    ),
                )
                for i in range(blocks_per_group)
            ]
            if group < 4:
                blocks.append(("pool", nn.MaxPool2d(kernel_size=2)))
            layers.append((f"group_{group}", nn.Sequential(OrderedDict(blocks))))
        output = OrderedDict([("relu", nn.ReLU()), ("conv", nn.Conv2d(8 * hidden, codes, 1))])
        layers.append(("output", nn.Sequential(output)))
        self.blocks = nn.Sequential(OrderedDict(layers))

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of its weights."""
        return next(self.parameters()).dtype

    def forward(self, x: Tensor) -> Tensor:
        """Logits over the codes at each 8x-downsampled position."""
        return self.blocks(x)  # type: ignore[no-any-return]


def load_dalle_encoder(encoder: DALLEEncoder, path: str, where: str) -> None:
    """Load a safetensors file into ``encoder``, refusing any other set of keys or shapes.

    Raises:
        SpecError: at ``where``: keys missing or unexpected, or shapes that differ.
    """
    state = load_file(str(Path(path).expanduser()))
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        problem = (
            f"{path} does not hold a DALL-E dVAE encoder in modaloom's layout "
            f"(missing keys {missing[:3]}{' ...' if len(missing) > 3 else ''}, "
            f"unexpected keys {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}); "
            f"{CONVERT_HINT}, and set codes, hidden and blocks_per_group to the encoder's"
        )
        raise SpecError([(where, problem)])
    shapes = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if shapes:
        key = shapes[0]
        problem = (
            f"{path}: {key} has shape {list(state[key].shape)}, the encoder "
            f"{list(own[key].shape)} ({len(shapes)} tensors differ); set codes, hidden and "
            "blocks_per_group to the encoder's"
        )
        raise SpecError([(where, problem)])
    encoder.load_state_dict(state)


class DVAETokenizer(VisualTokenizer):
    """Frozen DALL-E dVAE codes of the ViT's patch grid.

    Args:
        encoder: the loaded encoder (frozen here).
        grid: the vision component's patches and its pixel normalisation.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, encoder: DALLEEncoder, grid: PixelGrid) -> None:
        super().__init__()
        self.encoder = encoder.requires_grad_(False)
        self.codes = int(encoder.codes)
        self.register_buffer("mean", torch.tensor(grid.mean)[:, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(grid.std)[:, None, None], persistent=False)

    def train(self, mode: bool = True) -> DVAETokenizer:
        """The encoder stays in evaluation mode (frozen)."""
        super().train(mode)
        self.encoder.eval()
        return self

    @torch.no_grad()
    def forward(self, pixels: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, C, H, W) normalised pixels -> (B, grid_h * grid_w) codes."""
        unit = (pixels.float() * self.std + self.mean).clamp(0.0, 1.0)
        view = tokenizer_view(unit, grid, DOWNSAMPLE)
        mapped = (1 - 2 * LOGIT_LAPLACE_EPS) * view + LOGIT_LAPLACE_EPS
        logits = self.encoder(mapped.to(self.encoder.dtype))
        return logits.argmax(dim=1).flatten(1)


def make_dvae(config: DVAETokenizerSpec, grid: PixelGrid) -> DVAETokenizer:
    """Registry factory of the ``dvae`` visual tokenizer."""
    encoder = DALLEEncoder(config.codes, config.hidden, config.blocks_per_group, grid.channels)
    load_dalle_encoder(encoder, config.path, "visual_tokenizer.path")
    return DVAETokenizer(encoder, grid)


@hookimpl
def modaloom_register_objectives(registry: Registry) -> None:
    """Register the ``dvae`` visual tokenizer."""
    registry.add_visual_tokenizer(
        make_dvae,
        DVAETokenizerSpec,
        description="DALL-E's dVAE encoder (8192 codes), frozen, from a safetensors file",
    )
