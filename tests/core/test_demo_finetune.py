"""``modaloom demo --finetune``: scratch and pretrained fine-tuning side by side (small sizes)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modaloom.core.cli import main
from modaloom.core.demo_finetune import FINETUNE_PRESET, PRETRAIN_PRESET, run_finetune_demo


def test_both_starts_are_trained_evaluated_and_compared(
    small_preset: Callable[[str], dict[str, Any]], tmp_path: Path
) -> None:
    results = run_finetune_demo(
        tmp_path,
        show_progress=False,
        pretrain=small_preset(PRETRAIN_PRESET),
        finetune=small_preset(FINETUNE_PRESET),
    )
    assert set(results) == {"scratch", "pretrained"}
    assert results["scratch"].keys() == results["pretrained"].keys()
    assert "retrieval.t2av.r1" in results["pretrained"]
    report = json.loads((tmp_path / "pretrained" / "init_report.json").read_text())
    assert report["source"].startswith(str(tmp_path / "pretrain" / "run"))
    assert report["objectives"] == ["mga"] and "text" in report["components"]
    assert not (tmp_path / "scratch" / "init_report.json").exists()
    lines = (tmp_path / "report.md").read_text().splitlines()
    assert "| metric | from scratch | from pretrained | gain |" in lines
    r1 = results["scratch"]["retrieval.t2av.r1"], results["pretrained"]["retrieval.t2av.r1"]
    gain = r1[1] - r1[0]
    assert f"| retrieval.t2av.r1 | {r1[0]:.4f} | {r1[1]:.4f} | {gain:+.4f} |" in lines
    assert json.loads((tmp_path / "metrics.json").read_text()) == results


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--from", "x"], "--from RUN is the pretraining run of --finetune; add --finetune"),
        (
            ["--finetune", "--preset", "cots-tiny"],
            "--finetune fine-tunes valor-tiny; leave --preset out",
        ),
        (
            ["--finetune", "--from", "/nowhere/run"],
            "--from /nowhere/run: no such run directory; give a train output",
        ),
    ],
)
def test_demo_arguments_that_cannot_work_are_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["demo", "--output", str(tmp_path / "out"), *argv]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
