"""``train.init_from``: weights only from another run, resized queues and positions, refusals,
the report, and resume of a fine-tuning run."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from modaloom.core.cli import main
from modaloom.core.errors import SpecError
from modaloom.core.init_from import check_init_from, resolve_source
from modaloom.core.momentum import FeatureQueue
from modaloom.core.registry import Registry
from modaloom.core.runner import TrainingSession, setup_session, train
from modaloom.core.spec import load_spec, resolve_tree

QUEUE = 40
"""Rows of the source run's queue; 3 steps of 16 samples wrap it (ptr 8, full)."""


def source_tree(registry: Registry, manifest: Path) -> dict[str, Any]:
    tree = resolve_tree("clip-tiny", registry)
    tree["data"]["sources"]["train"]["path"] = str(manifest)
    tree["model"]["objectives"] = [
        {"type": "itc_queue", "a": "vision", "b": "text", "embed_dim": 32, "queue_size": QUEUE}
    ]
    tree["train"].update(steps=3, checkpoint_every=100)
    return tree


@pytest.fixture(scope="module")
def source_run(registry: Registry, shapes_manifest: Path, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    run = tmp_path_factory.mktemp("init-from") / "source"
    spec = load_spec(source_tree(registry, shapes_manifest), registry=registry)
    train(spec, run, registry=registry, show_progress=False)
    return run


def finetune_tree(registry: Registry, manifest: Path, source: Path, **init: Any) -> dict[str, Any]:
    tree = copy.deepcopy(source_tree(registry, manifest))
    tree["train"]["init_from"] = {"path": str(source), **init}
    tree["train"]["optimizer"]["lr"] = 2.0e-4
    return tree


def session_of(registry: Registry, tree: dict[str, Any], output: Path) -> TrainingSession:
    spec = load_spec(tree, registry=registry)
    return setup_session(spec, output, registry, False, init=resolve_source(spec))


def saved_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / "step-00000003" / "model.safetensors")


def test_a_smaller_queue_keeps_the_newest_rows_and_training_starts_fresh(  # type: ignore[no-untyped-def]
    registry, shapes_manifest, source_run, tmp_path
) -> None:
    tree = finetune_tree(registry, shapes_manifest, source_run, objectives=["itc_queue"])
    tree["model"]["objectives"][0]["queue_size"] = 24
    session = session_of(registry, tree, tmp_path)
    saved = saved_weights(source_run)
    assert int(saved["objectives.0.queues.shared.ptr"]) == 8  # 48 rows went into 40
    queue = session.unwrapped.objectives[0].queues["shared"]
    assert isinstance(queue, FeatureQueue)
    newest = [(8 - 24 + k) % QUEUE for k in range(24)]  # rows 24..39 then 0..7, oldest first
    for name in ("a_queue", "b_queue", "ids"):
        assert torch.equal(
            getattr(queue, name), saved[f"objectives.0.queues.shared.{name}"][newest]
        )
    assert (int(queue.ptr), int(queue.filled)) == (0, 24)
    model = session.unwrapped.state_dict()
    for key in (
        "components.vision.vit.embeddings.position_embeddings",
        "objectives.0.proj_a.weight",
    ):
        assert torch.equal(model[key], saved[key])
    copy_key = "objectives.0.momentum.copies.a.vit.embeddings.position_embeddings"
    assert torch.equal(model[copy_key], saved[copy_key])  # the objective's copies came along
    assert session.step == 0 and not session.optimizer.state  # weights only
    assert session.scheduler.get_last_lr()[0] == pytest.approx(2.0e-4 / 5)  # new lr, warm-up
    tokenizer = (source_run / "artifacts" / "tokenizer" / "tokenizer.json").read_text()
    assert (tmp_path / "artifacts" / "tokenizer" / "tokenizer.json").read_text() == tokenizer


def test_init_report_for_another_objective_set(  # type: ignore[no-untyped-def]
    registry, shapes_manifest, source_run, tmp_path
) -> None:
    tree = finetune_tree(registry, shapes_manifest, source_run)  # objectives not named
    tree["model"]["objectives"].append({"type": "itc", "a": "vision", "b": "text", "embed_dim": 16})
    tree["train"]["steps"] = 1
    train(load_spec(tree, registry=registry), tmp_path, registry=registry, show_progress=False)
    report = json.loads((tmp_path / "init_report.json").read_text())
    saved = saved_weights(source_run)
    spec = load_spec(tree, registry=registry)
    model = setup_session(spec, tmp_path / "probe", registry, False).unwrapped.state_dict()
    copies = [f"objectives.0.momentum.copies.{n}" for n in ("a", "b", "proj_a", "proj_b")]
    assert report == {
        "source": str(source_run / "checkpoints" / "step-00000003"),
        "step": 3,
        "components": ["vision", "text"],
        "objectives": [],
        "loaded": sorted(k for k in saved if k.startswith("components.")),
        "resized": [],
        "skipped": sorted(k for k in saved if k.startswith("objectives.")),
        "missing": sorted(k for k in model if k.startswith("objectives.")),
        "unexpected": [],
        "momentum_from_online": copies,
        "tokenizer": str(source_run / "artifacts" / "tokenizer"),
    }


def test_momentum_copies_start_from_the_loaded_online_weights(  # type: ignore[no-untyped-def]
    registry, shapes_manifest, source_run, tmp_path
) -> None:
    tree = finetune_tree(registry, shapes_manifest, source_run)
    model = session_of(registry, tree, tmp_path).unwrapped.state_dict()
    saved = saved_weights(source_run)
    for key in ("vit.embeddings.position_embeddings", "vit.layers.1.mlp.fc2.weight"):
        assert torch.equal(
            model[f"objectives.0.momentum.copies.a.{key}"], saved[f"components.vision.{key}"]
        )
        assert not torch.equal(
            saved[f"objectives.0.momentum.copies.a.{key}"], saved[f"components.vision.{key}"]
        )
    assert torch.equal(
        model["objectives.0.momentum.copies.proj_a.weight"], model["objectives.0.proj_a.weight"]
    )


def test_position_embeddings_are_interpolated_to_another_image_size(  # type: ignore[no-untyped-def]
    registry, shapes_manifest, source_run, tmp_path
) -> None:
    tree = finetune_tree(registry, shapes_manifest, source_run, components=["vision"])
    tree["data"]["image"]["size"] = 48
    session = session_of(registry, tree, tmp_path)
    report = session.init_report
    assert report is not None and report.components == ["vision"]
    key = "components.vision.vit.embeddings.position_embeddings"
    assert report.resized == [
        {
            "key": key,
            "checkpoint": [1, 17, 64],
            "model": [1, 37, 64],
            "how": "position embeddings interpolated (bicubic) from 4x4 to 6x6 patches",
        }
    ]
    saved = saved_weights(source_run)[key]
    resized = session.unwrapped.state_dict()[key]
    assert torch.equal(resized[:, 0], saved[:, 0])  # [CLS] kept
    corner = resized[0, 1:].reshape(6, 6, 64).mean((0, 1))
    assert torch.allclose(corner, saved[0, 1:].mean(0), atol=0.1)  # the same field, resampled
    assert any(k.startswith("components.text.") for k in report.skipped)


def test_a_shape_without_a_known_meaning_is_refused(  # type: ignore[no-untyped-def]
    registry, shapes_manifest, source_run, tmp_path
) -> None:
    tree = finetune_tree(registry, shapes_manifest, source_run)
    tree["model"]["components"]["text"]["config"]["intermediate_size"] = 96
    with pytest.raises(SpecError) as caught:
        train(load_spec(tree, registry=registry), tmp_path, registry=registry, show_progress=False)
    assert str(caught.value) == (
        "spec is invalid (1 problem):\n"
        "  train.init_from: components.text.bert.encoder.layer.0.intermediate.dense.bias: the "
        "checkpoint has shape [128] and the model [96] (and 5 more); only momentum queues and "
        "position/time embeddings are resized: leave that component or objective out of "
        "train.init_from or give it the source run's shape"
    )
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "init_report.json").exists()


def test_a_queue_of_another_width_is_refused_not_resized(  # type: ignore[no-untyped-def]
    registry, shapes_manifest, source_run, tmp_path
) -> None:
    tree = finetune_tree(registry, shapes_manifest, source_run, objectives=["itc_queue"])
    tree["model"]["objectives"][0].update(embed_dim=16, queue_size=24)
    with pytest.raises(SpecError) as caught:
        session_of(registry, tree, tmp_path)
    assert str(caught.value) == (
        "spec is invalid (1 problem):\n"
        "  train.init_from: objectives.0.momentum.copies.proj_a.bias: the checkpoint has shape "
        "[32] and the model [16] (and 11 more); only momentum queues and position/time "
        "embeddings are resized: leave that component or objective out of train.init_from or "
        "give it the source run's shape"
    )


