"""Cross-rank helpers: world size and rank, and all-gathers with and without gradient.

Every helper is the identity (or the trivial answer) when ``torch.distributed`` is unavailable,
not initialised, or running a single process, so objectives call them unconditionally.

Gradient convention of :func:`gather_with_grad` (the ``torch.distributed.nn.all_gather`` /
open_clip approach): every rank computes the *same* loss ``L`` over the gathered global batch;
the backward pass sums the incoming gradient over ranks and returns this rank's slice, so the
local input receives ``world_size * dL/dx_local``. DDP then averages parameter gradients over
ranks (divides by ``world_size``), which leaves every parameter with exactly the gradient a
single process would get from ``L`` on the concatenated global batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "gather_in_order",
    "gather_no_grad",
    "gather_objects",
    "gather_padded",
    "gather_with_grad",
    "is_distributed",
    "rank",
    "world_size",
]


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank in the default group (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    """All ranks' sizes along dim 0, so that uneven last batches gather correctly."""
    size = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def _all_gather_cat(x: Tensor, sizes: list[int]) -> Tensor:
    """Concatenate every rank's ``x`` along dim 0; ranks may hold different sizes.

    Args:
        x: this rank's tensor, (n, ...).
        sizes: every rank's n, in rank order.

    Returns:
        (sum(sizes), ...), rank 0's rows first.
    """
    is_bool = x.dtype == torch.bool
    x = x.to(torch.uint8) if is_bool else x  # gloo cannot gather bool tensors
    largest = max(sizes)
    if x.shape[0] < largest:
        pad = x.new_zeros((largest - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, pad])
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x.contiguous())
    out = torch.cat([part[:n] for part, n in zip(parts, sizes)])
    return out.bool() if is_bool else out


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward all-reduces (sum) the gradient and keeps this rank's slice."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        sizes = _gather_sizes(x.shape[0], x.device)
        ctx.start = sum(sizes[: rank()])
        ctx.length = x.shape[0]
        return _all_gather_cat(x, sizes)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.start + ctx.length]


def gather_with_grad(x: Tensor) -> Tensor:
    """Gather ``x`` from every rank along dim 0, keeping the gradient of the local slice.

    See the module docstring for the gradient scale. Ranks may hold different batch sizes.

    Args:
        x: this rank's features, (B_local, ...).

    Returns:
        The global batch, (B_global, ...), in rank order; ``x`` itself when not distributed.
    """
    if world_size() == 1:
        return x
    out = _GatherWithGrad.apply(x)
    assert isinstance(out, Tensor)
    return out


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """Gather ``x`` from every rank along dim 0 without gradient (queues, ids, labels).

    Args:
        x: this rank's tensor, (B_local, ...), any dtype including bool and integers.

    Returns:
        The global batch, (B_global, ...), detached; ``x.detach()`` when not distributed.
    """
    if world_size() == 1:
        return x.detach()
    return _all_gather_cat(x.detach(), _gather_sizes(x.shape[0], x.device))


def gather_padded(x: Tensor, with_grad: bool = False) -> Tensor:
    """Gather ``x`` whose dim 1 may differ across ranks (token sequences padded per batch).

    Every rank's ``x`` is first zero-padded (False for bool) along dim 1 to the largest size
    over ranks; mask the padding with a gathered mask padded the same way.

    Args:
        x: (B_local, L_local, ...).
        with_grad: gather with `gather_with_grad` (else `gather_no_grad`).

    Returns:
        (B_global, L_max, ...); ``x`` (detached unless ``with_grad``) when not distributed.
    """
    if world_size() == 1:
        return x if with_grad else x.detach()
    width = int(gather_no_grad(torch.tensor([x.shape[1]], device=x.device)).max())
    padding = x.new_zeros((x.shape[0], width - x.shape[1], *x.shape[2:]))
    x = torch.cat([x, padding], dim=1)
    return gather_with_grad(x) if with_grad else gather_no_grad(x)


def gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value`` (any picklable object), in rank order; ``[value]`` alone.

    Tensors inside ``value`` should be on the CPU: they are pickled, sent and unpickled as is.
    """
    if world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def gather_in_order(items: list[tuple[int, Any]]) -> list[Any]:
    """Merge every rank's ``(index, value)`` pairs into one list ordered by index.

    Each index is kept once (the lowest rank's value wins), so work that two ranks both did (an
    evenly padded split, a source that is not split by rank) is not counted twice.

    Args:
        items: this rank's pairs; indices are global (e.g. a batch's position in the source).

    Returns:
        The values of all ranks, sorted by index, without duplicate indices; the same list on
        every rank.
    """
    merged: dict[int, Any] = {}
    for part in gather_objects(items):
        for index, value in part:
            merged.setdefault(index, value)
    return [merged[index] for index in sorted(merged)]
