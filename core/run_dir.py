"""Run directories: one training process at a time, no run overwritten by accident, and nothing
changed until every check has passed.

`claim` runs before anything is built. The main process takes an exclusive lock on
``OUTPUT/.modaloom.lock`` (held until the run ends; the kernel drops it when the process dies, so
a killed run never blocks ``--resume``), refuses a directory that already holds a run unless told
to resume it or to move it aside (``overwrite``), picks the newest intact checkpoint and compares
the spec with the run's spec.yaml. The writes come after the model and the checkpoint have
loaded, in `RunClaim.commit`.

On resume these spec fields may change and spec.yaml takes the new values: ``train.steps``, the
``steps`` of each stage, ``train.log_every``, ``eval_every``, ``checkpoint_every``,
``keep_last``, ``log_with``, ``tracker_config``, ``eval`` and ``data.eval_sources`` /
``eval_batch_size``. Any other difference is logged at WARNING, training uses the new values
and spec.yaml keeps the original. A resume is refused (by the loaders) when the weights do not
fit the model, the process count differs, or the data position cannot be restored.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from modaloom.core import checkpoint as ckpt
from modaloom.core.errors import CheckpointError, ModaloomError, RunDirectoryError

log = logging.getLogger(__name__)

SPEC_FILE, METRICS_FILE, CHECKPOINTS_DIR = "spec.yaml", "metrics.jsonl", "checkpoints"
ARTIFACTS_DIR = "artifacts"
"""What the processors learned (a trained tokenizer), in the run directory."""
LOCK_FILE = ".modaloom.lock"
RESUMABLE = re.compile(
    r"^(train\.(steps|stages\.\d+\.steps|log_every|eval_every|checkpoint_every|keep_last"
    r"|log_with(\..+)?|tracker_config(\..+)?)"
    r"|eval(\..+)?|data\.(eval_sources(\..+)?|eval_batch_size))$"
)
"""Spec paths a resumed run may change (spec.yaml is rewritten with the new values)."""
STALE_WAIT_S = 15.0
"""How long to wait for a lock whose holder died (forked children may hold it that long)."""

_held: set[int] = set()
_fork_hook = False


def _close_in_child() -> None:
    """A forked child (a DataLoader worker) must not keep the run's lock once its parent dies."""
    for fd in list(_held):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


