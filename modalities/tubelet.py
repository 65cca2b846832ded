"""OmniVL's 3-D tubelet patch embedding (SPEC §A1), inflated from a ViT's 2-D one.

A video's T frames are cut into T / t tubelets of t frames; `torch.nn.Conv3d` with kernel =
stride = (t, p, p) embeds each t x p x p block (`tubelet_tokens`). Its kernel is inflated from
the 2-D patch kernel (`inflate_tubelet`): ``average`` (the 2-D kernel / t on every frame,
OmniVL's code [C]) or ``central`` (the 2-D kernel on frame t // 2, zeros elsewhere [I: I3D's
alternative]); either way a static clip gets the 2-D embedding of its frame.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from transformers.models.vit.modeling_vit import ViTEmbeddings

__all__ = ["TubeletInit", "inflate_tubelet", "tubelet_conv", "tubelet_tokens"]

TubeletInit = Literal["average", "central"]
"""How a 3-D tubelet kernel is inflated from the 2-D patch kernel (`inflate_tubelet`)."""


def tubelet_conv(projection: nn.Conv2d, size: int) -> nn.Conv3d:
    """A Conv3d over ``size`` frames with ``projection``'s patch, channels, device and dtype
    (initialise it with `inflate_tubelet`)."""
    out, channels, height, width = projection.weight.shape
    kernel = (size, height, width)
    conv = nn.Conv3d(channels, out, kernel, stride=kernel)
    return conv.to(device=projection.weight.device, dtype=projection.weight.dtype)


def inflate_tubelet(conv: nn.Conv3d, projection: nn.Conv2d, init: TubeletInit) -> None:
    """Fill ``conv``'s kernel (D, C, t, p, p) from ``projection``'s (D, C, p, p), in place, and
    copy the bias."""
    size = conv.weight.shape[2]
    with torch.no_grad():
        if init == "average":
            conv.weight.copy_(projection.weight[:, :, None].expand_as(conv.weight) / size)
        else:
            conv.weight.zero_()
            conv.weight[:, :, size // 2].copy_(projection.weight)
        if conv.bias is not None and projection.bias is not None:
            conv.bias.copy_(projection.bias)


def tubelet_tokens(
    embeddings: ViTEmbeddings, conv: nn.Conv3d, pixel_values: Tensor
) -> tuple[Tensor, Tensor]:
    """[CLS] and tubelet patch tokens with position embeddings, added as `ViTEmbeddings` adds
    them to 2-D patches (interpolated to the frame size), then its dropout.

    Args:
        embeddings: the ViT's embeddings ([CLS], positions, dropout).
        conv: the tubelet convolution.
        pixel_values: (B, T, C, H, W), T a multiple of the tubelet.

    Returns:
        [CLS] (B, 1, D) and patches (B, T / t, P, D), patches row-major as the ViT's.
    """
    batch, _, _, height, width = pixel_values.shape
    grid = conv(pixel_values.transpose(1, 2).to(conv.weight.dtype))  # (B, D, T', h, w)
    patches = grid.flatten(3).permute(0, 2, 3, 1)  # (B, T', P, D)
    steps = patches.shape[1]
    flat = patches.flatten(0, 1)
    tokens = torch.cat([embeddings.cls_token.expand(flat.shape[0], -1, -1), flat], dim=1)
    tokens = tokens + embeddings.interpolate_pos_encoding(tokens, height, width)
    tokens = embeddings.dropout(tokens).unflatten(0, (batch, steps))  # (B, T', 1+P, D)
    return tokens[:, 0, :1], tokens[:, :, 1:]
