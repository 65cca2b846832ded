"""AdamW with decay only on matrices, and warm-up + cosine/linear/constant/constant-then-linear
schedules."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from modaloom.core.spec_models import OptimizerSpec, SchedulerSpec


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Two AdamW groups: parameters with two or more dimensions decay, the others do not.

    Shared parameters appear once; frozen ones are left out.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for parameter in model.parameters():
        if not parameter.requires_grad or id(parameter) in seen:
            continue
        seen.add(id(parameter))
        (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, spec: OptimizerSpec) -> torch.optim.AdamW:
    """AdamW over `parameter_groups`, one fused-per-group (``foreach``) update.

    ``foreach=True`` updates all tensors of a group at once instead of one by one (the step of
    a small model is dominated by per-tensor overhead otherwise); the values are the same.
    """
    return torch.optim.AdamW(
        parameter_groups(model, spec.weight_decay),
        lr=spec.lr,
        betas=spec.betas,
        eps=spec.eps,
        foreach=True,
    )


def lr_factor(step: int, total: int, spec: SchedulerSpec) -> float:
    """Multiplier of the peak learning rate after ``step`` optimizer steps.

    Linear warm-up to 1 over ``warmup_steps``; then ``constant`` stays at 1, ``cosine`` and
    ``linear`` decay to ``min_lr_ratio`` at ``total``, and ``constant_then_linear`` stays at 1
    for ``hold_steps`` more steps before decaying linearly to ``min_lr_ratio`` at ``total``.
    """
    if step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    if spec.type == "constant":
        return 1.0
    start = spec.warmup_steps + (spec.hold_steps if spec.type == "constant_then_linear" else 0)
    if step < start:
        return 1.0
    span = max(1, total - start)
    progress = min(1.0, (step - start) / span)
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if spec.type == "cosine" else 1.0 - progress
    return spec.min_lr_ratio + (1.0 - spec.min_lr_ratio) * shape


def make_scheduler(optimizer: torch.optim.Optimizer, total: int, spec: SchedulerSpec) -> LambdaLR:
    """A `LambdaLR` following `lr_factor` over ``total`` optimizer steps."""
    return LambdaLR(optimizer, lambda step: lr_factor(step, total, spec))