class RunLock:
    """An exclusive ``flock`` on ``DIRECTORY/.modaloom.lock``, which records its holder."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or fail at once when a live process holds it.

        Raises:
            RunDirectoryError: naming the holder's pid.
        """
        global _fork_hook
        if not _fork_hook:
            os.register_at_fork(after_in_child=_close_in_child)
            _fork_hook = True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + STALE_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = read_holder(fd)
                if holder_is_dead(holder) and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                os.close(fd)
                raise RunDirectoryError(
                    f"{self.directory} is in use by another modaloom process "
                    f"({describe_holder(holder)}); wait for it to finish or pass another --output"
                ) from None
            except OSError as exc:  # a file system without locks
                os.close(fd)
                raise RunDirectoryError(
                    f"cannot lock {self.path}: {exc.strerror or exc}; pass an --output on a "
                    "local file system"
                ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
        self.fd = fd
        _held.add(fd)

    def release(self) -> None:
        """Let the next process in."""
        if self.fd is None:
            return
        _held.discard(self.fd)
        os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def read_holder(fd: int) -> dict[str, Any]:
    """``{"pid": ..., "host": ...}`` the holder wrote (it writes just after locking)."""
    for _ in range(20):
        try:
            holder = json.loads(os.pread(fd, 4096, 0))
            if isinstance(holder, dict):
                return holder
        except ValueError:
            pass
        time.sleep(0.05)
    return {}


def holder_is_dead(holder: dict[str, Any]) -> bool:
    """Whether the recorded holder is a process of this host that no longer exists."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def describe_holder(holder: dict[str, Any]) -> str:
    pid = holder.get("pid")
    if pid is None:
        return "pid unknown"
    host = holder.get("host")
    return f"pid {pid}" if host in (None, socket.gethostname()) else f"pid {pid} on {host}"


def check_writable(directory: Path) -> None:
    """Fail early, with one message, when the output directory cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise CheckpointError(
            f"cannot write to output directory {directory}: {exc.strerror or exc}; "
            "pass a writable --output"
        ) from exc


def existing_run(directory: Path) -> str | None:
    """What shows ``directory`` already holds a run, or ``None`` when it holds none."""
    steps = ckpt.step_directories(directory / CHECKPOINTS_DIR)
    if steps:
        return f"checkpoints up to {steps[-1].name}"
    metrics = directory / METRICS_FILE
    if metrics.is_file() and metrics.stat().st_size > 0:
        return f"{METRICS_FILE} but no checkpoint yet"
    return None


def free_name(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... whichever does not exist."""
    candidate, index = path, 1
    while candidate.exists():
        index += 1
        candidate = path.with_name(f"{path.name}-{index}")
    return candidate


def move_aside(directory: Path) -> Path | None:
    """Move everything in ``directory`` but the lock into ``DIRECTORY.old-<time>``.

    Returns:
        That directory, or ``None`` when there was nothing to move.
    """
    entries = [e for e in directory.iterdir() if e.name != LOCK_FILE]
    if not entries:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = free_name(directory.resolve().with_name(f"{directory.resolve().name}.old-{stamp}"))
    try:
        target.mkdir()
        for entry in entries:
            os.rename(entry, target / entry.name)
    except OSError as exc:
        raise RunDirectoryError(
            f"cannot move the run in {directory} aside to {target}: {exc.strerror or exc}"
        ) from None
    return target


def write_text_atomic(path: Path, text: str) -> None:
    """Write a temporary file beside ``path`` and rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train.stages.0.steps": 5, ...}``; an empty mapping or list is one value."""
    if isinstance(tree, dict) and tree:
        items: Any = tree.items()
    elif isinstance(tree, list) and tree:
        items = enumerate(tree)
    else:
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def spec_differences(saved: Any, new: Any) -> list[tuple[str, str]]:
    """``(path, "old -> new")`` for every leaf where two spec trees differ."""
    old, now = flatten(saved), flatten(new)

    def show(tree: dict[str, Any], path: str) -> str:
        text = json.dumps(tree[path]) if path in tree else "(absent)"
        return text if len(text) <= 40 else text[:37] + "..."

    paths = [*now, *(p for p in old if p not in now)]
    return [
        (p, f"{show(old, p)} -> {show(now, p)}")
        for p in paths
        if p not in old or p not in now or old[p] != now[p]
    ]


def saved_spec(directory: Path, checkpoint: Path) -> Any:
    """The run's spec.yaml, or the spec in the checkpoint's meta.json when that is unreadable."""
    try:
        tree = yaml.safe_load((directory / SPEC_FILE).read_text())
        if isinstance(tree, dict):
            return tree
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        pass
    return ckpt.read_meta(checkpoint).get("spec")


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines after ``step`` (a killed run's, to be redone) and any torn last line."""
    if not path.is_file():
        return
    lines = path.read_text(errors="replace").splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    if len(kept) != len(lines):
        write_text_atomic(path, "".join(line + "\n" for line in kept))


@dataclass
class RunClaim:
    """What `claim` decided; only the main process holds the lock and commits.

    Attributes:
        directory: the run directory.
        checkpoint: the checkpoint to resume from, ``None`` for a fresh start.
        damaged: damaged checkpoints newer than ``checkpoint``, renamed ``damaged-step-N``
            at commit so that pruning and later resumes ignore them.
        write_spec: whether spec.yaml takes this run's spec.
        lock: the lock (main process).
    """

    directory: Path
    checkpoint: Path | None = None
    damaged: list[Path] = field(default_factory=list)
    write_spec: bool = True
    lock: RunLock | None = None

    def commit(self, spec_tree: dict[str, Any], step: int) -> None:
        """Every check passed: write spec.yaml, set damaged checkpoints aside, cut metrics."""
        spec_path = self.directory / SPEC_FILE
        text = yaml.safe_dump(spec_tree, sort_keys=False)
        if self.write_spec and not (spec_path.is_file() and spec_path.read_text() == text):
            write_text_atomic(spec_path, text)
        for path in self.damaged:
            target = free_name(path.with_name(f"damaged-{path.name}"))
            os.rename(path, target)
            log.info("renamed damaged checkpoint %s to %s", path, target.name)
        truncate_metrics(self.directory / METRICS_FILE, step)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def pick_checkpoint(directory: Path) -> tuple[Path | None, list[Path]]:
    """The newest intact checkpoint of a run to resume, warning about each damaged one skipped.

    Raises:
        CheckpointError: every checkpoint is damaged.
    """
    found, damaged = ckpt.newest_intact(directory / CHECKPOINTS_DIR)
    if found is None and damaged:
        raise CheckpointError(
            f"cannot resume {directory}: no intact checkpoint ({ckpt.describe_damage(damaged)}); "
            "pass --overwrite to move the run aside and start again"
        )
    if found is None:
        log.warning("--resume: %s holds no checkpoint; starting from scratch", directory)
    for path, problem in damaged:
        log.warning(
            "skipping damaged checkpoint %s: %s; resuming from %s",
            path,
            problem,
            found.name if found is not None else "",
        )
    return found, [path for path, _ in damaged]


def keeps_spec(directory: Path, checkpoint: Path, spec_tree: dict[str, Any]) -> bool:
    """Whether spec.yaml must keep the original: the spec differs in a non-resumable field."""
    saved = saved_spec(directory, checkpoint)
    if not isinstance(saved, dict):
        return False  # nothing to keep: spec.yaml takes this run's spec
    fixed = [
        f"{path} ({change})"
        for path, change in spec_differences(saved, spec_tree)
        if not RESUMABLE.match(path)
    ]
    if fixed:
        more = f", ... ({len(fixed) - 10} more)" if len(fixed) > 10 else ""
        shown = ", ".join(fixed[:10]) + more
        log.warning(
            "resuming %s with a spec that differs from its %s in %s; training uses the new "
            "values and %s keeps the original",
            directory,
            SPEC_FILE,
            shown,
            SPEC_FILE,
        )
    return bool(fixed)


def claim_main(
    directory: Path, spec_tree: dict[str, Any], resume: bool, overwrite: bool
) -> RunClaim:
    """The main process's checks (see the module docstring); no file of the run changes."""
    if resume and overwrite:
        raise RunDirectoryError(
            "--resume continues the run in the output directory and --overwrite moves it "
            "aside; pass one of them"
        )
    check_writable(directory)
    lock = RunLock(directory)
    lock.acquire()
    try:
        if overwrite:
            moved = move_aside(directory)
            if moved is not None:
                log.warning("moved the previous run in %s aside to %s", directory, moved)
        elif not resume and (found := existing_run(directory)) is not None:
            raise RunDirectoryError(
                f"{directory} already holds a run ({found}); pass --resume to continue it, "
                "--overwrite to move it aside, or another --output"
            )
        checkpoint, damaged = pick_checkpoint(directory) if resume else (None, [])
        keep = checkpoint is not None and keeps_spec(directory, checkpoint, spec_tree)
        return RunClaim(directory, checkpoint, damaged, not keep, lock)
    except BaseException:
        lock.release()
        raise


_ERRORS: dict[str, type[ModaloomError]] = {
    cls.__name__: cls for cls in (CheckpointError, RunDirectoryError, ModaloomError)
}


def claim(
    accelerator: Accelerator,
    directory: Path,
    spec_tree: dict[str, Any],
    resume: bool,
    overwrite: bool,
) -> RunClaim:
    """Claim ``directory`` for training: the main process checks, every rank gets the outcome.

    Raises:
        RunDirectoryError: in use, already holds a run, or cannot be moved aside.
        CheckpointError: not writable, or no intact checkpoint to resume.
    """
    outcome: list[Any] = [None]
    claimed: RunClaim | None = None
    if accelerator.is_main_process:
        try:
            claimed = claim_main(directory, spec_tree, resume, overwrite)
            outcome = [{"checkpoint": claimed.checkpoint}]
        except ModaloomError as exc:
            if accelerator.num_processes == 1:
                raise
            outcome = [{"error": type(exc).__name__, "message": str(exc)}]
    if accelerator.num_processes > 1:
        broadcast_object_list(outcome)
    if "error" in outcome[0]:
        raise _ERRORS.get(outcome[0]["error"], ModaloomError)(outcome[0]["message"])
    return claimed or RunClaim(directory, outcome[0]["checkpoint"], write_spec=False)
