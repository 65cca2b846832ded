"""Every registered encoder and decoder: a tiny CPU forward and backward pass, from the registry.

The test list is generated from ``load_plugins(entry_points=False)``, so an encoder added later is
covered without editing this file, provided it registers ``modality=<batch field>`` (or a tuple
of fields; each field gets synthetic inputs, every field of a tuple is tested) and has a tiny
entry: a built-in's in ``tests/tiny.py`` (`ENCODERS`), a third-party plugin's registered as
``tiny={...}``. A component without one fails `test_every_component_has_a_tiny_entry`.

* the entry's spec fields make a CPU-sized config, validated with the component's spec class
  as ``{"type": name, **tiny}`` (minus ``inputs``);
* optionally ``tiny["inputs"] = {field: hints}`` for the synthetic inputs. Known fields take
  keyword hints, with these defaults::

      text:  {"length": 8, "vocab": 100}                       # input_ids, attention_mask
      image: {"size": 32}                                      # pixel_values (B, 3, S, S)
      video: {"frames": 2, "size": 32}                         # pixel_values (B, T, 3, S, S)
      audio: {"clips": 2, "mel_bins": 64, "length": 128}       # spectrogram (B, N, M, L)

  Any other field must give ``{tensor_name: per_sample_shape}``; those tensors are drawn from
  a standard normal (B, *shape).

Contracts checked: an encoder returns an `EncoderOutput` with sequence (B, N, D), pooled (B, D),
mask None or (B, N), D = its ``output_dim``. A decoder takes ``(input_ids, attention_mask,
condition=(B, N, condition_dim), condition_mask=(B, N))`` and returns ``hidden`` (B, L, D) and
``logits`` (B, L, vocab_size). Gradients must be finite and not all zero; components with a
``gradient_checkpointing`` spec field must give the same outputs and gradients with it on.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn
from transformers import BertConfig, BertModel, ViTConfig, ViTModel

from modaloom.core.compose import BuildContext
from modaloom.core.interfaces import EncoderOutput
from modaloom.core.plugins import load_plugins
from modaloom.core.registry import Component, Registry
from modaloom.tests.tiny import TINY_BERT, TINY_VIT, tiny_entry

BATCH = 2
REGISTRY = load_plugins(entry_points=False)
ENCODERS = REGISTRY.of_kind("encoder")
DECODERS = REGISTRY.of_kind("decoder")
DEFAULT_HINTS: dict[str, dict[str, int]] = {
    "text": {"length": 8, "vocab": 100},
    "image": {"size": 32},
    "video": {"frames": 2, "size": 32},
    "audio": {"clips": 2, "mel_bins": 64, "length": 128},
}


def fields_of(component: Component) -> tuple[str, ...]:
    modality = component.extra.get("modality", ())
    return (modality,) if isinstance(modality, str) else tuple(modality)


def build(registry: Registry, kind: Any, fields: dict[str, Any]) -> Any:
    """Validate ``fields`` with the component's spec class and call its factory."""
    entry = registry.get(kind, fields["type"])
    assert entry.config is not None and entry.factory is not None
    module = entry.factory(entry.config.model_validate(fields), BuildContext(registry))
    return module


def tiny_of(component: Component) -> dict[str, Any]:
    """The component's tiny entry (see the module docstring)."""
    tiny = tiny_entry(component)
    if tiny is None:
        pytest.fail(f"{component.name}: no tiny entry; add it to tests/tiny.py or register tiny=")
    return tiny


def tiny_fields(component: Component, **overrides: Any) -> dict[str, Any]:
    tiny = {k: v for k, v in tiny_of(component).items() if k != "inputs"}
    return {"type": component.name, **tiny, **overrides}


