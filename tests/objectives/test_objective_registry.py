"""Every registered objective: finite loss and gradients on a tiny batch, from the registry.

The list is generated from ``load_plugins(entry_points=False)``, so an objective added later is
covered without editing this file, provided it has a tiny entry: a built-in's in
``tests/tiny.py`` (`OBJECTIVES`), a third-party plugin's registered with ``registry.add``:

* ``tiny={...}``: spec fields of a CPU-sized config, validated with the objective's spec class
  as ``{"type": name, **tiny}`` (default ``{}``);
* ``requires={"components": {name: component spec fields}, "batch": [field, ...]}``: the
  components of the tiny `LoomModel` (validated with their registered spec classes and built
  by `build_model` with a WordPiece text processor trained on a few captions) and the batch
  fields to synthesise; optionally ``"objectives": [spec fields, ...]``, objectives built
  before it that it uses (``vq_tokenizer`` trains an ``mvlm``'s tokenizer). Default:
  ``{"components": {"vision": tiny vit, "text": tiny bert},
  "batch": ["image", "text"]}`` (what the in-batch ``itc`` needs).

Known batch fields (B = 4)::

    text:   tokenized captions of different lengths (one padded row)
    image:  pixel_values (B, 3, 32, 32)
    video:  pixel_values (B, 2, 3, 32, 32)
    audio:  spectrogram (B, 1, 64, 128); the last sample has no audio (present False)
    labels: (B,) long [0, 0, -1, 1]
    qa:     {"answer_start": (B,) long}, the position after the first [SEP]

Each objective runs two training steps (forward, backward, ``after_optimizer_step``) so that
queue-based objectives also run with a filled queue; every ``*_loss`` term must be finite,
gradients finite, and at least one parameter must get a non-zero gradient.
"""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor

from modaloom.core.compose import LoomModel, build_model
from modaloom.core.interfaces import Batch
from modaloom.core.plugins import load_plugins
from modaloom.core.registry import Component, Registry
from modaloom.core.spec import build_spec_class
from modaloom.modalities.text import TextProcessor, train_wordpiece
from modaloom.tests.tiny import IMAGE_TEXT_BATCH, requires_entry, tiny_entry

REGISTRY = load_plugins(entry_points=False)
OBJECTIVES = REGISTRY.of_kind("objective")
BATCH = 4
CAPTIONS = [
    "a red square",
    "a small blue circle on the left side",
    "two green triangles",
    "a yellow circle",
]
DEFAULT_REQUIRES: dict[str, Any] = IMAGE_TEXT_BATCH


def text_processor() -> TextProcessor:
    """A WordPiece tokenizer trained on the test captions."""
    return TextProcessor(train_wordpiece(CAPTIONS * 4, vocab_size=120), max_length=16)


PROCESSOR = text_processor()


def synthetic_batch(fields: list[str], seed: int = 0) -> Batch:
    """A batch holding ``fields``, as described in the module docstring."""
    generator = torch.Generator().manual_seed(seed)
    present = torch.ones(BATCH, dtype=torch.bool)
    batch: Batch = {"__keys__": [f"s{i}" for i in range(BATCH)], "__skipped__": []}
    rng = random.Random(seed)
    if "text" in fields or "qa" in fields:
        items = [PROCESSOR.process(c, key="k", train=False, rng=rng) for c in CAPTIONS]
        batch["text"] = PROCESSOR.collate(list(items))
    if "image" in fields:
        pixels = torch.randn(BATCH, 3, 32, 32, generator=generator)
        batch["image"] = {"pixel_values": pixels, "present": present.clone()}
    if "video" in fields:
        pixels = torch.randn(BATCH, 2, 3, 32, 32, generator=generator)
        batch["video"] = {"pixel_values": pixels, "present": present.clone()}
    if "audio" in fields:
        spectrogram = torch.randn(BATCH, 1, 64, 128, generator=generator)
        audio_present = present.clone()
        audio_present[-1] = False
        batch["audio"] = {"spectrogram": spectrogram, "present": audio_present}
    if "labels" in fields:
        batch["labels"] = torch.tensor([0, 0, -1, 1])
    if "qa" in fields:
        sep = PROCESSOR.token_id("[SEP]")
        first_sep = (batch["text"]["input_ids"] == sep).int().argmax(dim=1)
        batch["qa"] = {"answer_start": first_sep + 1}
    return batch


