"""Generative QA: question encoding, the QA variant of MGC on text batches, and a tiny model
that learns to answer "which color?" and "which shape?" about shapes."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor

from modaloom.core.compose import FeatureCache, LoomModel, build_model
from modaloom.core.data import SampleDecoder
from modaloom.core.errors import SpecError
from modaloom.core.evaluation import EvalContext
from modaloom.core.interfaces import Processor, RawSample
from modaloom.core.registry import Registry
from modaloom.modalities.image import ImageProcessor, ImageSpec
from modaloom.modalities.text import TextProcessor, train_wordpiece
from modaloom.modalities.text_decoder import BertTextDecoder
from modaloom.plugins.evaluators.qa import (
    QAEvaluator,
    QASpec,
    encode_questions,
    load_answer_list,
    normalize_answer,
    qa_pairs,
)
from modaloom.plugins.sources.jsonl import JsonlSource, JsonlSpec
from modaloom.tests.tiny import TINY_BERT, TINY_VIT

QUESTIONS = ("which color?", "which shape?")


def test_normalize_answer_and_qa_pairs() -> None:
    assert normalize_answer("  The Red, one! ") == "red 1"  # the official VQA normalisation
    pair = {"question": "which color?", "answer": "red"}
    assert qa_pairs(pair) == [("which color?", ["red"])]
    assert qa_pairs([pair, {"question": "q"}, "junk"]) == [("which color?", ["red"])]
    assert qa_pairs({"question": "q", "answer": ["2", "two", None]}) == [("q", ["2", "two"])]
    assert qa_pairs(None) == []


def test_answer_list_must_be_a_json_list_of_strings(tmp_path: Path) -> None:
    path = tmp_path / "answers.json"
    path.write_text('["red", "blue"]')
    assert load_answer_list(str(path)) == ["red", "blue"]
    for text in ("{}", "[]", "[1, 2]", "not json"):
        path.write_text(text)
        with pytest.raises(SpecError, match="answer_list"):
            load_answer_list(str(path))
    with pytest.raises(SpecError, match="cannot read answer_list"):
        load_answer_list(str(tmp_path / "missing.json"))


def qa_processor(texts: list[str], max_length: int = 12) -> TextProcessor:
    """A WordPiece vocabulary large enough that each answer word is one token."""
    return TextProcessor(train_wordpiece(texts, vocab_size=120), max_length=max_length)


def test_questions_are_encoded_as_the_training_prefix() -> None:
    processor = qa_processor(["which color is it", "a red square"] * 3, max_length=8)
    ids, mask = encode_questions(processor, ["which color is it", "which color is it " * 4])
    pair = {"question": "which color is it", "answer": "red"}
    item = processor.process(pair, key="k", train=False, rng=random.Random(0))
    start = int(item["answer_start"])
    assert ids[0, :start].tolist() == item["input_ids"][:start].tolist()
    assert mask[0].tolist() == [1] * start + [0] * (ids.shape[1] - start)
    assert int(mask[1].sum()) == 8 - 1  # the long question is cut to leave room for [SEP]


# ------------------------------------------------------------------------------ model


def build_qa_model(registry: Registry, processors: dict[str, Processor]) -> LoomModel:
    """Tiny VALOR-like model with MGC's QA variant reading ``answer_start`` from ``text``."""
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
    objective = {"type": "mgc", "groups": [["text", "image"]], "qa": True, "qa_field": "text"}
    torch.manual_seed(0)
    model_spec = SimpleNamespace(components=specs, objectives=[mgc.model_validate(objective)])
    return build_model(model_spec, registry, processors)


def qa_record(line: str) -> dict[str, Any]:
    """A shapes manifest line with its two QA pairs as ``text`` and ``qa``."""
    record = json.loads(line)
    _, color, shape = record["text"].split()
    pairs = [
        {"question": QUESTIONS[0], "answer": color},
        {"question": QUESTIONS[1], "answer": shape},
    ]
    return {**record, "text": pairs, "qa": pairs}


def write_qa_manifests(manifest: Path, directory: Path) -> tuple[Path, Path]:
    """QA versions of the first 64 shapes (training) and of the other 32 (evaluation)."""
    lines = manifest.read_text().splitlines()
    records = [qa_record(line) for line in lines]
    train, test = directory / "train.jsonl", directory / "test.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in records[:64]))
    test.write_text("".join(json.dumps(r) + "\n" for r in records[64:]))
    for record in records:
        (directory / record["image"]).symlink_to(manifest.parent / record["image"])
    return train, test


def processors_for(texts: list[str]) -> dict[str, Processor]:
    return {
        "text": qa_processor(texts),
        "image": ImageProcessor(ImageSpec(size=32, flip=False, scale=(1.0, 1.0))),
    }


