"""Checkpoints: safetensors weights plus training state, written to a temporary directory and
renamed, so a directory named ``step-N`` is always complete.

Layout of ``OUTPUT/checkpoints/step-00000050/``::

    model.safetensors     weights (shared tensors stored once), momentum copies and queues included;
                          full (unsharded) weights under FSDP too
    state.pt              optimizer, scheduler, step, stage, data position (torch.save); under
                          FSDP the full optimizer state, in the same format
    rng-rank{r}.pt        python/numpy/torch RNG states of each rank
    meta.json             step, data position, spec, world size, and the size and SHA-256 of
                          every other file (``files``); written last

`checkpoint_problem` checks a checkpoint against its ``meta.json``; `newest_intact` picks the
newest checkpoint that passes, so a damaged one is skipped rather than loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import struct
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_file, save_model
from torch import Tensor, nn

from modaloom.core.errors import CheckpointError

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d+)$")
MODEL_FILE, STATE_FILE, META_FILE = "model.safetensors", "state.pt", "meta.json"


def checkpoint_name(step: int) -> str:
    """Directory name of the checkpoint after ``step`` optimizer steps."""
    return f"step-{step:08d}"


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temporary directories ignored)."""
    found = step_directories(root)
    return [p for p in found if (p / META_FILE).is_file() and (p / MODEL_FILE).is_file()]


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint, or ``None``."""
    found = complete_checkpoints(root)
    return found[-1] if found else None


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys).copy()), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    random.setstate(_as_tuple(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


@dataclass
class FullWeights:
    """Weights gathered from a sharded model, with the names that share one tensor.

    Attributes:
        tensors: every state-dict entry, unsharded, by name.
        shared: groups of names that are one tensor in the model (tied weights), from
            `shared_names`; the file stores each group once, as ``save_model`` does.
    """

    tensors: dict[str, Tensor]
    shared: Sequence[Sequence[str]] = field(default_factory=list)


def shared_names(model: nn.Module) -> list[list[str]]:
    """Groups (sorted, two names or more) of state-dict names that are the same tensor."""
    groups: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(name)
    return sorted(sorted(names) for names in groups.values() if len(names) > 1)


def save_weights(weights: FullWeights, path: Path) -> None:
    """Write ``weights`` in ``safetensors.torch.save_model``'s format: of each shared group the
    first name (sorted) is stored, and the metadata maps every dropped name to it.
    """
    tensors = dict(weights.tensors)
    metadata: dict[str, str] = {}
    for group in weights.shared:
        present = [name for name in group if name in tensors]
        for name in present[1:]:
            metadata[name] = present[0]
            del tensors[name]
    save_file(
        {name: t.contiguous() for name, t in tensors.items()},
        str(path),
        metadata=metadata or None,
    )


def read_weights(directory: Path) -> dict[str, Tensor]:
    """Every entry of ``model.safetensors``, sorted by name, with the names ``save_model``
    dropped as duplicates restored from the file's metadata (they share the kept tensor).
    """
    tensors: dict[str, Tensor] = {}
    with safe_open(str(directory / MODEL_FILE), framework="pt") as handle:
        for name in handle.keys():  # noqa: SIM118  (safe_open is not a mapping)
            tensors[name] = handle.get_tensor(name)
        dropped = handle.metadata() or {}
    for name, kept in dropped.items():
        if kept in tensors and name not in tensors:
            tensors[name] = tensors[kept]
    return dict(sorted(tensors.items()))


def staging_dir(root: Path, step: int) -> Path:
    """Where a checkpoint is assembled before the rename (ignored by `--resume`)."""
    return root / f".tmp-{checkpoint_name(step)}"


def write_checkpoint(
    root: Path,
    step: int,
    model: nn.Module | FullWeights,
    state: Mapping[str, Any],
    meta: Mapping[str, Any],
) -> Path:
    """Write weights, state and meta into the staging directory and rename it (main process).

    ``model`` is the unwrapped model, or under FSDP the weights gathered from its shards.

    Raises:
        CheckpointError: the directory cannot be written (permissions, full disk).
    """
    final = root / checkpoint_name(step)
    tmp = staging_dir(root, step)
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        if isinstance(model, FullWeights):
            save_weights(model, tmp / MODEL_FILE)
        else:
            save_model(model, str(tmp / MODEL_FILE))
        torch.save(state, tmp / STATE_FILE)
        meta = {**meta, "files": file_records(tmp)}  # every rank's RNG file is already there
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"cannot write checkpoint to {final}: {exc.strerror or exc}; "
            "free disk space or pass another --output"
        ) from exc
    return final


def write_rng(root: Path, step: int, rank: int) -> None:
    """Each rank stores its RNG states in the staging directory, before the main rank renames it.

    Raises:
        CheckpointError: the directory cannot be written.
    """
    tmp = staging_dir(root, step)
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
    except OSError as exc:
        raise CheckpointError(
            f"cannot write checkpoint to {tmp}: {exc.strerror or exc}; "
            "free disk space or pass another --output"
        ) from exc


def load_weights(model: nn.Module, directory: Path) -> None:
    """Load ``model.safetensors`` strictly.

    Raises:
        CheckpointError: listing missing, unexpected or mis-shaped parameters.
    """
    path = directory / MODEL_FILE
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except RuntimeError as exc:
        shapes = "\n  ".join(
            line.strip() for line in str(exc).splitlines() if "size mismatch" in line
        )
        raise CheckpointError(
            f"checkpoint {directory} does not match this model (was it made by another spec?):\n  "
            f"{shapes or exc}"
        ) from None
    if missing or unexpected:
        lines = [f"missing: {name}" for name in missing] + [
            f"unexpected: {name}" for name in unexpected
        ]
        raise CheckpointError(
            f"checkpoint {directory} does not match this model (was it made by another spec?):\n  "
            + "\n  ".join(lines[:20])
            + (f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else "")
        )


def load_state(directory: Path, rank: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Training state and this rank's RNG state (``None`` when the rank count changed)."""
    state = torch.load(directory / STATE_FILE, weights_only=True)
    rng_path = directory / f"rng-rank{rank}.pt"
    rng = torch.load(rng_path, weights_only=True) if rng_path.is_file() else None
    return state, rng