def synthetic_inputs(component: Component, field: str, seed: int = 0) -> dict[str, Tensor]:
    """Inputs for one batch field, per the conventions in the module docstring."""
    generator = torch.Generator().manual_seed(seed)
    hints = {
        **DEFAULT_HINTS.get(field, {}),
        **tiny_of(component).get("inputs", {}).get(field, {}),
    }
    present = torch.ones(BATCH, dtype=torch.bool)
    if field == "text":
        ids = torch.randint(1, hints["vocab"], (BATCH, hints["length"]), generator=generator)
        mask = torch.ones_like(ids)
        mask[-1, hints["length"] // 2 :] = 0  # one padded row
        return {"input_ids": ids * mask, "attention_mask": mask, "present": present}
    if field == "image":
        size = hints["size"]
        return {
            "pixel_values": torch.randn(BATCH, 3, size, size, generator=generator),
            "present": present,
        }
    if field == "video":
        video = (BATCH, hints["frames"], 3, hints["size"], hints["size"])
        return {"pixel_values": torch.randn(*video, generator=generator), "present": present}
    if field == "audio":
        audio = (BATCH, hints["clips"], hints["mel_bins"], hints["length"])
        return {"spectrogram": torch.randn(*audio, generator=generator), "present": present}
    if not hints:
        pytest.fail(f"{component.name}: no input hints for field {field!r}; add tiny['inputs']")
    inputs = {
        name: torch.randn(BATCH, *shape, generator=generator) for name, shape in hints.items()
    }
    return {**inputs, "present": present}


def run_encoder(module: nn.Module, inputs: dict[str, Tensor]) -> tuple[EncoderOutput, Tensor]:
    output = module(inputs)
    loss = output.sequence.pow(2).mean() + output.pooled.pow(2).mean()
    loss.backward()
    return output, loss


def run_decoder(module: Any, text: dict[str, Tensor]) -> tuple[Any, Tensor]:
    generator = torch.Generator().manual_seed(1)
    condition = torch.randn(BATCH, 5, module.condition_dim, generator=generator)
    condition_mask = torch.ones(BATCH, 5, dtype=torch.long)
    condition_mask[0, -1] = 0
    output = module(text["input_ids"], text["attention_mask"], condition, condition_mask)
    loss = output.hidden.pow(2).mean() + output.logits.pow(2).mean()
    loss.backward()
    return output, loss


def assert_gradients(module: nn.Module) -> None:
    grads = [p.grad for p in module.parameters() if p.requires_grad and p.grad is not None]
    assert grads, "no parameter received a gradient"
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def encoder_cases() -> list[Any]:
    return [
        pytest.param(component, field, id=f"{component.name}-{field}")
        for component in ENCODERS
        for field in fields_of(component)
    ]


def test_the_registry_holds_the_builtin_encoders_and_decoders() -> None:
    """Guards the generated lists below against silently testing nothing."""
    names = {c.name for c in ENCODERS}
    assert {"bert", "vit", "timesformer", "frame_mean", "ast", "clip_vision"} <= names
    assert "bert_decoder" in {c.name for c in DECODERS}


def test_every_component_has_a_tiny_entry() -> None:
    missing = [c.name for c in [*ENCODERS, *DECODERS] if tiny_entry(c) is None]
    assert missing == []


@pytest.mark.parametrize(("component", "field"), encoder_cases())
def test_encoder_forward_backward(component: Component, field: str) -> None:
    torch.manual_seed(0)
    module = build(REGISTRY, "encoder", tiny_fields(component))
    output, loss = run_encoder(module, synthetic_inputs(component, field))
    assert isinstance(output, EncoderOutput)
    batch, tokens, dim = output.sequence.shape
    assert (batch, dim) == (BATCH, module.output_dim)
    assert output.pooled.shape == (BATCH, module.output_dim)
    assert output.mask is None or output.mask.shape == (BATCH, tokens)
    assert torch.isfinite(loss)
    assert_gradients(module)


@pytest.mark.parametrize("component", DECODERS, ids=lambda c: c.name)
def test_decoder_forward_backward(component: Component) -> None:
    torch.manual_seed(0)
    module = build(REGISTRY, "decoder", tiny_fields(component))
    text = synthetic_inputs(component, "text")
    output, loss = run_decoder(module, text)
    length = text["input_ids"].shape[1]
    assert output.hidden.shape == (BATCH, length, module.output_dim)
    assert output.logits.shape == (BATCH, length, module.vocab_size)
    assert torch.isfinite(loss)
    assert_gradients(module)


def checkpointing_cases() -> list[Any]:
    cases = []
    for component in [*ENCODERS, *DECODERS]:
        assert component.config is not None
        if "gradient_checkpointing" in component.config.model_fields:
            field = "text" if component.kind == "decoder" else fields_of(component)[0]
            cases.append(pytest.param(component, field, id=f"{component.name}-{field}"))
    return cases


@pytest.mark.parametrize(("component", "field"), checkpointing_cases())
def test_gradient_checkpointing_gives_the_same_outputs_and_gradients(
    component: Component, field: str
) -> None:
    plain = build(REGISTRY, component.kind, tiny_fields(component))
    recomputed = build(
        REGISTRY, component.kind, tiny_fields(component, gradient_checkpointing=True)
    )
    recomputed.load_state_dict(plain.state_dict())
    flags = [getattr(m, "gradient_checkpointing", False) for m in recomputed.modules()]
    assert any(flag is True for flag in flags), "the switch did not enable checkpointing"
    results = []
    for module in (plain, recomputed):
        module.train()
        torch.manual_seed(0)  # same dropout masks in both runs
        if component.kind == "decoder":
            output, _ = run_decoder(module, synthetic_inputs(component, field))
            results.append(output.hidden)
        else:
            output, _ = run_encoder(module, synthetic_inputs(component, field))
            results.append(output.sequence)
    torch.testing.assert_close(results[1], results[0])
    grads = [
        {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
        for m in (plain, recomputed)
    ]
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


def assert_same_weights(loaded: nn.Module, saved: nn.Module) -> None:
    """Every tensor of ``saved`` is in ``loaded`` (same name, same values)."""
    expected, actual = saved.state_dict(), loaded.state_dict()
    assert expected.keys() <= actual.keys(), sorted(expected.keys() - actual.keys())
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


def test_vit_loads_a_pretrained_directory(tmp_path: Any) -> None:
    saved = ViTModel(ViTConfig(**TINY_VIT), add_pooling_layer=False)
    saved.save_pretrained(tmp_path)
    encoder = build(REGISTRY, "encoder", {"type": "vit", "pretrained": str(tmp_path)})
    assert_same_weights(encoder.vit, saved)


def test_bert_loads_a_pretrained_directory(tmp_path: Any) -> None:
    saved = BertModel(BertConfig(**TINY_BERT, vocab_size=120), add_pooling_layer=False)
    saved.save_pretrained(tmp_path)
    encoder = build(REGISTRY, "encoder", {"type": "bert", "pretrained": str(tmp_path)})
    assert_same_weights(encoder.bert, saved)
