"""Fine-grained (token x frame) similarity of VALOR's MGA, computed in bounded-memory blocks.

SPEC B7. Re-exported by :mod:`modaloom.objectives.functional`. `group_similarity` adds the
ablation variants of VALOR's Tab. 10 (`Scoring`): coarse (global) alignment, score-level fusion
of a side of several modalities, and mean instead of learned weights.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Scoring",
    "Side",
    "fine_grained_similarity",
    "global_features",
    "group_similarity",
    "masked_softmax",
]

Side = tuple[Tensor, Tensor, Tensor]
"""Features (B, N, C), mask (B, N) and weight logits (B, N) of one side of a group."""
Granularity = Literal["fine", "coarse"]
Fusion = Literal["feature", "score"]
Weighting = Literal["learned", "mean"]


class Scoring(NamedTuple):
    """How MGA scores a pair of sides (VALOR's defaults first).

    Attributes:
        granularity: ``fine`` (token x frame, `fine_grained_similarity`) or ``coarse``: one
            global vector per side, the weighted average of its features, L2-normalised, and
            their dot product [I: VALOR's "coarse" global alignment].
        fusion: a side of several modalities (AV) joins them as one sequence (``feature``) or
            is scored modality by modality and the scores averaged (``score``).
        weighting: the weights of tokens and frames come from their learned linear layers
            (``learned``) or are uniform over valid positions (``mean``).
        chunk_size: `fine_grained_similarity`'s block size.
    """

    granularity: Granularity = "fine"
    fusion: Fusion = "feature"
    weighting: Weighting = "learned"
    chunk_size: int | None = None


def masked_softmax(logits: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Softmax over valid positions; masked positions (and all-masked rows) get weight 0."""
    mask = mask.bool()
    filled = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    return F.softmax(filled, dim=dim) * mask


def _fine_grained_block(
    text: Tensor,
    text_mask: Tensor,
    w_t: Tensor,
    other: Tensor,
    other_mask: Tensor,
    w_x: Tensor,
    text_all_valid: bool,
    other_all_valid: bool,
) -> Tensor:
    """:func:`fine_grained_similarity` for one (bt, bx) block of the score matrix."""
    sims = torch.einsum("bic,djc->bidj", text, other)  # (bt, Nt, bx, Nx)
    # Masks are applied in place and broadcast, so the block is the only tensor of its size.
    fill = torch.finfo(sims.dtype).min
    if not text_all_valid:
        sims.masked_fill_(~text_mask[:, :, None, None], fill)
    if not other_all_valid:
        sims.masked_fill_(~other_mask[None, None, :, :], fill)
    if sims.requires_grad:  # max saves only indices for backward, so the block can be freed
        t2x, x2t = sims.max(dim=3).values, sims.max(dim=1).values
    else:  # amax is several times faster but would keep the block alive for backward
        t2x, x2t = sims.amax(dim=3), sims.amax(dim=1)
    # t2x (bt, Nt, bx): best frame for each token; x2t (bt, bx, Nx): best token for each frame.
    # Padded positions, and positions whose counterpart has no valid position at all, hold the
    # fill value: zero them so that it reaches neither the score nor the weights' gradient.
    keep_t2x = text_mask[:, :, None] & other_mask.any(dim=1)[None, None, :]
    keep_x2t = other_mask[None, :, :] & text_mask.any(dim=1)[:, None, None]
    t2x = torch.where(keep_t2x, t2x, torch.zeros_like(t2x))
    x2t = torch.where(keep_x2t, x2t, torch.zeros_like(x2t))
    s_t = torch.einsum("bid,bi->bd", t2x, w_t)
    s_x = torch.einsum("bdj,dj->bd", x2t, w_x)
    return (s_t + s_x) / 2


def fine_grained_similarity(
    text: Tensor,
    text_mask: Tensor,
    text_weight_logits: Tensor,
    other: Tensor,
    other_mask: Tensor,
    other_weight_logits: Tensor,
    chunk_size: int | None = None,
) -> Tensor:
    """VALOR's MGA token-frame similarity for every text x other pair (SPEC B7).

    ``s(T, X) = 1/2 sum_i w_t[i] max_j t_i.x_j + 1/2 sum_j w_x[j] max_i x_j.t_i`` with
    ``w = softmax(weight_logits)``; padded positions take no part in either max (a large
    negative fill, -inf in effect with finite gradients) nor in the weight softmax.

    Args:
        text: (Bt, Nt, D) L2-normalised token features.
        text_mask: (Bt, Nt) 1 for valid tokens, 0 for padding.
        text_weight_logits: (Bt, Nt) token weight logits (``e_t W_t``).
        other: (Bx, Nx, D) L2-normalised frame / clip features.
        other_mask: (Bx, Nx) 1 for valid frames.
        other_weight_logits: (Bx, Nx) frame weight logits.
        chunk_size: score blocks of at most ``chunk_size`` texts x ``chunk_size`` others at a
            time, so peak memory is about ``chunk_size**2 * Nt * Nx`` elements; ``None`` scores
            everything in one einsum.

    Returns:
        (Bt, Bx) similarities; differentiable w.r.t. features and weight logits.
    """
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive or None, got {chunk_size}")
    if text.shape[0] == 0 or other.shape[0] == 0:
        return text.new_zeros((text.shape[0], other.shape[0]))
    text_mask, other_mask = text_mask.bool(), other_mask.bool()
    w_t = masked_softmax(text_weight_logits, text_mask)
    w_x = masked_softmax(other_weight_logits, other_mask)
    text_all_valid, other_all_valid = bool(text_mask.all()), bool(other_mask.all())
    step_t = chunk_size or text.shape[0]
    step_x = chunk_size or other.shape[0]
    out: Tensor | None = None  # filled block by block: no list of blocks, no final cat
    for i in range(0, text.shape[0], step_t):
        ti = slice(i, i + step_t)
        for j in range(0, other.shape[0], step_x):
            tj = slice(j, j + step_x)
            block = _fine_grained_block(
                text[ti],
                text_mask[ti],
                w_t[ti],
                other[tj],
                other_mask[tj],
                w_x[tj],
                text_all_valid,
                other_all_valid,
            )
            if out is None:
                out = block.new_empty((text.shape[0], other.shape[0]))
            out[ti, tj] = block
    assert out is not None
    return out


def global_features(side: Side) -> Tensor:
    """(B, C): the softmax(logits)-weighted average of a side's valid features, L2-normalised."""
    features, mask, logits = side
    weights = masked_softmax(logits, mask)
    return F.normalize(torch.einsum("bnc,bn->bc", features, weights.to(features.dtype)), dim=-1)


def side_similarity(left: Side, right: Side, scoring: Scoring) -> Tensor:
    """(B_l, B_r) scores of two sides, each one sequence."""
    if scoring.weighting == "mean":
        left = (left[0], left[1], torch.zeros_like(left[2]))
        right = (right[0], right[1], torch.zeros_like(right[2]))
    if scoring.granularity == "coarse":
        return global_features(left) @ global_features(right).T
    return fine_grained_similarity(*left, *right, scoring.chunk_size)


def join(parts: list[Side]) -> Side:
    """Several sides' sequences concatenated along N (feature fusion, ``e_av = [e_v; e_a]``)."""
    if len(parts) == 1:
        return parts[0]
    return (
        torch.cat([p[0] for p in parts], dim=1),
        torch.cat([p[1] for p in parts], dim=1),
        torch.cat([p[2] for p in parts], dim=1),
    )


VALOR = Scoring()
"""VALOR's scoring: fine, feature fusion, learned weights."""


def group_similarity(left: Side, right: list[Side], scoring: Scoring = VALOR) -> Tensor:
    """(B_l, B_r) scores of ``left`` against the side made of the ``right`` parts (one per
    modality): joined (``feature`` fusion) or scored part by part and averaged (``score``)."""
    if scoring.fusion == "score" and len(right) > 1:
        return torch.stack([side_similarity(left, part, scoring) for part in right]).mean(dim=0)
    return side_similarity(left, join(right), scoring)
