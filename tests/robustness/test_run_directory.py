"""Run directories: one writer at a time, no run overwritten by accident, nothing changed by a
refused resume, spec.yaml kept when a resume changes more than its length."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from modaloom.core import run_dir
from modaloom.core.cli import main


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path -> bytes)."""
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def metric_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_second_process_exits_2_naming_the_holder_and_a_killed_holder_does_not_block_resume(  # type: ignore[no-untyped-def]
    train_args, tmp_path, capsys
) -> None:
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-m", "modaloom", *train_args(run, steps=1000)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 240
        while not (run / "checkpoints" / "step-00000001").is_dir():
            assert holder.poll() is None and time.monotonic() < deadline, holder.stdout.read()  # type: ignore[union-attr]
            time.sleep(0.05)
        for flags in ([], ["--resume"], ["--overwrite"]):
            assert main(train_args(run, *flags)) == 2
            assert capsys.readouterr().err == (
                f"error: {run} is in use by another modaloom process (pid {holder.pid}); "
                "wait for it to finish or pass another --output\n"
            )
        assert holder.poll() is None, "the holder was disturbed"
        assert not list(tmp_path.glob("run.old-*"))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    started = time.monotonic()
    assert main(train_args(run, "--resume", steps=3)) == 0, capsys.readouterr().err
    assert time.monotonic() - started < run_dir.STALE_WAIT_S  # the dead holder's lock was free
    assert capsys.readouterr().out.startswith("trained ")


def test_train_into_a_run_refuses_and_overwrite_moves_it_aside(  # type: ignore[no-untyped-def]
    copy_run, train_args, capsys, caplog
) -> None:
    run = copy_run()
    before = snapshot(run)
    assert main(train_args(run)) == 2
    assert capsys.readouterr().err == (
        f"error: {run} already holds a run (checkpoints up to step-00000002); pass --resume to "
        "continue it, --overwrite to move it aside, or another --output\n"
    )
    assert snapshot(run) == before
    caplog.set_level(logging.WARNING)
    assert main(train_args(run, "--overwrite", steps=1)) == 0
    [old] = run.parent.glob("run.old-*")
    assert warnings(caplog) == [f"moved the previous run in {run} aside to {old}"]
    assert snapshot(old) == {k: v for k, v in before.items() if k != run_dir.LOCK_FILE}
    assert metric_steps(run) == [1]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001"]


def test_resume_and_overwrite_exclude_each_other(train_args, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as info:
        main(train_args(tmp_path / "run", "--resume", "--overwrite"))
    assert info.value.code == 2
    assert "argument --overwrite: not allowed with argument --resume" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_refused_resume_changes_nothing(copy_run, train_args, capsys) -> None:  # type: ignore[no-untyped-def]
    run = copy_run()
    before = snapshot(run)
    bigger = ["--set", "model.objectives.0.embed_dim=32"]
    assert main(train_args(run, "--resume", *bigger, steps=4)) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: checkpoint {run / 'checkpoints' / 'step-00000002'} does not match this model "
        "(was it made by another spec?):\n  "
    ), err
    assert "Traceback" not in err
    assert snapshot(run) == before  # spec.yaml byte-identical, metrics and checkpoints too


def test_resume_keeps_spec_yaml_when_more_than_the_length_changed(  # type: ignore[no-untyped-def]
    copy_run, train_args, caplog
) -> None:
    run = copy_run()
    original = (run / "spec.yaml").read_bytes()
    caplog.set_level(logging.WARNING)
    assert main(train_args(run, "--resume", "--set", "train.optimizer.lr=0.002", steps=3)) == 0
    assert warnings(caplog) == [
        f"resuming {run} with a spec that differs from its spec.yaml in "
        "train.optimizer.lr (0.001 -> 0.002); training uses the new values and spec.yaml keeps "
        "the original"
    ]
    assert (run / "spec.yaml").read_bytes() == original
    caplog.clear()
    assert main(train_args(run, "--resume", "--set", "train.log_every=2", steps=4)) == 0
    assert warnings(caplog) == []
    saved = yaml.safe_load((run / "spec.yaml").read_text())
    assert (saved["train"]["steps"], saved["train"]["log_every"]) == (4, 2)
    assert metric_steps(run) == [1, 2, 3, 4]


def test_resume_of_a_missing_directory_starts_from_scratch_with_one_warning(  # type: ignore[no-untyped-def]
    train_args, tmp_path, caplog
) -> None:
    run = tmp_path / "new"
    caplog.set_level(logging.WARNING)
    assert main(train_args(run, "--resume", steps=1)) == 0
    assert warnings(caplog) == [f"--resume: {run} holds no checkpoint; starting from scratch"]
    assert metric_steps(run) == [1]


def test_spec_yaml_is_replaced_atomically(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "spec.yaml"
    path.write_text("old: 1\n")

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        run_dir.write_text_atomic(path, "new: 2\n")
    assert path.read_text() == "old: 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["spec.yaml"]


def test_torn_metrics_line_of_a_killed_run_is_dropped(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"ste')
    run_dir.truncate_metrics(metrics, 2)
    assert metrics.read_text() == '{"step": 1}\n{"step": 2}\n'


def test_lock_is_not_inherited_by_forked_children(tmp_path: Path) -> None:
    """A DataLoader worker forked from a run that is then killed must not keep the lock."""
    lock = run_dir.RunLock(tmp_path)
    lock.acquire()
    ready, started = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (child)
        os.write(started, b"x")  # the fork hooks have run
        time.sleep(10)
        os._exit(0)
    try:
        assert os.read(ready, 1) == b"x"
        assert lock.fd is not None
        run_dir._held.discard(lock.fd)
        os.close(lock.fd)  # what the kernel does when the parent is killed
        again = run_dir.RunLock(tmp_path)
        again.acquire()  # fails if the child still holds the lock
        again.release()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
