"""The runner's optimizer step, through Accelerate's wrappers only where they do something.

`AcceleratedOptimizer.step` looks up the optional ``lomo_optim`` package twice per call
(`importlib.util.find_spec`, a search of ``sys.path``), its ``zero_grad`` reads the optimizer's
signature, and `Accelerator.clip_grad_norm_` parses torch's version and scans every parameter
for DTensors: together about 0.5 ms of a 16 ms clip-tiny step on 2 CPU cores
(``benchmarks/runner_overhead.py``). With no gradient scaler (fp32, bf16) and no FSDP, DeepSpeed
or XLA, on a step whose gradients are synchronised, those wrappers only call the torch
optimizer's ``step`` and ``zero_grad`` and ``torch.nn.utils.clip_grad_norm_``; `OptimizerStep`
then calls these directly, and Accelerate's wrappers otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.utils import DistributedType

WRAPPER_NEEDED = {DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.XLA}
"""Distributed types whose clipping or stepping Accelerate does its own way."""


class OptimizerStep:
    """Clip the gradients, step the optimizer and the scheduler, and zero the gradients."""

    def __init__(
        self,
        accelerator: Accelerator,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> None:
        """``optimizer`` as `Accelerator.prepare` returned it; ``scheduler`` not prepared."""
        self.accelerator, self.scheduler = accelerator, scheduler
        self.direct, self.optimizer = False, optimizer
        plain = accelerator.scaler is None and accelerator.distributed_type not in WRAPPER_NEEDED
        if plain and isinstance(optimizer, AcceleratedOptimizer):
            self.direct, self.optimizer = True, optimizer.optimizer

    def __call__(
        self, parameters: Iterable[torch.nn.Parameter], max_norm: float | None
    ) -> torch.Tensor:
        """One optimizer step; call it when ``accelerator.sync_gradients``.

        Args:
            parameters: the model's parameters.
            max_norm: gradient clipping threshold; ``None`` measures the norm only.

        Returns:
            () total gradient norm before clipping.
        """
        limit = math.inf if max_norm is None else max_norm
        if self.direct:
            norm = torch.nn.utils.clip_grad_norm_(parameters, limit)
        else:
            norm = self.accelerator.clip_grad_norm_(parameters, limit)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm
