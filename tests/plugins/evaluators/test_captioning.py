"""Caption metrics by hand, and a tiny VALOR-like MGC model that learns to caption shapes."""

from __future__ import annotations

import importlib.util
import json
import logging
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from modaloom.core import caption_metrics as scorers
from modaloom.core.compose import LoomModel, build_model
from modaloom.core.data import SampleDecoder
from modaloom.core.errors import SpecError
from modaloom.core.evaluation import EvalContext
from modaloom.core.interfaces import Processor
from modaloom.core.registry import Registry
from modaloom.core.spec import load_spec
from modaloom.modalities.image import ImageProcessor, ImageSpec
from modaloom.modalities.text import TextProcessor, train_wordpiece
from modaloom.plugins.evaluators import captioning
from modaloom.plugins.evaluators.captioning import (
    CaptioningEvaluator,
    CaptioningSpec,
    caption_metrics,
    caption_references,
    item_of,
    merge_items,
    tokenize_caption,
)
from modaloom.plugins.sources.jsonl import JsonlSource, JsonlSpec
from modaloom.tests.tiny import TINY_BERT, TINY_VIT

CAPTIONS = {
    0: "a man rides a red bike down the street",
    1: "two dogs play with a ball in the park",
    2: "a plate of pasta with tomato sauce on a table",
}


def test_tokenize_caption_lowercases_and_strips_punctuation() -> None:
    assert tokenize_caption("  A Red-bike, on the STREET!  ") == "a red bike on the street"


def test_identical_captions_score_high_and_disjoint_ones_zero() -> None:
    references = {i: [c] for i, c in CAPTIONS.items()}
    same = caption_metrics(references, dict(CAPTIONS), meteor=False, spice=False)
    assert set(same) == {"bleu1", "bleu2", "bleu3", "bleu4", "cider", "rouge_l"}
    assert same["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert same["bleu1"] == pytest.approx(1.0, abs=1e-6)
    assert same["rouge_l"] == pytest.approx(1.0)
    assert same["cider"] > 5.0  # CIDEr-D's 0..10 scale (Gaussian length penalty, clipping)
    disjoint = {i: "zebra umbrella quantum violin" for i in CAPTIONS}
    other = caption_metrics(references, disjoint, meteor=False, spice=False)
    assert other["bleu4"] == pytest.approx(0.0, abs=1e-6)
    assert other["cider"] == 0.0 and other["rouge_l"] == 0.0


def test_rouge_l_and_bleu_by_hand_with_several_references() -> None:
    references = {0: ["a big red square", "something else entirely"], 1: ["a blue circle"]}
    candidates = {0: "A red square.", 1: "a blue circle"}
    metrics = caption_metrics(references, candidates, meteor=False, spice=False)
    # sample 0: LCS 3, P = 1, R = 3/4; F = (1 + 1.2^2) P R / (R + 1.2^2 P); sample 1: 1.
    f = (1 + 1.44) * 0.75 / (0.75 + 1.44)
    assert metrics["rouge_l"] == pytest.approx((f + 1.0) / 2)
    # Clipped n-gram precisions over both samples: 6/6, 3/4, 1/2, and no 4-gram at all, which
    # pycocoevalcap smooths to 1e-15 / 1e-9; closest reference lengths 3 + 3 = 6 words: no
    # brevity penalty. BLEU-4 is their geometric mean.
    assert metrics["bleu4"] == pytest.approx((1.0 * 0.75 * 0.5 * 1e-6) ** 0.25, rel=1e-4)
    assert metrics["bleu1"] == pytest.approx(1.0)
    assert metrics["bleu2"] == pytest.approx(0.75**0.5)
    assert metrics["bleu3"] == pytest.approx((0.75 * 0.5) ** (1 / 3))


def test_java_metrics_are_left_out_with_a_single_notice_without_java(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(scorers.shutil, "which", lambda name: None)
    scorers.notice.cache_clear()
    references = {i: [c] for i, c in CAPTIONS.items()}
    with caplog.at_level(logging.WARNING, logger="modaloom.core.caption_metrics"):
        for _ in range(2):
            metrics = caption_metrics(references, dict(CAPTIONS))
            assert "meteor" not in metrics and "spice" not in metrics and "cider" in metrics
    assert [r.getMessage() for r in caplog.records] == [
        "captioning: METEOR left out (no java on PATH)",
        "captioning: SPICE left out (no java on PATH)",
    ]
    scorers.notice.cache_clear()


def test_spice_is_left_out_without_corenlp_and_never_downloads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(scorers.shutil, "which", lambda name: "/usr/bin/java")
    spec = SimpleNamespace(origin=str(tmp_path / "spice.py"))
    monkeypatch.setattr(scorers.importlib.util, "find_spec", lambda name: spec)
    scorers.notice.cache_clear()
    with caplog.at_level(logging.WARNING, logger="modaloom.core.caption_metrics"):
        assert scorers.java_score("spice", {0: ["a dog"]}, {0: ["a dog"]}) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"captioning: SPICE left out (Stanford CoreNLP jars not installed in {tmp_path / 'lib'} "
        "(SPICE downloads them on first use))"
    ]
    scorers.notice.cache_clear()


def test_references_are_the_caption_strings() -> None:
    assert caption_references({"text": "a dog"}) == ["a dog"]
    assert caption_references({"text": ["a dog", "a puppy"]}) == ["a dog", "a puppy"]
    assert caption_references({"text": [{"question": "q", "answer": "a"}]}) == []
    assert caption_references({}) == []


def test_items_pool_their_references() -> None:
    assert item_of("k1", {"item": 7}) == "7"
    assert item_of("k1", {}) == "k1"
    rows = [
        ("img1", "k1", ["a dog"], "a dog runs"),
        ("img2", "k2", ["a cat"], "a cat"),
        ("img1", "k3", ["a puppy", "a dog"], "a dog runs"),
    ]
    assert merge_items(rows) == [
        ("k1", ["a dog", "a puppy"], "a dog runs"),
        ("k2", ["a cat"], "a cat"),
    ]


def test_spec_accepts_an_mgc_group(registry: Registry) -> None:
    entry = registry.get("evaluator", "captioning")
    assert entry.factory is CaptioningEvaluator
    spec = CaptioningSpec.model_validate({"source": "test", "group": ["text", ["vision", "audio"]]})
    assert spec.group == ("text", ["vision", "audio"])
    assert (spec.num_beams, spec.max_length, spec.min_length, spec.name) == (3, 20, 1, "captioning")


# ------------------------------------------------------------------------------ end to end


def build_valor_like(registry: Registry, processors: dict[str, Processor]) -> LoomModel:
    """Tiny BERT, a BERT decoder sharing all but cross-attention, a tiny ViT; MGC on T-V."""
    fields: dict[str, dict[str, Any]] = {
        "text": {"type": "bert", "config": TINY_BERT},
        "decoder": {"type": "bert_decoder", "share_with": "text"},
        "image": {"type": "vit", "config": TINY_VIT},
    }
    specs = {}
    for name, spec in fields.items():
        kind = "decoder" if spec["type"] == "bert_decoder" else "encoder"
        config = registry.get(kind, spec["type"]).config
        assert config is not None
        specs[name] = config.model_validate(spec)
    mgc = registry.get("objective", "mgc").config
    assert mgc is not None
    objectives = [mgc.model_validate({"type": "mgc", "groups": [["text", "image"]]})]
    torch.manual_seed(0)
    return build_model(
        SimpleNamespace(components=specs, objectives=objectives), registry, processors
    )


def train_steps(model: LoomModel, source: JsonlSource, processors: dict, steps: int) -> None:
    """AdamW on batches of 32 decoded once (no augmentation)."""
    decoder = SampleDecoder(processors, train=False)
    samples = [decoder.decode(source[i], random.Random(0)) for i in range(len(source))]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    model.train()
    for step in range(steps):
        chosen = random.Random(step).sample(samples, 32)
        loss = model(decoder.collate(chosen, [])).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()


def split_manifest(manifest: Path, directory: Path) -> tuple[Path, Path]:
    """The first 64 shapes for training, the other 32 for evaluation."""
    lines = manifest.read_text().splitlines()
    train, test = directory / "train.jsonl", directory / "test.jsonl"
    train.write_text("\n".join(lines[:64]) + "\n")
    test.write_text("\n".join(lines[64:]) + "\n")
    for line in lines:  # the images stay next to the original manifest
        image = json.loads(line)["image"]
        (directory / image).symlink_to(manifest.parent / image)
    return train, test


def evaluate(evaluator: CaptioningEvaluator, ctx: EvalContext) -> dict[str, float]:
    with torch.no_grad():
        return evaluator.evaluate(ctx)


def test_trained_mgc_captions_unseen_shapes(
    registry: Registry, shapes_manifest: Path, tmp_path: Path
) -> None:
    train, test = split_manifest(shapes_manifest, tmp_path)
    captions = [json.loads(line)["text"] for line in train.read_text().splitlines()]
    processors: dict[str, Processor] = {
        "text": TextProcessor(train_wordpiece(captions, vocab_size=60), max_length=12),
        "image": ImageProcessor(ImageSpec(size=32, flip=False, scale=(1.0, 1.0))),
    }
    model = build_valor_like(registry, processors).eval()
    ctx = EvalContext(model, processors, JsonlSource(JsonlSpec(path=str(test))), batch_size=32)
    greedy = CaptioningEvaluator(
        CaptioningSpec(source="test", num_beams=1, meteor=False, spice=False)
    )
    before = evaluate(greedy, ctx)
    train_steps(model, JsonlSource(JsonlSpec(path=str(train))), processors, steps=250)
    after = evaluate(greedy, ctx)
    assert before["captioning.cider"] < 0.5
    assert after["captioning.cider"] > before["captioning.cider"] + 3.0
    assert after["captioning.rouge_l"] > 0.8
    beam = CaptioningEvaluator(
        CaptioningSpec(
            source="test", num_beams=3, examples=2, name="beam", meteor=False, spice=False
        )
    )
    metrics = evaluate(beam, ctx)
    assert set(metrics) == {f"beam.{m}" for m in ("bleu1", "bleu2", "bleu3", "bleu4")} | {
        "beam.cider",
        "beam.rouge_l",
    }
    assert metrics["beam.cider"] > 3.0
    assert [set(e) for e in beam.examples] == [{"key", "generated", "reference"}] * 2
    assert beam.examples[0]["generated"].split()[0] == "a"
    with pytest.raises(SpecError, match="no objective named 'lm'"):
        CaptioningEvaluator(CaptioningSpec(source="test", objective="lm")).evaluate(ctx)


def test_lines_of_one_item_are_captioned_once_against_all_their_references(
    registry: Registry, shapes_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [json.loads(line) for line in shapes_manifest.read_text().splitlines()[:4]]
    records = [
        {"image": str(shapes_manifest.parent / r["image"]), "text": text, "item": f"img{i}"}
        for i, r in enumerate(lines)
        for text in (r["text"], f"{r['text']} on white")
    ]
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    processors: dict[str, Processor] = {
        "text": TextProcessor(train_wordpiece([r["text"] for r in records], 60), max_length=12),
        "image": ImageProcessor(ImageSpec(size=32, flip=False, scale=(1.0, 1.0))),
    }
    model = build_valor_like(registry, processors).eval()
    ctx = EvalContext(model, processors, JsonlSource(JsonlSpec(path=str(manifest))), 3)
    seen: list[tuple[dict, dict]] = []

    def recording(references, candidates, meteor, spice):  # type: ignore[no-untyped-def]
        seen.append((references, candidates))
        return {"cider": 0.0}

    monkeypatch.setattr(captioning, "caption_metrics", recording)
    spec = CaptioningSpec(source="test", num_beams=1, max_length=4)
    assert evaluate(CaptioningEvaluator(spec), ctx) == {"captioning.cider": 0.0}
    ((references, candidates),) = seen
    assert list(references.values()) == [[r["text"], f"{r['text']} on white"] for r in lines]
    assert len(candidates) == 4


# ------------------------------------------------------------------------------ extras


def test_a_spec_with_captioning_needs_pycocoevalcap(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    find_spec = importlib.util.find_spec

    def without_pycocoevalcap(name: str, *args: Any) -> Any:
        return None if name == "pycocoevalcap" else find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_pycocoevalcap)
    with pytest.raises(SpecError) as info:
        load_spec("valor-tiny", registry=registry)
    assert str(info.value) == (
        "valor-tiny is invalid (1 problem):\n  eval.4: captioning is scored with pycocoevalcap, "
        "which is not installed: pip install 'modaloom[eval]'"
    )


def test_a_spec_with_java_metrics_only_warns_without_java(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(captioning.shutil, "which", lambda name: None)
    scorers.notice.cache_clear()
    with caplog.at_level(logging.WARNING, logger="modaloom.core.caption_metrics"):
        load_spec("valor-tiny", ["eval.4.meteor=true"], registry=registry)
        load_spec("valor-tiny", ["eval.4.meteor=true"], registry=registry)
        load_spec("valor-tiny", registry=registry)  # meteor: false, spice: true
    assert [r.getMessage() for r in caplog.records] == [captioning.JAVA_MISSING]
    scorers.notice.cache_clear()