def test_mgc_qa_reads_answer_start_from_text_and_skips_captions(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    processors = processors_for(["which color", "a red square", "a blue circle"] * 3)
    model = build_qa_model(registry, processors).eval()
    text = processors["text"]
    values = ["a red square", {"question": "which color", "answer": "blue"}, "a blue circle"]
    items = [text.process(v, key="k", train=False, rng=random.Random(0)) for v in values]
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    batch = {
        "text": text.collate(list(items)),
        "image": {"pixel_values": pixels, "present": torch.ones(3, dtype=torch.bool)},
    }
    decoder = model.components["decoder"]
    assert isinstance(decoder, BertTextDecoder)
    calls: list[tuple[Any, ...]] = []
    original = decoder.hidden_states

    def recording(*args: Any) -> Tensor:
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(decoder, "hidden_states", recording)
    loss = model.objectives[0](FeatureCache(model, batch))["mgc_loss"]
    assert torch.isfinite(loss) and loss > 0
    masked, _, _, _, mode, prefix = calls[0][:6]
    start = int(items[1]["answer_start"])
    assert masked.shape[0] == 1 and mode == "prefix" and prefix.tolist() == [start]
    question = batch["text"]["input_ids"][1, :start]
    assert torch.equal(masked[0, :start], question)  # the question is never masked
    captions_only = {**batch, "text": text.collate([items[0], items[2]])}
    captions_only["image"] = {k: v[:2] for k, v in batch["image"].items()}
    calls.clear()
    model.objectives[0](FeatureCache(model, captions_only))
    assert calls == []


def train_steps(model: LoomModel, samples: list[RawSample], processors: dict, steps: int) -> None:
    """AdamW on batches of 32 of the decoded (sample, pair) combinations."""
    decoder = SampleDecoder(processors, train=False)
    decoded = [decoder.decode(sample, random.Random(0)) for sample in samples]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    model.train()
    for step in range(steps):
        loss = model(decoder.collate(random.Random(step).sample(decoded, 32), [])).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()


def test_trained_mgc_answers_color_and_shape_questions(
    registry: Registry, shapes_manifest: Path, tmp_path: Path
) -> None:
    train, test = write_qa_manifests(shapes_manifest, tmp_path)
    source = JsonlSource(JsonlSpec(path=str(train)))
    samples = [{**source[i], "text": pair} for i in range(len(source)) for pair in source[i]["qa"]]
    texts = [f"{p['question']} {p['answer']}" for s in samples for p in [s["text"]]]
    processors = processors_for(texts)
    model = build_qa_model(registry, processors).eval()
    ctx = EvalContext(model, processors, JsonlSource(JsonlSpec(path=str(test))), batch_size=32)
    evaluator = QAEvaluator(QASpec(source="test", examples=3))
    with torch.no_grad():
        before = evaluator.evaluate(ctx)
    train_steps(model, samples, processors, steps=300)
    with torch.no_grad():
        after = evaluator.evaluate(ctx)
    assert set(after) == {"qa.accuracy"}
    assert before["qa.accuracy"] < 0.2
    assert after["qa.accuracy"] > 0.7  # chance: 1/4 for colors, 1/3 for shapes
    assert [e["question"] for e in evaluator.examples] == [QUESTIONS[0], QUESTIONS[1], QUESTIONS[0]]
    first = json.loads(test.read_text().splitlines()[0])
    assert evaluator.examples[0]["reference"] == first["qa"][0]["answer"]

    answers = tmp_path / "answers.json"
    answers.write_text(
        json.dumps(["square", "circle", "triangle", "red", "green", "blue", "yellow", "cat"])
    )
    listed = QAEvaluator(QASpec(source="test", name="listed", answer_list=str(answers)))
    with torch.no_grad():
        chosen = listed.evaluate(ctx)
    assert chosen["listed.accuracy"] > 0.7
    assert {e["generated"] for e in listed.examples} <= set(json.loads(answers.read_text()))
    # VQA accuracy with ten human answers of which three agree with the reference: 0.9 per
    # correct answer (`vqa_accuracy`), so the mean is 0.9 x the exact-match accuracy.
    ten = tmp_path / "ten.jsonl"
    records = [json.loads(line) for line in test.read_text().splitlines()]
    for record in records:
        record["qa"] = [{**p, "answer": [p["answer"]] * 3 + ["other"] * 7} for p in record["qa"]]
    ten.write_text("".join(json.dumps(r) + "\n" for r in records))
    ctx_ten = EvalContext(model, processors, JsonlSource(JsonlSpec(path=str(ten))), batch_size=32)
    vqa = QAEvaluator(QASpec(source="test", metric="vqa", answer_list=str(answers)))
    with torch.no_grad():
        assert vqa.evaluate(ctx_ten)["qa.accuracy"] == pytest.approx(
            0.9 * chosen["listed.accuracy"]
        )
