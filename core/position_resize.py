"""Resizing saved position and time embeddings to a model of another shape, generically.

`train.init_from` (`modaloom.core.init_from`) uses these when a run is fine-tuned at another
image size or frame count. Time embeddings are resized along their token axis with nearest
interpolation, as the TimeSformer encoder does for another frame count at run time; the patch
positions of a vision encoder (a square grid after 0-2 prefix tokens such as [CLS]) are
resized bicubically, as `transformers` does for ViT and CLIP with ``interpolate_pos_encoding``.
Anything else (text positions, non-square grids) is not resized here.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Resized",
    "interpolate_grid_positions",
    "interpolate_time_positions",
    "resize_position_embedding",
]

TIME_KEY = re.compile(r"(^|\.)time_embed(dings?)?$")
"""State-dict names of time (frame) embeddings: TimeSformer's ``time_embed``, HF's
``time_embeddings``."""
POSITION_KEY = re.compile(r"(^|\.)pos(ition)?_embed(dings?)?(\.weight)?$")
"""State-dict names of position embeddings (``position_embeddings``, ``position_embedding.weight``,
``pos_embed``)."""
PATCH_ATTRIBUTES = ("patch_embeddings", "patch_embedding", "patch_embed")
"""A module holding position embeddings of patches has one of these beside them."""


class Resized(NamedTuple):
    """A saved tensor resized to the model's shape, and how."""

    tensor: Tensor
    how: str


def interpolate_time_positions(saved: Tensor, length: int) -> Tensor:
    """Resize time embeddings, (1, T, D) or (T, D), to ``length`` positions (nearest)."""
    rows = saved.reshape(-1, saved.shape[-1]).T.unsqueeze(0).float()  # (1, D, T)
    resized = F.interpolate(rows, size=length, mode="nearest")[0].T.to(saved.dtype)
    return resized.reshape(*saved.shape[:-2], length, saved.shape[-1])


def interpolate_grid_positions(saved: Tensor, prefix: int, side: int) -> Tensor:
    """Resize position embeddings of a square patch grid (bicubic), keeping the prefix tokens.

    Args:
        saved: (1, prefix + S*S, D) or (prefix + S*S, D).
        prefix: leading tokens that are not patches ([CLS], distillation).
        side: the new grid side S'.

    Returns:
        (1, prefix + S'*S', D) or (prefix + S'*S', D), as ``saved``.
    """
    tokens = saved.reshape(-1, saved.shape[-1])
    old = math.isqrt(tokens.shape[0] - prefix)
    grid = tokens[prefix:].T.reshape(1, -1, old, old).float()  # (1, D, S, S)
    grid = F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
    patches = grid.reshape(tokens.shape[1], side * side).T.to(saved.dtype)
    resized = torch.cat([tokens[:prefix], patches])
    return resized.reshape(*saved.shape[:-2], *resized.shape)


def _grid_prefix(old: int, new: int) -> int | None:
    """Prefix tokens (0-2) after which both lengths are square grids, or ``None``."""
    for prefix in range(3):
        sides = [math.isqrt(n - prefix) if n - prefix > 0 else 0 for n in (old, new)]
        if all(s > 0 and s * s == n - prefix for s, n in zip(sides, (old, new), strict=True)):
            return prefix
    return None


def _only_token_axis_differs(saved: Tensor, shape: torch.Size) -> bool:
    return (
        saved.ndim == len(shape)
        and saved.ndim in (2, 3)
        and saved.shape[-1] == shape[-1]
        and saved.shape[:-2] == shape[:-2]
    )


def resize_position_embedding(
    key: str, saved: Tensor, shape: torch.Size, owners: list[nn.Module]
) -> Resized | None:
    """``saved`` resized to ``shape`` when ``key`` names time or patch-position embeddings.

    Args:
        key: the state-dict name in the model.
        saved: the checkpoint's tensor.
        shape: the model's shape for it.
        owners: the modules holding the tensor, innermost first (a patch grid is recognised by
            a patch embedding beside the positions).

    Returns:
        The resized tensor and how, or ``None`` when this is not such an embedding or its
        shape change has no known meaning.
    """
    if not _only_token_axis_differs(saved, shape):
        return None
    old, new = saved.shape[-2], shape[-2]
    if TIME_KEY.search(key):
        how = f"time embeddings interpolated (nearest) from {old} to {new} frames"
        return Resized(interpolate_time_positions(saved, new), how)
    patches = any(hasattr(owner, a) for owner in owners for a in PATCH_ATTRIBUTES)
    prefix = _grid_prefix(old, new)
    if POSITION_KEY.search(key) and patches and prefix is not None:
        side_old, side_new = math.isqrt(old - prefix), math.isqrt(new - prefix)
        how = (
            f"position embeddings interpolated (bicubic) from {side_old}x{side_old} to "
            f"{side_new}x{side_new} patches"
        )
        return Resized(interpolate_grid_positions(saved, prefix, side_new), how)
    return None