def component_kind(registry: Registry, type_name: str) -> Any:
    return "encoder" if type_name in registry.names("encoder") else "decoder"


def tiny_model(registry: Registry, objective: Component, **overrides: Any) -> LoomModel:
    """A tiny `LoomModel` with ``objective`` and the components it requires."""
    requires = requires_entry(objective) or DEFAULT_REQUIRES
    components = {}
    for name, fields in requires["components"].items():
        entry = registry.get(component_kind(registry, fields["type"]), fields["type"])
        assert entry.config is not None
        components[name] = entry.config.model_validate(fields)
    assert objective.config is not None
    tiny = {**(tiny_entry(objective) or {}), **overrides}
    spec = objective.config.model_validate({"type": objective.name, **tiny})
    others = [
        registry.get("objective", fields["type"]).config.model_validate(fields)  # type: ignore[union-attr]
        for fields in requires.get("objectives", [])
    ]
    model_spec = SimpleNamespace(components=components, objectives=[*others, spec])
    return build_model(model_spec, registry, {"text": PROCESSOR})


def batch_fields(objective: Component) -> list[str]:
    fields: list[str] = (requires_entry(objective) or DEFAULT_REQUIRES)["batch"]
    return fields


def test_the_registry_holds_every_objective_of_spec_section_b() -> None:
    """Guards the generated list below against silently testing nothing."""
    names = {c.name for c in OBJECTIVES}
    expected = {"itc", "itc_queue", "univlc", "cots_contrastive", "itm", "lm", "mgc", "mga"}
    assert expected | {"mvlm"} <= names


def test_every_objective_has_a_tiny_entry() -> None:
    missing = [o.name for o in OBJECTIVES if tiny_entry(o) is None or requires_entry(o) is None]
    assert missing == []


def test_objective_specs_join_the_experiment_schema() -> None:
    spec_class = build_spec_class(load_plugins(entry_points=False))
    assert "objectives" in spec_class.model_fields["model"].annotation.model_fields


def _gradients(model: LoomModel) -> list[Tensor]:
    return [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda c: c.name)
def test_objective_gives_finite_loss_and_gradients(objective: Component) -> None:
    torch.manual_seed(0)
    model = tiny_model(REGISTRY, objective)
    for step in range(2):
        model.zero_grad(set_to_none=True)
        output = model(synthetic_batch(batch_fields(objective), seed=step))
        losses = {k: v for k, v in output.terms.items() if k.endswith("_loss")}
        assert losses, f"{objective.name} returned no *_loss term"
        assert torch.isfinite(output.loss), output.terms
        assert all(torch.isfinite(v) for v in output.terms.values()), output.terms
        output.loss.backward()
        grads = _gradients(model)
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)
        model.after_optimizer_step()


def first_sample(batch: Batch) -> Batch:
    """The batch cut to its first sample (B = 1)."""
    out: Batch = {}
    for key, value in batch.items():
        if isinstance(value, Tensor):
            out[key] = value[:1]
        elif isinstance(value, dict):
            out[key] = {name: tensor[:1] for name, tensor in value.items()}
        else:
            out[key] = value[:1]
    return out


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda c: c.name)
def test_objective_handles_a_batch_of_one(objective: Component) -> None:
    torch.manual_seed(0)
    model = tiny_model(REGISTRY, objective)
    output = model(first_sample(synthetic_batch(batch_fields(objective))))
    assert torch.isfinite(output.loss) and output.loss.requires_grad, output.terms
    output.loss.backward()
    assert all(torch.isfinite(g).all() for g in _gradients(model))