def prune_checkpoints(root: Path, keep_last: int | None) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints."""
    if keep_last is None:
        return
    for old in complete_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------ integrity


def file_records(directory: Path) -> dict[str, dict[str, Any]]:
    """``{name: {"size": bytes, "sha256": hex}}`` of every file in ``directory`` but meta.json."""
    records = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.name != META_FILE:
            with path.open("rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
            records[path.name] = {"size": path.stat().st_size, "sha256": digest}
    return records


def read_meta(directory: Path) -> dict[str, Any]:
    """The checkpoint's meta.json.

    Raises:
        CheckpointError: it is missing, not JSON, or not a checkpoint's meta (message: the problem).
    """
    path = directory / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{META_FILE} is missing")
    try:
        meta = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{META_FILE} is not valid JSON") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        raise CheckpointError(f"{META_FILE} does not describe a checkpoint (no step)")
    files = meta.get("files")
    if files is not None and not (
        isinstance(files, dict)
        and all(isinstance(r, dict) and {"size", "sha256"} <= r.keys() for r in files.values())
    ):
        raise CheckpointError(f"{META_FILE} has an invalid `files` record")
    return meta


def required_files(meta: Mapping[str, Any], weights_only: bool) -> list[str]:
    """The files a load needs: the weights, and to resume also the state and every rank's RNG."""
    if weights_only:
        return [MODEL_FILE]
    world = meta.get("world_size")
    ranks = world if isinstance(world, int) and world > 0 else 1
    return [MODEL_FILE, STATE_FILE, *(f"rng-rank{r}.pt" for r in range(ranks))]


def _recorded_problem(directory: Path, name: str, record: Mapping[str, Any]) -> str | None:
    path = directory / name
    if not path.is_file():
        return f"{name} is missing"
    size, expected = path.stat().st_size, record["size"]
    if size != expected:
        if size == 0:
            return f"{name} is empty ({expected} bytes expected)"
        if size < expected:
            return f"{name} is truncated ({size} of {expected} bytes)"
        return f"{name} has {size} bytes, {expected} expected"
    with path.open("rb") as handle:
        if hashlib.file_digest(handle, "sha256").hexdigest() != record["sha256"]:
            return f"{name} does not match its SHA-256 in {META_FILE}"
    return None


def _unrecorded_problem(directory: Path, name: str) -> str | None:
    """Structural checks of a file of a checkpoint written before meta.json held hashes."""
    path = directory / name
    if not path.is_file():
        return f"{name} is missing"
    size = path.stat().st_size
    if size == 0:
        return f"{name} is empty"
    if name == MODEL_FILE:
        with path.open("rb") as handle:
            head = handle.read(8)
            header_size = struct.unpack("<Q", head)[0] if len(head) == 8 else size
            try:
                header = json.loads(handle.read(header_size) if header_size < size else b"")
                ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
            except (ValueError, TypeError, KeyError, IndexError, AttributeError):
                return f"{name} is not a safetensors file"
        expected = 8 + header_size + max(ends, default=0)
        if size < expected:
            return f"{name} is truncated ({size} of {expected} bytes)"
        return None
    try:
        with zipfile.ZipFile(path):  # torch.save writes a zip; its index is at the end
            return None
    except (zipfile.BadZipFile, OSError):
        return f"{name} is truncated or not a torch file"


def checkpoint_problem(directory: Path, weights_only: bool = False) -> str | None:
    """What is wrong with a checkpoint, or ``None`` when it is intact.

    Files are checked against the size and SHA-256 meta.json recorded; a checkpoint from before
    those records gets structural checks only (files present, non-empty, not truncated).

    Args:
        directory: a ``step-N`` directory.
        weights_only: check only what loading the weights needs (``modaloom.load``).
    """
    try:
        meta = read_meta(directory)
    except CheckpointError as exc:
        return str(exc)
    records = meta.get("files")
    for name in required_files(meta, weights_only):
        if records is None:
            problem = _unrecorded_problem(directory, name)
        elif name not in records:
            problem = f"{name} is not recorded in {META_FILE}"
        else:
            problem = _recorded_problem(directory, name, records[name])
        if problem is not None:
            return problem
    if records is None:
        log.info("checkpoint %s has no file hashes (older modaloom): checked structure", directory)
    elif not weights_only:
        for name, record in records.items():
            problem = _recorded_problem(directory, name, record)
            if problem is not None:
                return problem
    return None


def step_directories(root: Path) -> list[Path]:
    """Every ``step-N`` directory under ``root`` (intact or not), oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))  # type: ignore[union-attr]


def newest_intact(
    root: Path, weights_only: bool = False
) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint under ``root`` that `checkpoint_problem` passes.

    Returns:
        (that checkpoint or ``None``, the newer damaged ones with what is wrong, newest first).
    """
    damaged: list[tuple[Path, str]] = []
    for directory in reversed(step_directories(root)):
        problem = checkpoint_problem(directory, weights_only)
        if problem is None:
            return directory, damaged
        damaged.append((directory, problem))
    return None, damaged


def describe_damage(damaged: Sequence[tuple[Path, str]]) -> str:
    """``step-N: problem; ...`` for messages."""
    return "; ".join(f"{path.name}: {problem}" for path, problem in damaged)
