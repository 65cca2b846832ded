"""Loss helpers several objectives share: soft-target cross-entropy, label equality under the
"negative means none" convention, and zeros and means that keep the autograd graph.

The contrastive objectives (`contrastive`, `queue_contrastive`) build on the first two; every
objective returns `zero_loss_like` for a step where it has nothing to score, so the total loss
still reaches each of its parameters (with a zero gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["label_equality", "masked_mean", "soft_cross_entropy", "zero_loss_like"]


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy against soft targets, per row.

    Args:
        logits: (B, M).
        targets: (B, M), rows summing to one.

    Returns:
        (B,) ``-sum_j targets[i, j] * log_softmax(logits[i])[j]``.
    """
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1)


def label_equality(rows: Tensor, cols: Tensor) -> Tensor:
    """Which rows and columns share a label, where a negative label (caption pair) equals nothing.

    Args:
        rows: (R,) integer labels or ids.
        cols: (C,) integer labels or ids.

    Returns:
        (R, C) bool.
    """
    return (rows[:, None] == cols[None, :]) & (rows[:, None] >= 0)


def zero_loss_like(*tensors: Tensor) -> Tensor:
    """A scalar zero connected to the graph of ``tensors`` (their gradient is zero).

    Built from empty slices, so it stays exactly zero and finite even if the tensors are not.
    """
    if not tensors:
        raise ValueError("zero_loss_like needs at least one tensor")
    return torch.stack([x.reshape(-1)[:0].sum() for x in tensors]).sum()


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask`` is True; a zero that keeps the graph when none is.

    Args:
        values: (B,) per-sample losses.
        mask: (B,) bool.

    Returns:
        Scalar.
    """
    kept = torch.where(mask, values, torch.zeros_like(values))
    return kept.sum() / mask.sum().clamp(min=1)


def similarity_contrastive_loss(similarity: Tensor, temperature: float | Tensor) -> Tensor:
    """Symmetric InfoNCE (SPEC B1) over a precomputed (B, B) score matrix, pairs on the diagonal.

    `contrastive_loss` without labels is this over ``a @ b.T``; MGA's scores are not a dot
    product of two feature matrices, so it calls this directly.

    Args:
        similarity: (B, B) scores of row i against column j.
        temperature: tau; logits are ``similarity / tau``.

    Returns:
        Scalar, the mean of the row-wise and column-wise cross-entropies.
    """
    logits = similarity / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
