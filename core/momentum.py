"""Momentum (EMA) copies of modules and ring-buffer feature queues, written once.

Shared by ITC with a momentum queue and UniVLC (SPEC B2/B3), COTS's instance and task-level
losses (B2/B9) and AMF (B10). Both are ``nn.Module`` s whose state lives in parameters and
registered buffers, so a checkpoint of the model holds the momentum weights and the queues and
a resumed run continues with them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modaloom.core.distributed import gather_no_grad

__all__ = ["FeatureQueue", "MomentumCopy", "momentum_copies_of"]

_RESERVED = frozenset({"ids", "labels", "ptr", "filled"})


def _frozen_copy(module: nn.Module) -> nn.Module:
    clone = copy.deepcopy(module)
    clone.requires_grad_(False)
    return clone


class MomentumCopy(nn.Module):
    """EMA copies of a set of named modules: ``theta_hat <- m * theta_hat + (1 - m) * theta``.

    The copies start equal to the online modules and never require gradient. Buffers (e.g.
    batch-norm statistics) are copied from the online module on every update.

    Args:
        online: the modules to follow, by name (e.g. ``{"vision": ..., "vision_proj": ...}``).
    """

    def __init__(self, online: Mapping[str, nn.Module]) -> None:
        super().__init__()
        if not online:
            raise ValueError("MomentumCopy needs at least one module to follow")
        self.copies = nn.ModuleDict({name: _frozen_copy(m) for name, m in online.items()})
        # the online modules as given: a plain dict, so neither submodules nor saved
        self.followed: dict[str, nn.Module] = dict(online)

    @torch.no_grad()
    def reset(self, names: Iterable[str]) -> None:
        """Copy the online weights and buffers into the named copies (an update with m = 0),
        as BLIP and OmniVL initialise their momentum encoders."""
        for name in names:
            self.copies[name].load_state_dict(self.followed[name].state_dict())

    def __getitem__(self, name: str) -> nn.Module:
        """The momentum copy of the module registered as ``name``."""
        return self.copies[name]

    @torch.no_grad()
    def update(self, online: Mapping[str, nn.Module], momentum: float) -> None:
        """Move every copy towards its online module.

        Args:
            online: the same names as at construction, mapped to the (unwrapped) online modules.
            momentum: m in [0, 1]; 1 keeps the copies, 0 copies the online weights.

        Raises:
            ValueError: ``momentum`` is out of range, or names or parameters differ.
        """
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
        if set(online) != set(self.copies):
            raise ValueError(
                f"MomentumCopy follows {sorted(self.copies)} but update() got {sorted(online)}"
            )
        for name, module in online.items():
            target = self.copies[name]
            hat = dict(target.named_parameters())
            new = dict(module.named_parameters())
            if hat.keys() != new.keys():
                raise ValueError(f"parameters of {name!r} differ from its momentum copy")
            keys = list(hat)
            if keys:
                hat_params = [hat[k].data for k in keys]
                new_params = [new[k].detach().to(hat[k].dtype) for k in keys]
                torch._foreach_lerp_(hat_params, new_params, 1.0 - momentum)
            hat_buffers = dict(target.named_buffers())
            for key, buffer in module.named_buffers():
                hat_buffers[key].copy_(buffer)


class FeatureQueue(nn.Module):
    """Ring buffers of features with their sample ids and class labels (SPEC B2, B3, B10).

    Every named queue holds ``size`` rows; row ``j`` of every queue, of ``ids`` and of
    ``labels`` belongs to the same enqueued sample, so paired queues (COTS's Q^v and Q^l) stay
    aligned. Feature queues start as random L2-normalised vectors (as BLIP does), ids and labels
    as -1 (no id, no label), and ``filled`` counts the real rows written so far, saturating at
    ``size``; AMF and the KL term should not trust the queue before it is full.

    Args:
        size: K, rows per queue.
        dims: feature dimension D of each queue, by name (valid identifiers).
        generator: random source for the initial vectors. Under DDP every rank must start from
            the same queue; DDP broadcasts rank 0's buffers when it wraps the model.
    """

    ids: Tensor
    labels: Tensor
    ptr: Tensor
    filled: Tensor

    def __init__(
        self, size: int, dims: Mapping[str, int], generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        if size <= 0:
            raise ValueError(f"queue size must be positive, got {size}")
        bad = [n for n in dims if not n.isidentifier() or n in _RESERVED]
        if not dims or bad:
            raise ValueError(
                f"queue names must be identifiers other than {sorted(_RESERVED)}; got {list(dims)}"
            )
        self.size = size
        self.names = tuple(dims)
        for name, dim in dims.items():
            init = F.normalize(torch.randn(size, dim, generator=generator), dim=1)
            self.register_buffer(f"{name}_queue", init)
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def _queue(self, name: str) -> Tensor:
        if name not in self.names:
            raise KeyError(f"no queue named {name!r}; queues: {list(self.names)}")
        buffer = getattr(self, f"{name}_queue")
        assert isinstance(buffer, Tensor)
        return buffer

    def features(self, name: str) -> Tensor:
        """A detached copy of the queue ``name``, (K, D)."""
        return self._queue(name).detach().clone()

    def queued_ids(self) -> Tensor:
        """A copy of the sample ids, (K,) long, -1 where none was given or nothing written."""
        return self.ids.clone()

    def queued_labels(self) -> Tensor:
        """A copy of the class labels, (K,) long, -1 where none was given or nothing written."""
        return self.labels.clone()

    def filled_mask(self) -> Tensor:
        """Which rows hold real features rather than the random initialisation, (K,) bool."""
        return torch.arange(self.size, device=self.filled.device) < self.filled

    @property
    def is_full(self) -> bool:
        """Whether every row holds a real feature (synchronises with the device)."""
        return bool(self.filled >= self.size)

    @torch.no_grad()
    def enqueue(
        self,
        features: Mapping[str, Tensor],
        ids: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> None:
        """Push the global batch (gathered over ranks here) into every queue, oldest out first.

        Call it after the loss. Any batch size works: the write wraps around the ring, and a
        global batch larger than K keeps only its last K rows.

        Args:
            features: one (B, D) tensor per queue name; all names must be given.
            ids: (B,) sample ids, or ``None`` to write -1.
            labels: (B,) class labels, or ``None`` to write -1.

        Raises:
            ValueError: a queue is missing or shapes disagree.
        """
        if set(features) != set(self.names):
            raise ValueError(f"enqueue needs features for {list(self.names)}, got {list(features)}")
        gathered = {name: gather_no_grad(x) for name, x in features.items()}
        n = next(iter(gathered.values())).shape[0]
        extra = {"ids": ids, "labels": labels}
        rows = {k: gather_no_grad(v) if v is not None else None for k, v in extra.items()}
        for name, x in gathered.items():
            if x.ndim != 2 or x.shape != (n, self._queue(name).shape[1]):
                raise ValueError(
                    f"queue {name!r} expects (B, {self._queue(name).shape[1]}) "
                    f"with one B for all queues, got {tuple(x.shape)}"
                )
        for key, value in rows.items():
            if value is not None and value.shape != (n,):
                raise ValueError(f"{key} must have shape ({n},), got {tuple(value.shape)}")
        if n == 0:
            return
        keep = min(n, self.size)
        start = self.ptr + (n - keep)
        index = (start + torch.arange(keep, device=self.ptr.device)) % self.size
        for name, x in gathered.items():
            buffer = self._queue(name)
            buffer.index_copy_(0, index.to(buffer.device), x[n - keep :].to(buffer))
        for key, value in rows.items():
            buffer = getattr(self, key)
            new = (
                value[n - keep :].to(buffer) if value is not None else buffer.new_full((keep,), -1)
            )
            buffer.index_copy_(0, index.to(buffer.device), new)
        self.ptr.copy_((self.ptr + n) % self.size)
        self.filled.copy_((self.filled + n).clamp(max=self.size))

    def resized_state(self, saved: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """This queue's state holding the newest rows of a saved queue of another size.

        The saved queue's real rows (``filled`` of them, the newest just before ``ptr``) are
        written oldest first from row 0, as many as fit (the newest kept); the rows left over
        keep this queue's initial values, and ``ptr`` / ``filled`` follow. The ids and labels
        move with their rows.

        Args:
            saved: the saved queue's buffers by name (``a_queue``, ``ids``, ``labels``,
                ``ptr``, ``filled``).

        Returns:
            Every buffer of this queue, by name, with this queue's shapes.
        """
        old_size = int(saved["ids"].shape[0])
        count = min(int(saved["filled"]), old_size, self.size)
        newest = (int(saved["ptr"]) - count + torch.arange(count)) % old_size  # oldest first
        state = {key: value.detach().clone() for key, value in self.state_dict().items()}
        for key in [f"{name}_queue" for name in self.names] + ["ids", "labels"]:
            state[key][:count] = saved[key][newest].to(state[key])
        state["ptr"].fill_(count % self.size)
        state["filled"].fill_(count)
        return state


def momentum_copies_of(model: nn.Module, online: nn.Module) -> list[tuple[MomentumCopy, str]]:
    """Every momentum copy in ``model`` that follows the module ``online``: (owner, name)."""
    return [
        (module, name)
        for module in model.modules()
        if isinstance(module, MomentumCopy)
        for name, followed in module.followed.items()
        if followed is online
    ]
