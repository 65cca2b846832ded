"""`OptimizerStep` steps exactly as Accelerate's wrappers do, calling torch directly."""

from __future__ import annotations

import copy

import torch
from torch import nn

from modaloom.core.optimizer_step import OptimizerStep
from modaloom.core.runner import make_accelerator


def trained(model: nn.Module, direct: bool, steps: int = 3) -> tuple[nn.Module, list[float]]:
    """``model`` after ``steps`` clipped AdamW steps, and the gradient norms measured."""
    accelerator = make_accelerator("fp32", 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    model, optimizer = accelerator.prepare(model, optimizer)
    step = OptimizerStep(accelerator, optimizer, scheduler)
    assert step.direct
    norms = []
    for index in range(steps):
        inputs = torch.linspace(-1, 1, 12).reshape(4, 3) * (index + 1)
        with accelerator.accumulate(model):
            accelerator.backward(model(inputs).pow(2).sum())
            if direct:
                norms.append(float(step(model.parameters(), 0.5)))
            else:  # Accelerate's own wrappers, as the runner called them before
                norms.append(float(accelerator.clip_grad_norm_(model.parameters(), 0.5)))
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
    return model, norms


def test_direct_step_equals_accelerates_wrappers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    ours, our_norms = trained(copy.deepcopy(model), direct=True)
    theirs, their_norms = trained(copy.deepcopy(model), direct=False)
    assert our_norms == their_norms and all(norm > 0.5 for norm in our_norms)  # clipped
    for mine, other in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(mine, other)
        assert mine.grad is None  # zeroed (set to None) after each step
