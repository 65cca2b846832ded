"""`modaloom eval` and `modaloom.load` on a trained tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import modaloom
from modaloom.core.cli import main
from modaloom.core.errors import SpecError
from modaloom.core.evaluation import run_evaluators
from modaloom.core.inference import load_run
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
        f"retrieval.{d}.{m}"
        for d in ("t2v", "v2t")
        for m in ("r1", "r5", "r10", "medr", "meanr", "rmean")
    } | {"retrieval.t2v.rsum"}
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


def test_eval_every_logs_metrics_and_leaves_training_unchanged(  # type: ignore[no-untyped-def]
    registry, shapes_manifest: Path, tmp_path: Path
) -> None:
    """Evaluating every 4 steps logs ``eval/*`` lines at steps 4, 8 and the last (10), writes
    metrics.json, and does not change training: the weights equal a run without evaluation
    (evaluation draws nothing from the training RNGs and restores train mode)."""
    base = [
        f"data.sources.train.path={shapes_manifest}",
        "train.steps=10",
        "train.log_every=5",
        f"data.eval_sources={{test: {{type: jsonl, path: {shapes_manifest}}}}}",
        "eval=[{type: retrieval, source: test}]",
        "data.num_workers=1",
    ]
    plain, evaluated = tmp_path / "plain", tmp_path / "evaluated"
    train(load_spec("clip-tiny", base, registry), plain, registry=registry, show_progress=False)
    spec = load_spec("clip-tiny", [*base, "train.eval_every=4"], registry)
    train(spec, evaluated, registry=registry, show_progress=False)

    lines = [json.loads(line) for line in (evaluated / "metrics.jsonl").read_text().splitlines()]
    evals = [line for line in lines if "eval/retrieval.t2v.r1" in line]
    assert [line["step"] for line in evals] == [4, 8, 10]
    final = json.loads((evaluated / "metrics.json").read_text())
    assert {f"eval/{k}": v for k, v in final.items()} == {
        k: v for k, v in evals[-1].items() if k.startswith("eval/")
    }
    run = load_run(evaluated, spec=spec, registry=registry)
    assert final == run_evaluators(spec, run.model, run.processors, run.sources, registry)
    checkpoint = Path("checkpoints") / "step-00000010" / "model.safetensors"
    ref, got = load_file(plain / checkpoint), load_file(evaluated / checkpoint)
    assert all(torch.equal(ref[name], got[name]) for name in ref)


def test_eval_every_without_eval_section_is_a_spec_error(registry, shapes_manifest) -> None:  # type: ignore[no-untyped-def]
    overrides = [f"data.sources.train.path={shapes_manifest}", "train.eval_every=5"]
    with pytest.raises(SpecError) as info:
        load_spec("clip-tiny", overrides, registry)
    assert str(info.value).splitlines()[-1] == (
        "  train.eval_every: is set but there is no `eval:` section; add one"
    )
