"""A tiny trained run (clip-tiny, 2 steps, a checkpoint after each) that tests copy and damage."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from modaloom.core.registry import Registry
from modaloom.core.runner import train
from modaloom.core.spec import load_spec

TrainArgs = Callable[..., list[str]]


def tiny_sets(manifest: Path, steps: int) -> list[str]:
    return [
        f"data.sources.train.path={manifest}",
        f"train.steps={steps}",
        "train.checkpoint_every=1",
        "train.log_every=1",
        "data.batch_size=8",
    ]


@pytest.fixture(scope="session")
def trained_run(
    registry: Registry, shapes_manifest: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    run = tmp_path_factory.mktemp("robustness") / "run"
    spec = load_spec("clip-tiny", tiny_sets(shapes_manifest, 2), registry)
    train(spec, run, registry=registry, show_progress=False)
    return run


@pytest.fixture
def copy_run(trained_run: Path, tmp_path: Path) -> Callable[[], Path]:
    """``copy_run()``: a fresh copy of the trained run in this test's directory."""
    return lambda: Path(shutil.copytree(trained_run, tmp_path / "run"))


@pytest.fixture
def train_args(shapes_manifest: Path) -> TrainArgs:
    """``train_args(output, *flags, steps=2)``: ``modaloom train`` arguments of the tiny run."""

    def args(output: Path, *flags: str, steps: int = 2) -> list[str]:
        sets = [a for s in tiny_sets(shapes_manifest, steps) for a in ("--set", s)]
        return ["train", "clip-tiny", *sets, "--output", str(output), "--no-progress", *flags]

    return args