def test_unknown_names_and_paths_are_refused(  # type: ignore[no-untyped-def]
    registry, shapes_manifest, source_run, tmp_path
) -> None:
    cases = [
        (
            {"components": ["audio"]},
            "train.init_from.components.0: no component 'audio' in "
            "model.components (['vision', 'text'])",
        ),
        (
            {"objectives": ["itc"]},
            "train.init_from.objectives.0: no objective 'itc' in model.objectives (['itc_queue'])",
        ),
    ]
    for init, message in cases:
        tree = finetune_tree(registry, shapes_manifest, source_run, **init)
        with pytest.raises(SpecError) as caught:
            session_of(registry, tree, tmp_path)
        assert str(caught.value) == f"spec is invalid (1 problem):\n  {message}"
    tree = finetune_tree(registry, shapes_manifest, source_run)
    tree["model"]["objectives"][0]["name"] = "q"
    tree["train"]["init_from"]["objectives"] = ["q"]
    with pytest.raises(SpecError) as caught:
        session_of(registry, tree, tmp_path)
    checkpoint = source_run / "checkpoints" / "step-00000003"
    assert str(caught.value) == (
        "spec is invalid (1 problem):\n  train.init_from.objectives.0: "
        f"{checkpoint} has no objective 'q' (it has ['itc_queue'])"
    )
    tree = finetune_tree(registry, shapes_manifest, tmp_path / "nowhere")
    with pytest.raises(SpecError) as caught:
        session_of(registry, tree, tmp_path)
    assert str(caught.value) == (
        "spec is invalid (1 problem):\n  train.init_from.path: "
        f"{tmp_path / 'nowhere'} does not exist; give a run directory"
    )


def test_resume_of_a_finetuning_run_does_not_reapply_init_from(  # type: ignore[no-untyped-def]
    registry, shapes_manifest, source_run, tmp_path
) -> None:
    source = tmp_path / "source"
    shutil.copytree(source_run, source)
    tree = finetune_tree(registry, shapes_manifest, source, objectives=["itc_queue"])
    tree["model"]["objectives"][0]["queue_size"] = 24
    del tree["train"]["steps"]
    tree["train"].update(checkpoint_every=1, log_every=1)
    tree["train"]["stages"] = [
        {"name": "low", "steps": 2},
        {"name": "high", "steps": 2, "data": {"image": {"size": 40}}},  # a curriculum
    ]
    spec = load_spec(tree, registry=registry)
    train(spec, tmp_path / "reference", registry=registry, show_progress=False)
    interrupted = tmp_path / "interrupted"
    train(spec, interrupted, registry=registry, show_progress=False)
    shutil.rmtree(interrupted / "checkpoints" / "step-00000004")  # killed after step 3
    source.rename(tmp_path / "moved")  # init_from would now fail
    result = train(spec, interrupted, registry=registry, resume=True, show_progress=False)
    assert result.step == 4
    reference = load_file(
        tmp_path / "reference" / "checkpoints" / "step-00000004" / "model.safetensors"
    )
    resumed = load_file(interrupted / "checkpoints" / "step-00000004" / "model.safetensors")
    assert reference.keys() == resumed.keys()
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), key


def test_validate_refuses_what_training_would(  # type: ignore[no-untyped-def]
    registry, shapes_manifest, source_run, tmp_path, capsys
) -> None:
    """`modaloom validate` checks init_from's path and names (exit 2) before any training."""
    tree = finetune_tree(registry, shapes_manifest, source_run, components=["audio"])
    with pytest.raises(SpecError) as caught:
        check_init_from(load_spec(tree, registry=registry))
    assert str(caught.value) == (
        "spec is invalid (1 problem):\n  train.init_from.components.0: no component 'audio' in "
        "model.components (['vision', 'text'])"
    )
    check_init_from(
        load_spec(finetune_tree(registry, shapes_manifest, source_run), registry=registry)
    )
    spec_file = tmp_path / "finetune.yaml"
    spec_file.write_text(yaml.safe_dump(finetune_tree(registry, shapes_manifest, tmp_path / "x")))
    assert main(["validate", str(spec_file)]) == 2
    assert capsys.readouterr().err == (
        f"error: {spec_file} is invalid (1 problem):\n  train.init_from.path: "
        f"{tmp_path / 'x'} does not exist; give a run directory\n"
    )
