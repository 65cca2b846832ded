"""Learning-rate schedules: constant_then_linear (COTS) holds the peak, then decays."""

from __future__ import annotations

import pytest
import torch

from modaloom.core.errors import SpecError
from modaloom.core.optim import lr_factor, make_scheduler
from modaloom.core.registry import Registry
from modaloom.core.spec import load_spec
from modaloom.core.spec_models import SchedulerSpec


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
