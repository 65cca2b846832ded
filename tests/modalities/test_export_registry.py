"""Every registered encoder and decoder with a Hugging Face layout: ``export_pretrained`` writes a
directory that its `transformers` class (``export_class``) loads with every weight equal.

Generated from the registry like tests/modalities/test_encoder_registry.py: a component added
later is covered when it sets ``export_class``; one without (``None``) must refuse with
`ExportError`. The configuration a run keeps for a ``pretrained`` component (``save_config``)
must rebuild the same architecture, computing the same outputs once the weights are loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from torch import Tensor, nn

from modaloom.core.errors import ExportError
from modaloom.core.portable import RECORD_FILE
from modaloom.core.registry import Component
from modaloom.modalities.timesformer_hf import timesformer_tensors
from modaloom.tests.modalities.test_encoder_registry import (
    DECODERS,
    ENCODERS,
    REGISTRY,
    build,
    fields_of,
    synthetic_inputs,
    tiny_fields,
)

BUILTIN = {
    "bert": "BertModel",
    "bert_decoder": "BertLMHeadModel",
    "vit": "ViTModel",
    "frame_mean": "ViTModel",
    "clip_vision": "CLIPVisionModel",
    "ast": "ASTModel",
    "timesformer": "TimesformerModel",
}
"""The class each built-in exports to."""
POOLERS = ("pooler.",)
"""Tensors `transformers` adds on load that the wrappers never had (initialised, unused)."""


def ours_in_hf_names(module: nn.Module, loaded: nn.Module) -> dict[str, Tensor]:
    """The component's tensors under the names the loaded `transformers` model gives them."""
    state = module.state_dict()
    if module.export_class == "TimesformerModel":  # type: ignore[attr-defined]
        mapped, unmapped = timesformer_tensors(loaded.state_dict())
        assert unmapped == []
        inner = module.model.state_dict()  # type: ignore[union-attr,operator]
        assert mapped.keys() == inner.keys()
        return {key: inner[key] for key in mapped}  # compared in our names below
    if module.export_class == "BertLMHeadModel":  # type: ignore[attr-defined]
        return {key.replace("head.", "cls.", 1): value for key, value in state.items()}
    return {key.split(".", 1)[1]: value for key, value in state.items()}


def hf_tensors(module: nn.Module, loaded: nn.Module) -> dict[str, Tensor]:
    if module.export_class == "TimesformerModel":  # type: ignore[attr-defined]
        return timesformer_tensors(loaded.state_dict())[0]
    return loaded.state_dict()


def cases() -> list[Any]:
    return [pytest.param(c, id=c.name) for c in [*ENCODERS, *DECODERS]]


def test_every_builtin_has_its_class() -> None:
    classes = {}
    for component in [*ENCODERS, *DECODERS]:
        if component.name in BUILTIN:
            module = build(REGISTRY, component.kind, tiny_fields(component))
            classes[component.name] = module.export_class
    assert classes == BUILTIN


@pytest.mark.parametrize("component", cases())
def test_export_loads_in_transformers_with_every_weight_equal(
    component: Component, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    module = build(REGISTRY, component.kind, tiny_fields(component))
    if module.export_class is None:
        with pytest.raises(ExportError):
            module.export_pretrained(tmp_path)
        return
    with torch.no_grad():  # no weight left at a value a fresh init would also give
        for parameter in module.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)
    module.export_pretrained(tmp_path)
    loaded = getattr(transformers, module.export_class).from_pretrained(tmp_path)
    ours, theirs = ours_in_hf_names(module, loaded), hf_tensors(module, loaded)
    assert ours.keys() <= theirs.keys(), sorted(ours.keys() - theirs.keys())[:5]
    for name, tensor in ours.items():
        assert torch.equal(theirs[name], tensor), name
    extra = [key for key in theirs if key not in ours and not key.startswith(POOLERS)]
    assert extra == []


def test_a_decoder_with_a_condition_adapter_refuses(tmp_path: Path) -> None:
    decoder = next(c for c in DECODERS if c.name == "bert_decoder")
    module = build(REGISTRY, "decoder", tiny_fields(decoder, condition_dim=16))
    with pytest.raises(ExportError) as error:
        module.export_pretrained(tmp_path)
    assert str(error.value) == "its condition adapter (16 -> 32) has no place in a BertLMHeadModel"


@pytest.mark.parametrize("component", cases())
def test_a_kept_config_rebuilds_the_same_architecture(component: Component, tmp_path: Path) -> None:
    """What a run keeps for a ``pretrained`` component (`save_config` and the record) builds the
    same tensors, which the run's weights then fill (`modaloom.core.portable`)."""
    torch.manual_seed(0)
    module = build(REGISTRY, component.kind, tiny_fields(component))
    if module.export_class is None:
        return  # a third-party component without a layout may still keep its config
    module.save_config(tmp_path)
    (tmp_path / RECORD_FILE).write_text(json.dumps({"component": "c", "type": component.name}))
    rebuilt = build(REGISTRY, component.kind, tiny_fields(component, pretrained=str(tmp_path)))
    shapes = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    assert {key: tuple(value.shape) for key, value in rebuilt.state_dict().items()} == shapes
    rebuilt.load_state_dict(module.state_dict(), strict=True)
    module.eval()
    rebuilt.eval()
    if component.kind == "decoder":
        text = synthetic_inputs(component, "text")
        same = [m(text["input_ids"], text["attention_mask"]).logits for m in (module, rebuilt)]
    else:
        inputs = synthetic_inputs(component, fields_of(component)[0])
        same = [m(inputs).sequence for m in (module, rebuilt)]
    assert torch.equal(same[1], same[0])


def test_a_timesformer_with_a_tubelet_refuses(tmp_path: Path) -> None:
    timesformer = next(c for c in ENCODERS if c.name == "timesformer")
    module = build(REGISTRY, "encoder", tiny_fields(timesformer, tubelet=2))
    with pytest.raises(ExportError) as error:
        module.export_pretrained(tmp_path)
    assert str(error.value) == (
        "its 3-D tubelet embedding (2 frames per patch) has no place in a TimesformerModel"
    )
