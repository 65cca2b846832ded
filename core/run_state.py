"""Saving and restoring a `TrainingSession`: weights (full, also under FSDP), optimizer,
scheduler, step, data position, skipped-sample count and every rank's RNG states."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modaloom.core import checkpoint as ckpt
from modaloom.core import fsdp
from modaloom.core.compose import LoomModel
from modaloom.core.errors import CheckpointError
from modaloom.core.spec import spec_to_tree

if TYPE_CHECKING:
    from modaloom.core.runner import TrainingSession

log = logging.getLogger(__name__)


def restore(session: TrainingSession, latest: Path) -> None:
    """Load a checkpoint (verified by `checkpoint.newest_intact`) into the session.

    Raises:
        CheckpointError: it was written by another number of processes, or does not fit.
    """
    acc = session.accelerator
    saved_world = ckpt.read_meta(latest).get("world_size")
    if saved_world is not None and saved_world != acc.num_processes:
        raise CheckpointError(  # the data position and step count assume the same world
            f"checkpoint {latest} was written by {saved_world} process(es) and this run has "
            f"{acc.num_processes}; resume with {saved_world} processes "
            "(data.batch_size is per process, so the global batch would change)"
        )
    load_weights(session, latest)
    state, rng = ckpt.load_state(latest, acc.process_index)
    load_optimizer(session, state["optimizer"])
    session.scheduler.load_state_dict(state["scheduler"])
    session.step, session.data_state = int(state["step"]), dict(state["data"])
    session.skipped = int(state.get("skipped", 0))
    if rng is not None:
        ckpt.set_rng_state(rng)
    session.last_checkpoint = latest
    log.info("resumed from %s at step %d", latest, session.step)


def load_weights(session: TrainingSession, latest: Path) -> None:
    """The checkpoint's full weights, cut into this rank's shards under FSDP."""
    if fsdp.is_fsdp(session.accelerator):
        fsdp.load_full_model_state(session.model, ckpt.read_weights(latest), str(latest))
    else:
        ckpt.load_weights(session.unwrapped, latest)


def load_optimizer(session: TrainingSession, state: dict[str, Any]) -> None:
    """The checkpoint's full optimizer state, cut into this rank's shards under FSDP."""
    if fsdp.is_fsdp(session.accelerator):
        fsdp.load_full_optimizer_state(session.optimizer, state)
    else:
        session.optimizer.load_state_dict(state)


def save(session: TrainingSession) -> None:
    """Every rank writes its RNG state; the main rank writes the rest and renames.

    Under FSDP every rank first takes part in gathering the full weights and optimizer state
    onto the main process.
    """
    acc = session.accelerator
    ckpt.write_rng(session.checkpoint_root, session.step, acc.process_index)
    weights: LoomModel | ckpt.FullWeights = session.unwrapped
    optimizer: dict[str, Any] | None = None
    if fsdp.is_fsdp(acc):
        weights = ckpt.FullWeights(fsdp.full_model_state(acc, session.model), session.shared)
        optimizer = fsdp.full_optimizer_state(session.optimizer)
    acc.wait_for_everyone()
    if acc.is_main_process:
        state = {
            "optimizer": session.optimizer.state_dict() if optimizer is None else optimizer,
            "scheduler": session.scheduler.state_dict(),
            "step": session.step,
            "data": session.data_state,
            "skipped": session.skipped,
        }
        meta = {
            "step": session.step,
            "data": session.data_state,
            "spec": spec_to_tree(session.spec),
            "world_size": acc.num_processes,
        }
        ckpt.write_checkpoint(session.checkpoint_root, session.step, weights, state, meta)
        ckpt.prune_checkpoints(session.checkpoint_root, session.spec.train.keep_last)
    acc.wait_for_everyone()
    session.last_checkpoint = session.checkpoint_root / ckpt.checkpoint_name(session.step)
