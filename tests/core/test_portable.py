"""Runs travel: a run trained from ``pretrained:`` directories is moved and the directories
deleted; `modaloom.load`, ``modaloom eval``, ``--resume`` and ``train.init_from`` still work."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from transformers import BertConfig, BertModel, CLIPImageProcessor, ViTConfig, ViTModel

import modaloom
from modaloom.core.cli import main
from modaloom.core.errors import SpecError
from modaloom.core.portable import portable_model, provided_values
from modaloom.core.registry import Registry
from modaloom.core.runner import train
from modaloom.core.spec import load_spec, resolve_tree
from modaloom.modalities.text_tokenizer import train_wordpiece
from modaloom.tests.tiny import TINY_BERT, TINY_VIT

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
"""The pretrained ViT's preprocessor statistics (not ImageNet's, so the test sees them)."""
CAPTIONS = ["a red circle", "a blue square", "a green triangle"]


def write_pretrained(root: Path, manifest: Path) -> tuple[Path, Path]:
    """A tiny ViT with a preprocessor config and a tiny BERT with its tokenizer."""
    vit_dir, bert_dir = root / "vit", root / "bert"
    ViTModel(ViTConfig(**TINY_VIT), add_pooling_layer=False).save_pretrained(vit_dir)
    CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=list(MEAN),
        image_std=list(STD),
    ).save_pretrained(vit_dir)
    texts = [json.loads(line)["text"] for line in manifest.read_text().splitlines()]
    tokenizer = train_wordpiece(texts, 60)
    tokenizer.save_pretrained(bert_dir)
    tokenizer.save_pretrained(root / "tokenizer")  # data.text.tokenizer
    config = BertConfig(**TINY_BERT, vocab_size=len(tokenizer))
    BertModel(config, add_pooling_layer=False).save_pretrained(bert_dir)
    return vit_dir, bert_dir


def run_tree(registry: Registry, manifest: Path, vit: Path, bert: Path) -> dict[str, Any]:
    tree = resolve_tree("clip-tiny", registry)
    tree["model"]["components"] = {
        "vision": {"type": "vit", "pretrained": str(vit)},
        "text": {"type": "bert", "pretrained": str(bert)},
    }
    tree["model"]["objectives"][0]["embed_dim"] = 16
    tree["data"]["sources"]["train"]["path"] = str(manifest)
    tree["data"]["text"]["tokenizer"] = str(bert.parent / "tokenizer")
    tree["data"]["eval_sources"] = {"test": {"type": "jsonl", "path": str(manifest)}}
    tree["eval"] = [{"type": "retrieval", "source": "test"}]
    tree["train"].update(steps=2, checkpoint_every=1, log_every=1)
    return tree


def embeddings(run: Path, manifest: Path) -> dict[str, torch.Tensor]:
    pipe = modaloom.load(run, device="cpu")
    image = manifest.parent / "img0.png"
    return {"text": pipe.embed("text", CAPTIONS), "image": pipe.embed("image", [image])}


@pytest.fixture(scope="module")
def moved(registry: Registry, shapes_manifest: Path, tmp_path_factory: Any) -> dict[str, Any]:
    """The run, moved, with its pretrained directories deleted; the embeddings it gave before."""
    root = tmp_path_factory.mktemp("portable")
    vit, bert = write_pretrained(root / "pretrained", shapes_manifest)
    run = root / "run"
    spec = load_spec(run_tree(registry, shapes_manifest, vit, bert), registry=registry)
    train(spec, run, registry=registry, show_progress=False)
    before = embeddings(run, shapes_manifest)
    target = root / "elsewhere" / "run"
    target.parent.mkdir()
    shutil.move(run, target)
    shutil.rmtree(root / "pretrained")
    tokenizer = str(root / "pretrained" / "tokenizer")
    return {"run": target, "before": before, "vit": str(vit), "bert": str(bert), "tok": tokenizer}


def test_the_run_keeps_what_rebuilds_its_pretrained_components(moved: dict[str, Any]) -> None:
    artifacts = moved["run"] / "artifacts"
    vision = artifacts / "components" / "vision"
    assert json.loads((vision / "config.json").read_text())["hidden_size"] == 32
    assert json.loads((vision / "modaloom-component.json").read_text()) == {
        "component": "vision",
        "type": "vit",
        "pretrained": moved["vit"],
    }
    assert json.loads((vision / "preprocessor_config.json").read_text())["image_mean"] == list(MEAN)
    assert not list(vision.glob("*.safetensors"))  # weights stay in the checkpoints
    assert json.loads((artifacts / "sources.json").read_text()) == {
        "pretrained": {"vision": moved["vit"], "text": moved["bert"]},
        "tokenizer": moved["tok"],
    }


def test_the_moved_run_loads_and_embeds_as_before(
    moved: dict[str, Any], shapes_manifest: Path
) -> None:
    after = embeddings(moved["run"], shapes_manifest)
    for name, tensor in moved["before"].items():
        assert torch.equal(after[name], tensor), name
    pipe = modaloom.load(moved["run"], device="cpu")
    assert tuple(pipe.run.processors["image"].pixels.mean) == MEAN  # type: ignore[attr-defined]


def test_its_spec_alone_names_the_deleted_directories(
    moved: dict[str, Any], registry: Registry
) -> None:
    with pytest.raises(SpecError) as error:
        load_spec(moved["run"] / "spec.yaml", registry=registry)
    assert f"model.components.vision.pretrained: {moved['vit']!r} does not exist" in str(
        error.value
    )


def test_eval_command_on_the_moved_run(moved: dict[str, Any]) -> None:
    run = moved["run"]
    assert (
        main(
            [
                "eval",
                str(run / "spec.yaml"),
                "--checkpoint",
                str(run),
                "--output",
                str(run / "m.json"),
            ]
        )
        == 0
    )
    assert 0.0 <= json.loads((run / "m.json").read_text())["retrieval.t2v.r1"] <= 1.0


def test_resume_of_the_moved_run(moved: dict[str, Any], tmp_path: Path, caplog: Any) -> None:
    run = tmp_path / "run"
    shutil.copytree(moved["run"], run)
    spec_yaml = (run / "spec.yaml").read_text()
    args = ["train", str(run / "spec.yaml"), "--output", str(run), "--resume", "--no-progress"]
    with caplog.at_level(logging.WARNING):
        assert main([*args, "--set", "train.steps=3"]) == 0
    assert (run / "checkpoints" / "step-00000003" / "model.safetensors").is_file()
    assert [r.getMessage() for r in caplog.records if "differs" in r.getMessage()] == []
    saved = yaml.safe_load((run / "spec.yaml").read_text())
    assert saved["model"]["components"]["vision"]["pretrained"] == moved["vit"]  # kept as written
    assert saved["train"]["steps"] == 3 and spec_yaml != (run / "spec.yaml").read_text()


def test_init_from_the_moved_run(
    moved: dict[str, Any], registry: Registry, shapes_manifest: Path, tmp_path: Path
) -> None:
    tree = run_tree(registry, shapes_manifest, Path("unused"), Path("unused"))
    tree["model"]["components"] = {
        "vision": {"type": "vit", "config": TINY_VIT},
        "text": {"type": "bert", "config": TINY_BERT},
    }
    tree["data"]["text"]["tokenizer"] = None  # the source run's
    tree["train"].update(steps=1, init_from={"path": str(moved["run"])})
    train(load_spec(tree, registry=registry), tmp_path, registry=registry, show_progress=False)
    report = json.loads((tmp_path / "init_report.json").read_text())
    assert report["components"] == ["vision", "text"] and report["unexpected"] == []
    assert report["tokenizer"] == str(moved["run"] / "artifacts" / "tokenizer")
    assert not [key for key in report["missing"] if key.startswith("components.")]


def test_exports_of_the_moved_run(
    moved: dict[str, Any], shapes_manifest: Path, tmp_path: Path
) -> None:
    assert main(["export", str(moved["run"]), "--output", str(tmp_path / "model")]) == 0
    after = embeddings(tmp_path / "model", shapes_manifest)
    for name, tensor in moved["before"].items():
        assert torch.equal(after[name], tensor), name
    component = ["export", str(moved["run"]), "--component", "vision"]
    assert main([*component, "--output", str(tmp_path / "vit")]) == 0
    processor = CLIPImageProcessor.from_pretrained(tmp_path / "vit")
    assert processor.image_mean == pytest.approx(list(MEAN))
    card = (tmp_path / "vit" / "README.md").read_text()
    assert f"- `vision`: `{moved['vit']}`" in card and f"- `text`: `{moved['bert']}`" in card


def test_a_component_of_another_type_is_not_built_from_the_kept_config(
    moved: dict[str, Any], registry: Registry, caplog: Any
) -> None:
    tree = yaml.safe_load((moved["run"] / "spec.yaml").read_text())
    tree["model"]["components"]["vision"] = {"type": "clip_vision", "pretrained": moved["vit"]}
    artifacts = moved["run"] / "artifacts"
    spec = load_spec(tree, registry=registry, provided=provided_values(artifacts))
    with caplog.at_level(logging.WARNING):
        model = portable_model(spec.model, artifacts)
    assert getattr(model.components["vision"], "pretrained", None) == moved["vit"]
    assert getattr(model.components["text"], "pretrained", None) == str(
        artifacts / "components" / "text"
    )
    assert [r.getMessage() for r in caplog.records] == [
        "model.components.vision is a 'clip_vision', but the run kept a 'vit': built from its "
        "pretrained"
    ]
