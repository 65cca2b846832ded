"""What the runner does differently when Accelerate shards the model with FSDP2.

Accelerate selects FSDP from its own configuration (``accelerate launch --config_file``
exports ``ACCELERATE_USE_FSDP=true`` and the ``FSDP_*`` variables); the runner adapts:

- FSDP2 (``fully_shard``) refuses 0-d parameters (the learnable temperatures). The modules that
  hold one are left out of sharding (`replicate_scalar_parameters`): they stay ordinary,
  replicated tensors, and `average_replicated_gradients` averages their gradients over ranks
  once per backward pass, as DDP would.
- Checkpoints hold the full weights and the full optimizer state in the same format as without
  FSDP: `full_model_state` and `full_optimizer_state` gather them from the shards, and
  `load_full_model_state` and `load_full_optimizer_state` cut every rank's shard out of them.
  A checkpoint therefore resumes with or without FSDP, and ``modaloom eval`` reads it as is.

FSDP version 1 (``FullyShardedDataParallel``, flat parameters) and DeepSpeed are refused with a
message.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, distribute_tensor

from modaloom.core.errors import CheckpointError, ModaloomError

log = logging.getLogger(__name__)

__all__ = [
    "average_replicated_gradients",
    "check_strategy",
    "full_model_state",
    "full_optimizer_state",
    "is_fsdp",
    "load_full_model_state",
    "load_full_optimizer_state",
    "replicate_scalar_parameters",
]


def is_fsdp(accelerator: Accelerator) -> bool:
    """Whether Accelerate shards the model with FSDP."""
    return accelerator.distributed_type == DistributedType.FSDP


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def check_strategy(accelerator: Accelerator) -> None:
    """Refuse the FSDP settings modaloom does not handle, and warn (main process) when
    Accelerate's configuration asks for FSDP or DeepSpeed but Accelerate did not use it:
    Accelerate 1.x enables both only with an accelerator (CUDA, XPU, ...); on CPU processes
    (gloo) it falls back to plain data parallelism without a word.

    Raises:
        ModaloomError: DeepSpeed, FSDP version 1, or FSDP2 with CPU-RAM-efficient loading.
    """
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ModaloomError(
            "DeepSpeed is not supported: modaloom's checkpoints would hold only one process's "
            "share of the ZeRO optimizer state (and no weights under ZeRO-3), and DeepSpeed clips "
            "gradients by its own config instead of train.max_grad_norm; use FSDP "
            "(fsdp_version: 2, see docs/distributed.md)"
        )
    if is_fsdp(accelerator) and not accelerator.is_fsdp2:
        raise ModaloomError(
            "FSDP version 1 is not supported (its flat parameters are not handled by modaloom's "
            "checkpoints); set fsdp_version: 2 in the Accelerate config (FSDP_VERSION=2)"
        )
    if is_fsdp(accelerator) and accelerator.state.fsdp_plugin.cpu_ram_efficient_loading:
        raise ModaloomError(
            "fsdp_cpu_ram_efficient_loading is not supported: modaloom builds the whole model in "
            "every process; set it to false in the Accelerate config "
            "(FSDP_CPU_RAM_EFFICIENT_LOADING=false)"
        )
    wanted = {"FSDP": "ACCELERATE_USE_FSDP", "DEEPSPEED": "ACCELERATE_USE_DEEPSPEED"}
    for kind, variable in wanted.items():
        if not accelerator.is_main_process:
            break
        if _env_flag(variable) and accelerator.distributed_type != DistributedType[kind]:
            log.warning(
                "%s=true but Accelerate chose %s (it enables %s only with an accelerator and "
                "a distributed launch); training runs without %s",
                variable,
                accelerator.distributed_type.value,
                kind,
                kind,
            )


def replicate_scalar_parameters(accelerator: Accelerator, model: nn.Module) -> list[nn.Parameter]:
    """Under FSDP2, keep the modules owning 0-d parameters out of ``fully_shard``.

    Call it before ``accelerator.prepare``. The modules join the plugin's ``ignored_modules``
    (a regular expression there is resolved to modules first).

    Returns:
        The parameters of those modules, whose gradients FSDP2 will not reduce: pass them to
        `average_replicated_gradients`. Empty unless FSDP2 is in use.
    """
    if not (is_fsdp(accelerator) and accelerator.is_fsdp2):
        return []
    owners = [
        module
        for module in model.modules()
        if any(p.ndim == 0 for p in module.parameters(recurse=False))
    ]
    if not owners:
        return []
    plugin = accelerator.state.fsdp_plugin
    ignored = plugin.ignored_modules
    if isinstance(ignored, str):
        ignored = [m for name, m in model.named_modules() if re.fullmatch(ignored, name)]
    known = list(ignored or [])
    plugin.ignored_modules = known + [m for m in owners if all(m is not k for k in known)]
    params = {id(p): p for m in owners for p in m.parameters()}
    log.info("FSDP2: %d module(s) with 0-d parameters stay replicated", len(owners))
    return list(params.values())


def _average(params: Sequence[nn.Parameter]) -> None:
    """All-reduce the gradients of ``params`` to their mean; a gradient missing on every rank
    stays ``None`` (as DDP leaves a parameter no rank used), missing on some counts as zero.
    """
    device = params[0].device
    values = [
        p.grad.detach().reshape(()).float()
        if p.grad is not None
        else torch.zeros((), device=device)
        for p in params
    ]
    present = [torch.tensor(float(p.grad is not None), device=device) for p in params]
    packed = torch.stack(values + present)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    world, count = dist.get_world_size(), len(params)
    for index, p in enumerate(params):
        if packed[count + index] > 0:
            p.grad = (packed[index] / world).to(p.dtype).reshape(p.shape)


def average_replicated_gradients(model: nn.Module, params: Sequence[nn.Parameter]) -> None:
    """Average the gradients of the replicated single-element ``params`` at the end of every
    backward pass.

    A hook on the model's loss queues the reduction when the backward pass starts, so every
    rank runs it exactly once per backward, whether or not its batch reached the parameters.
    Accumulating micro-batches is fine: the mean of (mean so far + new local gradient) is the
    mean so far plus the mean of the new gradients.

    Raises:
        ValueError: a parameter has more than one element.
    """
    if not params:
        return
    if any(p.numel() != 1 for p in params):
        raise ValueError("only single-element parameters can be averaged this way")
    engine = torch.autograd.Variable._execution_engine  # type: ignore[attr-defined]

    def on_loss_gradient(grad: Tensor) -> Tensor:
        engine.queue_callback(lambda: _average(params))
        return grad

    def on_output(module: nn.Module, args: Any, output: Any) -> None:
        loss = output[0]
        if isinstance(loss, Tensor) and loss.requires_grad:
            loss.register_hook(on_loss_gradient)

    model.register_forward_hook(on_output)


def _full(value: Any) -> Any:
    """A DTensor gathered into a CPU tensor (a collective); anything else as it is."""
    return value.full_tensor().cpu() if isinstance(value, DTensor) else value


def _shard_like(value: Any, target: Any) -> Any:
    """``value`` (full) cut to this rank's shard of ``target`` without communication."""
    if isinstance(target, DTensor) and isinstance(value, Tensor):
        local = value.to(device=target.device, dtype=target.dtype)
        return distribute_tensor(local, target.device_mesh, target.placements, src_data_rank=None)
    return value


