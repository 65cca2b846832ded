"""``modaloom export``: a component in its Hugging Face layout with its processor's settings and
a model card, the whole model for `modaloom.load`, and the refusals."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertModel, CLIPImageProcessor, ViTModel

import modaloom
from modaloom.core.cli import main
from modaloom.core.errors import ExportError
from modaloom.core.export import export_component
from modaloom.core.plugins import load_plugins
from modaloom.core.registry import Registry
from modaloom.core.runner import train
from modaloom.core.spec import load_spec, resolve_tree

EXTRAS = Path(__file__).parents[1] / "plugins" / "loom_extras"
CAPTIONS = ["a red circle", "a blue square"]


def tiny_tree(registry: Registry, manifest: Path) -> dict[str, Any]:
    tree = resolve_tree("clip-tiny", registry)
    tree["data"]["sources"]["train"]["path"] = str(manifest)
    tree["data"]["eval_sources"] = {"test": {"type": "jsonl", "path": str(manifest)}}
    tree["eval"] = [{"type": "retrieval", "source": "test"}]
    tree["train"].update(steps=2, eval_every=2, log_every=1)
    return tree


@pytest.fixture(scope="module")
def run(registry: Registry, shapes_manifest: Path, tmp_path_factory: Any) -> Path:
    output = tmp_path_factory.mktemp("export") / "run"
    spec = load_spec(tiny_tree(registry, shapes_manifest), registry=registry)
    train(spec, output, registry=registry, show_progress=False)
    return output


def weights(run: Path, prefix: str) -> dict[str, torch.Tensor]:
    saved = load_file(run / "checkpoints" / "step-00000002" / "model.safetensors")
    return {key[len(prefix) :]: value for key, value in saved.items() if key.startswith(prefix)}


def test_vision_export_loads_in_transformers_with_its_processor_and_card(
    run: Path, tmp_path: Path, capsys: Any
) -> None:
    output = tmp_path / "vit"
    assert main(["export", str(run), "--component", "vision", "--output", str(output)]) == 0
    files = "README.md, config.json, model.safetensors, preprocessor_config.json"
    assert capsys.readouterr().out == f"wrote {output}: {files}\n"
    loaded = ViTModel.from_pretrained(output).state_dict()
    for key, tensor in weights(run, "components.vision.vit.").items():
        assert torch.equal(loaded[key], tensor), key
    processor = CLIPImageProcessor.from_pretrained(output)
    assert processor.crop_size == {"height": 32, "width": 32}
    assert processor.image_mean == pytest.approx([0.485, 0.456, 0.406])
    card = (output / "README.md").read_text()
    assert "# run: component `vision` (ViTModel)" in card
    assert "from transformers import ViTModel" in card
    assert "| `retrieval.t2v.r1` |" in card and "| `loss` |" in card
    assert "- `train` (sources): jsonl, path=" in card
    assert "- random initialisation (no `pretrained:` component)" in card
    assert "type: itc" in card  # the spec


def test_text_export_brings_the_tokenizer(run: Path, tmp_path: Path) -> None:
    export_component(run, "text", tmp_path / "bert")
    loaded = BertModel.from_pretrained(tmp_path / "bert").state_dict()
    for key, tensor in weights(run, "components.text.bert.").items():
        assert torch.equal(loaded[key], tensor), key
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "bert")
    ours = modaloom.load(run, device="cpu").batch("text", CAPTIONS)["text"]["input_ids"]
    theirs = tokenizer(CAPTIONS, padding=True, return_tensors="pt")["input_ids"]
    assert torch.equal(theirs, ours)


def test_whole_model_export_loads_with_modaloom(
    run: Path, registry: Registry, shapes_manifest: Path, tmp_path: Path, capsys: Any
) -> None:
    output = tmp_path / "model"
    assert main(["export", str(run), "--output", str(output)]) == 0
    entries = "README.md, artifacts, meta.json, model.safetensors, spec.yaml"
    assert capsys.readouterr().out == f"wrote {output}: {entries}\n"
    ours, theirs = modaloom.load(run, device="cpu"), modaloom.load(output, device="cpu")
    image = [shapes_manifest.parent / "img0.png"]
    assert torch.equal(theirs.embed("text", CAPTIONS), ours.embed("text", CAPTIONS))
    assert torch.equal(theirs.embed("image", image), ours.embed("image", image))
    assert "# run: the whole model" in (output / "README.md").read_text()
    assert main(["eval", str(output / "spec.yaml"), "--checkpoint", str(output)]) == 0
    assert "retrieval.t2v.r1" in json.loads((output / "metrics.json").read_text())
    tree = tiny_tree(registry, shapes_manifest)  # and a run can start from it
    tree["train"].update(steps=1, eval_every=None, init_from={"path": str(output)})
    train(
        load_spec(tree, registry=registry),
        tmp_path / "tuned",
        registry=registry,
        show_progress=False,
    )
    report = json.loads((tmp_path / "tuned" / "init_report.json").read_text())
    assert report["components"] == ["vision", "text"] and report["source"] == str(output)


def test_an_output_with_files_is_refused(run: Path, tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["export", str(run), "--output", str(tmp_path)]) == 2
    message = f"error: {tmp_path} is not empty; pass a new or empty --output\n"
    assert capsys.readouterr().err == message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_an_unknown_component_is_refused(run: Path, tmp_path: Path, capsys: Any) -> None:
    args = ["export", str(run), "--component", "audio", "--output", str(tmp_path / "x")]
    assert main(args) == 2
    assert capsys.readouterr().err == (
        "error: the run has no component 'audio'; components: vision, text; those with a "
        "Hugging Face layout: vision (ViTModel), text (BertModel)\n"
    )


@pytest.fixture
def extras_registry() -> Any:
    sys.path.insert(0, str(EXTRAS))
    try:
        yield load_plugins(entry_points=False, extra=[importlib.import_module("loom_extras")])
    finally:
        sys.path.remove(str(EXTRAS))
        sys.modules.pop("loom_extras", None)


def test_a_component_without_a_layout_names_those_with_one(
    extras_registry: Registry, shapes_manifest: Path, tmp_path: Path
) -> None:
    tree = tiny_tree(extras_registry, shapes_manifest)
    tree["model"]["components"]["vision"] = {"type": "pixel_mlp", "hidden": 64}
    tree["train"].update(steps=1, eval_every=None)
    spec = load_spec(tree, registry=extras_registry)
    train(spec, tmp_path / "run", registry=extras_registry, show_progress=False)
    with pytest.raises(ExportError) as error:
        export_component(tmp_path / "run", "vision", tmp_path / "out", registry=extras_registry)
    assert str(error.value) == (
        "component 'vision' (pixel_mlp) has no Hugging Face layout; components that have one: "
        "text (BertModel); or export the whole model (leave out --component)"
    )
    assert not (tmp_path / "out").exists()
