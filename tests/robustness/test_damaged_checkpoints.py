"""Damaged checkpoints are detected by the sizes and SHA-256 in meta.json and skipped, by
``--resume`` and by ``modaloom.load``, with one warning each; none intact is one clear error."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

import modaloom
from modaloom.core.checkpoint import checkpoint_problem
from modaloom.core.cli import main
from modaloom.core.errors import CheckpointError
from modaloom.core.inference import resolve_checkpoint
from modaloom.core.run_dir import pick_checkpoint

STEP1, STEP2 = "step-00000001", "step-00000002"


def truncate(path: Path) -> str:
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 2])
    return f"{path.name} is truncated ({size // 2} of {size} bytes)"


def empty(path: Path) -> str:
    size = path.stat().st_size
    path.write_bytes(b"")
    return f"{path.name} is empty ({size} bytes expected)"


def remove(path: Path) -> str:
    path.unlink()
    return f"{path.name} is missing"


def flip(path: Path) -> str:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    return f"{path.name} does not match its SHA-256 in meta.json"


def garble(path: Path) -> str:
    path.write_text('{"step": 2, "files": ')
    return "meta.json is not valid JSON"


DAMAGE: dict[str, tuple[str, Callable[[Path], str]]] = {
    "truncated weights": ("model.safetensors", truncate),
    "empty weights": ("model.safetensors", empty),
    "changed weights": ("model.safetensors", flip),
    "missing state": ("state.pt", remove),
    "truncated state": ("state.pt", truncate),
    "missing rng": ("rng-rank0.pt", remove),
    "truncated rng": ("rng-rank0.pt", truncate),
    "invalid meta": ("meta.json", garble),
}


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_meta_json_records_every_file(trained_run: Path) -> None:
    directory = trained_run / "checkpoints" / STEP2
    meta = json.loads((directory / "meta.json").read_text())
    names = sorted(p.name for p in directory.iterdir() if p.name != "meta.json")
    assert names == ["model.safetensors", "rng-rank0.pt", "state.pt"]
    assert meta["files"] == {
        name: {
            "size": (directory / name).stat().st_size,
            "sha256": hashlib.sha256((directory / name).read_bytes()).hexdigest(),
        }
        for name in names
    }


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_newest_checkpoint_is_skipped_with_one_warning(copy_run, caplog, case: str) -> None:  # type: ignore[no-untyped-def]
    run = copy_run()
    name, damage = DAMAGE[case]
    newest = run / "checkpoints" / STEP2
    problem = damage(newest / name)
    caplog.set_level(logging.WARNING)
    assert pick_checkpoint(run) == (run / "checkpoints" / STEP1, [newest])
    assert warnings(caplog) == [
        f"skipping damaged checkpoint {newest}: {problem}; resuming from {STEP1}"
    ]
    caplog.clear()
    loaded = resolve_checkpoint(run)[1]  # loading needs only meta.json and the weights
    if name in ("model.safetensors", "meta.json"):
        assert loaded == run / "checkpoints" / STEP1
        assert warnings(caplog) == [
            f"skipping damaged checkpoint {newest}: {problem}; loading {STEP1}"
        ]
    else:
        assert loaded == newest and warnings(caplog) == []


def test_resume_continues_from_the_newest_intact_checkpoint(  # type: ignore[no-untyped-def]
    copy_run, train_args, caplog
) -> None:
    run = copy_run()
    damaged = run / "checkpoints" / STEP2
    problem = truncate(damaged / "model.safetensors")
    caplog.set_level(logging.WARNING)
    assert main(train_args(run, "--resume", steps=3)) == 0
    assert warnings(caplog) == [
        f"skipping damaged checkpoint {damaged}: {problem}; resuming from {STEP1}"
    ]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines]
    assert steps == [1, 2, 3]  # step 2 was redone
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == [f"damaged-{STEP2}", STEP1, STEP2, "step-00000003"]
    assert checkpoint_problem(run / "checkpoints" / STEP2) is None
    modaloom.load(run, device="cpu")


def test_no_intact_checkpoint_is_one_error(copy_run, train_args, capsys, shapes_manifest) -> None:  # type: ignore[no-untyped-def]
    run = copy_run()
    first = truncate(run / "checkpoints" / STEP1 / "model.safetensors")
    second = remove(run / "checkpoints" / STEP2 / "rng-rank0.pt")
    assert main(train_args(run, "--resume", steps=3)) == 2
    assert capsys.readouterr().err == (
        f"error: cannot resume {run}: no intact checkpoint ({STEP2}: {second}; {STEP1}: {first}); "
        "pass --overwrite to move the run aside and start again\n"
    )
    (run / "checkpoints" / STEP2 / "meta.json").write_text("[]")
    damage = f"{STEP2}: meta.json does not describe a checkpoint (no step); {STEP1}: {first}"
    with pytest.raises(CheckpointError) as info:
        modaloom.load(run)
    assert str(info.value) == f"no intact checkpoint in {run}: {damage}"
    evaluate = [
        "eval",
        "clip-tiny",
        "--set",
        f"data.sources.train.path={shapes_manifest}",
        "--set",
        "eval=[{type: retrieval, source: train}]",
        "--checkpoint",
        str(run),
    ]
    assert main(evaluate) == 2
    assert capsys.readouterr().err == f"error: no intact checkpoint in {run}: {damage}\n"
    named = run / "checkpoints" / STEP1
    with pytest.raises(CheckpointError) as info:
        modaloom.load(named)
    assert str(info.value) == f"checkpoint {named} is damaged: {first}"


def test_checkpoints_without_hashes_still_load(copy_run, caplog) -> None:  # type: ignore[no-untyped-def]
    """Checkpoints of an older modaloom (no ``files`` in meta.json) get structural checks."""
    run = copy_run()
    for step in (STEP1, STEP2):
        meta_path = run / "checkpoints" / step / "meta.json"
        meta = json.loads(meta_path.read_text())
        del meta["files"]
        meta_path.write_text(json.dumps(meta))
    caplog.set_level(logging.WARNING)
    assert pick_checkpoint(run) == (run / "checkpoints" / STEP2, [])
    assert resolve_checkpoint(run)[1] == run / "checkpoints" / STEP2
    assert warnings(caplog) == []
    newest = run / "checkpoints" / STEP2
    for name, damage in [("model.safetensors", truncate), ("rng-rank0.pt", remove)]:
        problem = damage(newest / name)
        assert checkpoint_problem(newest) == problem
        assert pick_checkpoint(run) == (run / "checkpoints" / STEP1, [newest])
        (newest / name).write_bytes((run / "checkpoints" / STEP1 / name).read_bytes())
    (newest / "state.pt").write_bytes(b"not a zip")
    assert checkpoint_problem(newest) == "state.pt is truncated or not a torch file"
