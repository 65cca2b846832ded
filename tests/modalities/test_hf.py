"""The shared Hugging Face base: every wrapper loads a saved checkpoint through `load_hf_model`."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
import torch
from transformers import (
    ASTConfig,
    ASTModel,
    BertConfig,
    BertLMHeadModel,
    BertModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedModel,
    ViTConfig,
    ViTModel,
)

from modaloom.core.cli import main
from modaloom.core.compose import BuildContext
from modaloom.core.errors import SpecError
from modaloom.core.plugins import load_plugins
from modaloom.modalities.hf import (
    HFEncoderSpec,
    component_path,
    load_hf_model,
    masked_mean,
    pool_tokens,
)
from modaloom.modalities.image import ViTEncoderSpec
from modaloom.tests.tiny import TINY_AST, TINY_BERT, TINY_CLIP_VISION, TINY_VIT

REGISTRY = load_plugins(entry_points=False)


@dataclass(frozen=True)
class Case:
    """One wrapper: the checkpoint it loads, where the loaded model sits, a config override."""

    name: str
    saved: Callable[[], PreTrainedModel]
    loaded: Callable[[Any], PreTrainedModel]
    override: tuple[str, Any]
    fields: tuple[tuple[str, Any], ...] = ()


def _vit() -> PreTrainedModel:
    return ViTModel(ViTConfig(**TINY_VIT), add_pooling_layer=False)


CASES = [
    Case(
        "bert",
        lambda: BertModel(BertConfig(**TINY_BERT, vocab_size=50), add_pooling_layer=False),
        lambda module: module.bert,
        ("hidden_dropout_prob", 0.3),
    ),
    Case("vit", _vit, lambda module: module.vit, ("hidden_dropout_prob", 0.3)),
    Case(
        "clip_vision",
        lambda: CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP_VISION)),
        lambda module: module.clip,
        ("attention_dropout", 0.2),
    ),
    Case(
        "ast",
        lambda: ASTModel(ASTConfig(**TINY_AST)),
        lambda module: module.ast,
        ("hidden_dropout_prob", 0.3),
    ),
    Case(
        "timesformer",
        _vit,
        lambda module: module.model.vit,
        ("layer_norm_eps", 1e-6),
        (("num_frames", 2),),
    ),
    Case("frame_mean", _vit, lambda module: module.vit, ("hidden_dropout_prob", 0.3)),
    Case(
        "bert_decoder",
        lambda: BertLMHeadModel(
            BertConfig(**TINY_BERT, vocab_size=50, is_decoder=True, add_cross_attention=True)
        ),
        lambda module: module.bert,
        ("hidden_dropout_prob", 0.3),
    ),
]


def build(fields: dict[str, Any], ctx: BuildContext | None = None) -> Any:
    kind = "decoder" if fields["type"] == "bert_decoder" else "encoder"
    entry = REGISTRY.get(kind, fields["type"])
    assert entry.config is not None and entry.factory is not None
    return entry.factory(entry.config.model_validate(fields), ctx or BuildContext(REGISTRY))


def saved_tensors(saved: PreTrainedModel, loaded: PreTrainedModel) -> dict[str, torch.Tensor]:
    """``saved``'s state dict, named as in ``loaded`` (an LM head model's ``bert.`` dropped)."""
    prefix = "bert." if isinstance(saved, BertLMHeadModel) else ""
    tensors = saved.state_dict()
    return {name.removeprefix(prefix): t for name, t in tensors.items() if name.startswith(prefix)}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_every_hf_wrapper_loads_a_saved_checkpoint_whole(case: Case, tmp_path: Path) -> None:
    torch.manual_seed(0)
    saved = case.saved()
    saved.save_pretrained(tmp_path)
    module = build({"type": case.name, "pretrained": str(tmp_path), **dict(case.fields)})
    loaded = case.loaded(module)
    expected, actual = saved_tensors(saved, loaded), loaded.state_dict()
    assert expected.keys() <= actual.keys(), sorted(expected.keys() - actual.keys())
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name
    assert loaded.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_config_overrides_apply_to_a_checkpoint(case: Case, tmp_path: Path) -> None:
    case.saved().save_pretrained(tmp_path)
    field, value = case.override
    fields = {"type": case.name, "pretrained": str(tmp_path), "config": {field: value}}
    loaded = case.loaded(build({**fields, **dict(case.fields)}))
    assert getattr(loaded.config, field) == value


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_every_hf_spec_extends_the_base(case: Case) -> None:
    kind = "decoder" if case.name == "bert_decoder" else "encoder"
    config = REGISTRY.get(kind, case.name).config
    assert config is not None and issubclass(config, HFEncoderSpec)


def test_an_unreadable_checkpoint_is_a_spec_error_at_its_component(tmp_path: Path) -> None:
    spec = ViTEncoderSpec(pretrained=str(tmp_path))  # exists, holds no checkpoint
    ctx = BuildContext(REGISTRY, specs={"vision": spec})
    with pytest.raises(SpecError) as info:
        load_hf_model(ViTModel, ViTConfig, spec, ctx)
    assert str(info.value).startswith(
        "spec is invalid (1 problem):\n  model.components.vision.pretrained: cannot load a "
        f"ViTModel from {str(tmp_path)!r}: "
    )


def validate(*overrides: str) -> tuple[int, str]:
    """``modaloom validate clip-tiny --set ...``: exit code and stderr."""
    arguments = [item for override in overrides for item in ("--set", override)]
    with contextlib.redirect_stderr(io.StringIO()) as err:
        code = main(["validate", "clip-tiny", *arguments])
    return code, err.getvalue()


def test_validate_refuses_a_local_checkpoint_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert validate(f"model.components.vision.pretrained={missing}") == (
        2,
        "error: clip-tiny is invalid (1 problem):\n  model.components.vision.pretrained: "
        f"{str(missing)!r} does not exist\n",
    )


def test_validate_refuses_a_model_name_outside_the_local_cache() -> None:
    assert validate("model.components.text.pretrained=modaloom-tests/no-such-model") == (
        2,
        "error: clip-tiny is invalid (1 problem):\n  model.components.text.pretrained: "
        "'modaloom-tests/no-such-model' is neither a local path nor a model in the Hugging Face "
        "cache, and nothing is downloaded at run time; give a checkpoint directory (or download "
        "the model first with `huggingface-cli download`)\n",
    )


@pytest.mark.parametrize(
    ("present", "absent"),
    [("./ckpt", "./other"), ("{root}/ckpt", "{root}/other"), ("ckpt/inner", "ckpt/other")],
)
def test_local_looking_paths_must_exist(
    present: str, absent: str, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt" / "inner").mkdir(parents=True)
    here, gone = present.format(root=tmp_path), absent.format(root=tmp_path)
    assert ViTEncoderSpec(pretrained=here).pretrained == here
    with pytest.raises(ValueError, match=f"{gone!r} does not exist"):
        ViTEncoderSpec(pretrained=gone)


def test_a_model_name_in_the_local_cache_is_accepted(tmp_path: Path, monkeypatch: Any) -> None:
    snapshot = tmp_path / "models--modaloom-tests--tiny-vit" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert ViTEncoderSpec(pretrained="modaloom-tests/tiny-vit").pretrained is not None
    with pytest.raises(ValueError, match="is neither a local path nor a model in the Hugging"):
        ViTEncoderSpec(pretrained="modaloom-tests/other-vit")


def test_a_random_init_takes_defaults_then_config_then_fixed_fields() -> None:
    spec = ViTEncoderSpec(config={**TINY_VIT, "image_size": 48, "qkv_bias": True})
    vit = load_hf_model(
        ViTModel,
        ViTConfig,
        spec,
        BuildContext(REGISTRY),
        defaults={"image_size": 16, "num_channels": 1},
        fixed={"qkv_bias": False},
        model_kwargs={"add_pooling_layer": False},
    )
    assert (vit.config.image_size, vit.config.num_channels, vit.config.qkv_bias) == (48, 1, False)
    assert vit.pooler is None and vit.config._attn_implementation == "sdpa"


def test_overrides_replace_the_spec_config_for_a_checkpoint(tmp_path: Path) -> None:
    _vit().save_pretrained(tmp_path)
    spec = ViTEncoderSpec(pretrained=str(tmp_path), config={"hidden_dropout_prob": 0.5})
    ctx = BuildContext(REGISTRY)
    kwargs = {"add_pooling_layer": False}
    overrides = {"layer_norm_eps": 1e-6}
    vit = load_hf_model(ViTModel, ViTConfig, spec, ctx, overrides=overrides, model_kwargs=kwargs)
    assert (vit.config.layer_norm_eps, vit.config.hidden_dropout_prob) == (1e-6, 0.0)


@pytest.mark.parametrize(
    ("switch", "argument", "expected"),
    [(True, None, True), (True, False, False), (False, True, True)],
)
def test_gradient_checkpointing_follows_the_spec_unless_overridden(
    switch: bool, argument: bool | None, expected: bool
) -> None:
    spec = ViTEncoderSpec(config=TINY_VIT, gradient_checkpointing=switch)
    vit = load_hf_model(
        ViTModel, ViTConfig, spec, BuildContext(REGISTRY), gradient_checkpointing=argument
    )
    flags = {getattr(layer, "gradient_checkpointing", False) for layer in vit.layers}
    assert flags == {expected}


def test_component_path_names_the_component_or_its_type() -> None:
    spec = ViTEncoderSpec()
    assert component_path(spec, BuildContext(REGISTRY, specs={"vision": spec})) == (
        "model.components.vision"
    )
    assert component_path(spec, BuildContext(REGISTRY)) == "model.components.<vit>"


def test_pool_tokens_takes_the_first_token_or_the_mean_after_skip() -> None:
    sequence = torch.arange(24.0).reshape(1, 4, 6).expand(2, 4, 6).clone()
    torch.testing.assert_close(pool_tokens(sequence, "cls"), sequence[:, 0])
    torch.testing.assert_close(pool_tokens(sequence, "mean"), sequence[:, 1:].mean(dim=1))
    torch.testing.assert_close(pool_tokens(sequence, "mean", skip=2), sequence[:, 2:].mean(dim=1))


def test_masked_pooling_averages_valid_tokens_only() -> None:
    sequence = torch.tensor([[[1.0], [3.0], [101.0]], [[2.0], [4.0], [6.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert pool_tokens(sequence, "mean", skip=0, mask=mask).flatten().tolist() == [2.0, 4.0]
    assert masked_mean(sequence, None).flatten().tolist() == [35.0, 4.0]
