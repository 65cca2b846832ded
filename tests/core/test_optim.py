"""Learning-rate schedules: constant_then_linear (COTS) holds the peak, then decays."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from modaloom.core.errors import SpecError
from modaloom.core.optim import lr_factor, make_optimizer, make_scheduler, parameter_groups
from modaloom.core.registry import Registry
from modaloom.core.spec import load_spec
from modaloom.core.spec_models import OptimizerSpec, SchedulerSpec


def test_constant_then_linear_holds_then_decays_to_min_lr() -> None:
    spec = SchedulerSpec(
        type="constant_then_linear", warmup_steps=2, hold_steps=3, min_lr_ratio=0.1
    )
    factors = [lr_factor(step, 10, spec) for step in range(11)]
    expected = [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.82, 0.64, 0.46, 0.28, 0.1]
    assert factors == pytest.approx(expected)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    scheduler = make_scheduler(optimizer, 10, spec)
    seen = []
    for _ in range(10):
        seen.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([1e-3 * f for f in expected[:10]])


def test_hold_steps_need_constant_then_linear(registry: Registry) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec("clip-tiny", ["train.scheduler.hold_steps=3"], registry)
    assert str(caught.value) == (
        "clip-tiny is invalid (1 problem):\n  train.scheduler: hold_steps applies to type "
        "constant_then_linear, not cosine; set type: constant_then_linear or remove hold_steps"
    )


def test_adamw_updates_each_group_at_once_with_the_per_tensor_values() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 4))
    reference = copy.deepcopy(model)
    spec = OptimizerSpec(lr=1e-3, weight_decay=0.02)
    optimizer = make_optimizer(model, spec)
    assert all(group["foreach"] for group in optimizer.param_groups)
    per_tensor = torch.optim.AdamW(
        parameter_groups(reference, 0.02), lr=1e-3, betas=spec.betas, eps=spec.eps, foreach=False
    )
    for _ in range(10):
        inputs = torch.randn(8, 16)
        for net, opt in ((model, optimizer), (reference, per_tensor)):
            opt.zero_grad(set_to_none=True)
            net(inputs).pow(2).mean().backward()
            opt.step()
    for got, want in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(got, want)
