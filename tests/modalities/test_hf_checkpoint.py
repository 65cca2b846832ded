"""A ``pretrained:`` component loads whole or is refused; intended resizes are logged once."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    ASTConfig,
    ASTForAudioClassification,
    BertConfig,
    BertForMaskedLM,
    BertForPreTraining,
    BertModel,
    CLIPConfig,
    CLIPModel,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

from modaloom.core.compose import BuildContext
from modaloom.core.errors import SpecError
from modaloom.core.plugins import load_plugins
from modaloom.modalities.hf_checkpoint import LoadReport
from modaloom.modalities.image import ImageProcessor, ImageSpec
from modaloom.tests.tiny import TINY_AST, TINY_BERT, TINY_VIT

REGISTRY = load_plugins(entry_points=False)
TAIL = (
    "It is a checkpoint of another architecture or size: give a {target} checkpoint, or remove "
    "`pretrained` to start from a random init"
)


def build(fields: dict[str, Any], name: str = "vision", **context: Any) -> Any:
    kind = "decoder" if fields["type"] == "bert_decoder" else "encoder"
    entry = REGISTRY.get(kind, fields["type"])
    assert entry.config is not None and entry.factory is not None
    spec = entry.config.model_validate(fields)
    return entry.factory(spec, BuildContext(REGISTRY, specs={name: spec}, **context))


def refusal(fields: dict[str, Any], name: str = "vision") -> str:
    with pytest.raises(SpecError) as info:
        build(fields, name)
    return str(info.value)


def tiny_bert(**extra: Any) -> BertConfig:
    return BertConfig(**TINY_BERT, vocab_size=50, **extra)


def test_a_checkpoint_of_another_architecture_is_refused_naming_the_keys(tmp_path: Path) -> None:
    BertModel(tiny_bert(), add_pooling_layer=False).save_pretrained(tmp_path)
    assert refusal({"type": "vit", "pretrained": str(tmp_path)}) == (
        "spec is invalid (1 problem):\n  model.components.vision.pretrained: checkpoint "
        f"{str(tmp_path)!r} does not fit a ViTModel: 26 weights of the component are not in it "
        "(embeddings.cls_token, embeddings.patch_embeddings.projection.bias, "
        "embeddings.patch_embeddings.projection.weight, ...); 25 tensors of it would be unused "
        "(embeddings.LayerNorm.bias, embeddings.LayerNorm.weight, "
        "embeddings.position_embeddings.weight, ...). " + TAIL.format(target="ViTModel")
    )


def test_a_checkpoint_of_another_size_is_refused_with_both_shapes(tmp_path: Path) -> None:
    ViTModel(ViTConfig(**TINY_VIT), add_pooling_layer=False).save_pretrained(tmp_path)
    fields = {"type": "vit", "pretrained": str(tmp_path), "config": {"image_size": 64}}
    assert refusal(fields) == (
        "spec is invalid (1 problem):\n  model.components.vision.pretrained: checkpoint "
        f"{str(tmp_path)!r} does not fit a ViTModel: 1 tensor differs in shape "
        "(embeddings.position_embeddings: [1, 17, 32] in the checkpoint, [1, 65, 32] in the "
        "component). " + TAIL.format(target="ViTModel")
    )


def test_a_checkpoint_without_the_lm_head_leaves_the_decoder_uninitialised(
    tmp_path: Path,
) -> None:
    BertModel(tiny_bert(), add_pooling_layer=False).save_pretrained(tmp_path)
    assert refusal({"type": "bert_decoder", "pretrained": str(tmp_path)}, "decoder") == (
        "spec is invalid (1 problem):\n  model.components.decoder.pretrained: checkpoint "
        f"{str(tmp_path)!r} does not fit a BertLMHeadModel: 6 weights of the component are not "
        "in it (cls.predictions.bias, cls.predictions.decoder.bias, "
        "cls.predictions.transform.LayerNorm.bias, ...). " + TAIL.format(target="BertLMHeadModel")
    )


def test_a_masked_lm_checkpoint_fills_the_decoder_but_its_new_cross_attention(
    tmp_path: Path,
) -> None:
    saved = BertForMaskedLM(tiny_bert())
    saved.save_pretrained(tmp_path)
    decoder = build({"type": "bert_decoder", "pretrained": str(tmp_path)}, "decoder")
    loaded = decoder.bert.state_dict()
    for name, tensor in saved.bert.state_dict().items():
        assert torch.equal(loaded[name], tensor), name
    assert hasattr(decoder.bert.encoder.layer[0], "crossattention")


def tiny_clip() -> CLIPModel:
    text = {**TINY_BERT, "vocab_size": 50, "max_position_embeddings": 16}
    return CLIPModel(CLIPConfig(vision_config=TINY_VIT, text_config=text))


@pytest.mark.parametrize(
    ("kind", "saved", "source", "target"),
    [
        ("bert", lambda: BertForPreTraining(tiny_bert()), lambda m: m.bert, lambda e: e.bert),
        (
            "vit",
            lambda: ViTForImageClassification(ViTConfig(**TINY_VIT, num_labels=3)),
            lambda m: m.vit,
            lambda e: e.vit,
        ),
        ("clip_vision", tiny_clip, lambda m: m.vision_model, lambda e: e.clip),
        (
            "ast",
            lambda: ASTForAudioClassification(ASTConfig(**TINY_AST, num_labels=3)),
            lambda m: m.audio_spectrogram_transformer,
            lambda e: e.ast,
        ),
    ],
)
def test_heads_poolers_and_other_towers_are_left_out_on_purpose(
    kind: str, saved: Any, source: Any, target: Any, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = saved()
    model.save_pretrained(tmp_path)
    encoder = build({"type": kind, "pretrained": str(tmp_path)})
    expected, actual = source(model).state_dict(), target(encoder).state_dict()
    assert actual.keys() <= expected.keys(), sorted(actual.keys() - expected.keys())
    for name, tensor in actual.items():
        assert torch.equal(tensor, expected[name]), name


def test_transformers_load_report_is_silenced(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    BertForPreTraining(tiny_bert()).save_pretrained(tmp_path)
    capfd.readouterr()
    build({"type": "bert", "pretrained": str(tmp_path)}, "text")
    with pytest.raises(SpecError):
        build({"type": "vit", "pretrained": str(tmp_path)})
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_another_image_size_interpolates_the_position_embeddings_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ViTModel(ViTConfig(**TINY_VIT), add_pooling_layer=False).save_pretrained(tmp_path)
    processors = {"image": ImageProcessor(ImageSpec(size=48))}
    with caplog.at_level(logging.WARNING):
        encoder = build({"type": "vit", "pretrained": str(tmp_path)}, processors=processors)
    assert [record.getMessage() for record in caplog.records] == [
        f"model.components.vision.pretrained {str(tmp_path)!r}: position embeddings for "
        "32-pixel images (4x4 patches) are interpolated (bicubic) to 48-pixel frames "
        "(6x6 patches)"
    ]
    output = encoder({"pixel_values": torch.randn(1, 3, 48, 48)})
    assert output.sequence.shape == (1, 1 + 36, 32)


def test_load_report_leaves_out_the_intended_keys() -> None:
    report = LoadReport.of(
        ["b.crossattention.w", "a.w"],
        ["pooler.dense.w", "head.w"],
        unused=(r"pooler\.",),
        uninitialised=(r"\.crossattention\.",),
    )
    assert report == LoadReport(("a.w",), ("head.w",), ())
    assert LoadReport.of([], ["pooler.x"], unused=(r"pooler\.",)).complete
