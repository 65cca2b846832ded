"""`modaloom eval` and `modaloom.load` on a trained tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import modaloom
from modaloom.core.cli import main
from modaloom.core.runner import train
from modaloom.core.spec import load_spec


@pytest.fixture(scope="module")
def trained(registry, shapes_manifest: Path, tmp_path_factory):  # type: ignore[no-untyped-def]
    overrides = [
        f"data.sources.train.path={shapes_manifest}",
        "train.steps=30",
        f"data.eval_sources={{test: {{type: jsonl, path: {shapes_manifest}}}}}",
        "eval=[{type: retrieval, source: test}]",
    ]
    run = tmp_path_factory.mktemp("run")
    train(load_spec("clip-tiny", overrides, registry), run, registry=registry, show_progress=False)
    return run, overrides


def test_eval_command_writes_metrics_and_prints_table(trained, capsys) -> None:  # type: ignore[no-untyped-def]
    run, overrides = trained
    args = [
        "eval",
        "clip-tiny",
        *[a for o in overrides for a in ("--set", o)],
        "--checkpoint",
        str(run),
    ]
    assert main(args) == 0
    metrics = json.loads((run / "checkpoints" / "step-00000030" / "metrics.json").read_text())
    assert set(metrics) == {
        f"retrieval.{d}.{m}" for d in ("t2v", "v2t") for m in ("r1", "r5", "r10", "medr")
    }
    assert all(0.0 <= metrics[f"retrieval.t2v.r{k}"] <= 1.0 for k in (1, 5, 10))
    assert (
        metrics["retrieval.t2v.r1"] <= metrics["retrieval.t2v.r5"] <= metrics["retrieval.t2v.r10"]
    )
    out = capsys.readouterr().out
    assert out.startswith("metric") and "retrieval.t2v.r1" in out


def test_eval_without_eval_section_is_a_clear_error(trained, capsys) -> None:  # type: ignore[no-untyped-def]
    run, overrides = trained
    assert main(["eval", "clip-tiny", "--set", overrides[0], "--checkpoint", str(run)]) == 2
    assert capsys.readouterr().err == "error: clip-tiny has no `eval:` section; add an evaluator\n"


def test_load_embeds_and_scores(trained, shapes_manifest: Path) -> None:  # type: ignore[no-untyped-def]
    run, _ = trained
    pipeline = modaloom.load(run)
    images = [str(shapes_manifest.parent / f"img{i}.png") for i in range(3)]
    embeddings = pipeline.embed("image", images)
    assert embeddings.shape == (3, 64)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(3))
    scores = pipeline.score(["a red square", "a blue circle"], images)
    assert scores.shape == (2, 3)
    torch.testing.assert_close(
        scores, pipeline.embed("text", ["a red square", "a blue circle"]) @ embeddings.T
    )


def test_load_reports_a_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(modaloom.ModaloomError, match="no complete checkpoint in"):
        modaloom.load(tmp_path)