def full_model_state(accelerator: Accelerator, model: nn.Module) -> dict[str, Tensor]:
    """Unsharded weights on the CPU of the main process (empty elsewhere); every rank calls it."""
    state: dict[str, Tensor] = accelerator.get_state_dict(model)
    return state if accelerator.is_main_process else {}


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every sharded tensor gathered, in the format a plain
    optimizer writes (states keyed by parameter position); every rank calls it.
    """
    packed = _inner(optimizer).state_dict()
    state = {
        index: {key: _full(value) for key, value in packed["state"][index].items()}
        for index in sorted(packed["state"])  # the same gather order on every rank
    }
    return {"state": state, "param_groups": packed["param_groups"]}


def load_full_model_state(model: nn.Module, weights: dict[str, Tensor], source: str) -> None:
    """Load full weights (every rank passes the same ones) into this rank's shards, strictly.

    Raises:
        CheckpointError: listing missing, unexpected or mis-shaped entries.
    """
    local = model.state_dict()
    lines = [f"missing: {name}" for name in local if name not in weights]
    lines += [f"unexpected: {name}" for name in weights if name not in local]
    lines += [
        f"size mismatch for {name}: checkpoint {tuple(t.shape)}, model {tuple(local[name].shape)}"
        for name, t in weights.items()
        if name in local and t.shape != local[name].shape
    ]
    if lines:
        raise CheckpointError(
            f"checkpoint {source} does not match this model (was it made by another spec?):\n  "
            + "\n  ".join(lines[:20])
            + (f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else "")
        )
    model.load_state_dict({name: _shard_like(weights[name], t) for name, t in local.items()})


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full optimizer state (every rank passes the same one) into this rank's shards.

    A state tensor shaped like its parameter is cut like the parameter; the others (AdamW's
    ``step``) are loaded as they are.
    """
    inner = _inner(optimizer)
    params = [p for group in inner.param_groups for p in group["params"]]
    sharded = {
        index: {
            key: _shard_like(value, params[index])
            if isinstance(value, Tensor) and value.shape == params[index].shape
            else value
            for key, value in entry.items()
        }
        for index, entry in state["state"].items()
    }
    inner.load_state_dict({"state": sharded, "param_groups": state["param_groups"]})


def _inner(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside Accelerate's wrapper."""
    inner = getattr(optimizer, "optimizer", optimizer)
    assert isinstance(inner, torch.optim.Optimizer)
    return inner
