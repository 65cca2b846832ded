"""The text processor's captions and QA pairs (``[CLS] q [SEP] a [SEP]`` + ``answer_start``), and
the tokenizer of a pretrained text component."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

from modaloom.core.compose import build_model
from modaloom.core.data import build_processors
from modaloom.core.errors import MediaDecodeError, SpecError
from modaloom.core.plugins import load_plugins
from modaloom.core.spec import load_spec
from modaloom.modalities.text import TextProcessor, load_tokenizer, train_wordpiece
from modaloom.tests.tiny import TINY_BERT

TEXTS = ["a red square", "which color is it", "which shape is it", "blue circle"]
TOKENIZER = train_wordpiece(TEXTS * 3, vocab_size=80)
RNG = random.Random(0)
REGISTRY = load_plugins(entry_points=False)


def words(processor: TextProcessor, text: str) -> list[int]:
    return list(processor.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_qa_pair_is_the_pair_encoding_with_the_answer_start() -> None:
    processor = TextProcessor(TOKENIZER, max_length=16)
    pair = {"question": "which color is it", "answer": "red"}
    item = processor.process(pair, key="k", train=False, rng=RNG)
    cls, sep = processor.token_id("[CLS]"), processor.token_id("[SEP]")
    question, answer = words(processor, "which color is it"), words(processor, "red")
    assert item["input_ids"].tolist() == [cls, *question, sep, *answer, sep]
    assert int(item["answer_start"]) == len(question) + 2
    assert (
        processor.tokenizer("which color is it", "red")["input_ids"] == item["input_ids"].tolist()
    )


def test_qa_pair_truncates_the_question_first() -> None:
    processor = TextProcessor(TOKENIZER, max_length=7)
    pair = {"question": "which color is it", "answer": "blue circle"}
    item = processor.process(pair, key="k", train=False, rng=RNG)
    answer = words(processor, "blue circle")
    question = words(processor, "which color is it")[: 7 - 3 - len(answer)]
    cls, sep = processor.token_id("[CLS]"), processor.token_id("[SEP]")
    assert item["input_ids"].tolist() == [cls, *question, sep, *answer, sep]
    assert len(item["input_ids"]) == 7
    tiny = TextProcessor(TOKENIZER, max_length=4)  # room for one answer token, no question
    item = tiny.process(pair, key="k", train=False, rng=RNG)
    assert item["input_ids"].tolist() == [cls, sep, answer[0], sep]
    assert int(item["answer_start"]) == 2


def test_a_list_of_pairs_picks_one_in_training_and_the_first_in_eval() -> None:
    processor = TextProcessor(TOKENIZER, max_length=16)
    pairs = [
        {"question": "which color is it", "answer": "red"},
        {"question": "which shape is it", "answer": "square"},
    ]
    first = processor.process(pairs[0], key="k", train=False, rng=RNG)["input_ids"]
    for seed in range(3):
        out = processor.process(pairs, key="k", train=False, rng=random.Random(seed))
        assert torch.equal(out["input_ids"], first)
    picked = {
        tuple(
            processor.process(pairs, key="k", train=True, rng=random.Random(s))[
                "input_ids"
            ].tolist()
        )
        for s in range(20)
    }
    assert len(picked) == 2


def test_collate_adds_answer_start_minus_one_for_captions_and_missing() -> None:
    processor = TextProcessor(TOKENIZER, max_length=16)
    pair = processor.process(
        {"question": "which shape is it", "answer": "square"}, key="k", train=False, rng=RNG
    )
    caption = processor.process("a red square", key="k", train=False, rng=RNG)
    batch = processor.collate([caption, pair, None])
    assert batch["answer_start"].tolist() == [-1, int(pair["answer_start"]), -1]
    assert batch["present"].tolist() == [True, True, False]
    assert batch["input_ids"][1, : len(pair["input_ids"])].tolist() == pair["input_ids"].tolist()


@pytest.mark.parametrize(
    "value", [{"question": "which color"}, {"question": 3, "answer": "red"}, {"answer": "red"}]
)
def test_malformed_pairs_are_decode_errors(value: dict[str, object]) -> None:
    processor = TextProcessor(TOKENIZER, max_length=16)
    with pytest.raises(MediaDecodeError, match="a QA pair needs string 'question' and 'answer'"):
        processor.process(value, key="k", train=False, rng=RNG)


# ------------------------------------------------------------------------------ checkpoints

TINY_TEXT = {**TINY_BERT, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128}


def save_bert_with_tokenizer(directory: Path, tokenizer: Any = TOKENIZER) -> BertModel:
    """A tiny BERT sized to ``tokenizer`` (as clip-tiny's text), saved with it."""
    model = BertModel(BertConfig(**TINY_TEXT, vocab_size=len(tokenizer)), add_pooling_layer=False)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model


def clip_tiny(**overrides: str) -> Any:
    return load_spec("clip-tiny", [f"{k}={v}" for k, v in overrides.items()], REGISTRY)


def test_a_pretrained_text_component_brings_its_tokenizer(tmp_path: Path) -> None:
    saved = save_bert_with_tokenizer(tmp_path)
    spec = clip_tiny(**{"model.components.text.pretrained": str(tmp_path)})
    processors = build_processors(spec.data, REGISTRY, {}, None, spec.model)
    text = processors["text"]
    assert isinstance(text, TextProcessor)
    assert text.tokenizer.get_vocab() == TOKENIZER.get_vocab()
    model = build_model(spec.model, REGISTRY, processors)
    embeddings = model.components["text"].bert.embeddings.word_embeddings.weight
    assert torch.equal(embeddings, saved.embeddings.word_embeddings.weight)


def test_a_checkpoint_without_a_tokenizer_is_refused(tmp_path: Path) -> None:
    BertModel(BertConfig(**TINY_TEXT, vocab_size=40)).save_pretrained(tmp_path)
    spec = clip_tiny(**{"model.components.text.pretrained": str(tmp_path)})
    with pytest.raises(SpecError) as info:
        build_processors(spec.data, REGISTRY, {}, None, spec.model)
    assert str(info.value) == (
        "spec is invalid (1 problem):\n  data.text.tokenizer: model.components.text.pretrained "
        f"{str(tmp_path)!r} has no tokenizer (none of tokenizer.json, tokenizer_config.json, "
        "vocab.txt), and one trained from the captions would not match its word embeddings; "
        "set data.text.tokenizer to the tokenizer of that checkpoint"
    )


def test_a_tokenizer_of_another_vocabulary_is_refused(tmp_path: Path) -> None:
    save_bert_with_tokenizer(tmp_path / "bert")
    other = train_wordpiece(["quite other words entirely"] * 3, vocab_size=60)
    other.save_pretrained(tmp_path / "other")
    spec = clip_tiny(
        **{
            "model.components.text.pretrained": str(tmp_path / "bert"),
            "data.text.tokenizer": str(tmp_path / "other"),
        }
    )
    processors = build_processors(spec.data, REGISTRY, {}, None, spec.model)
    with pytest.raises(SpecError) as info:
        build_model(spec.model, REGISTRY, processors)
    assert str(info.value) == (
        "spec is invalid (1 problem):\n  model.components.text.pretrained: checkpoint "
        f"{str(tmp_path / 'bert')!r} has {len(TOKENIZER)} word embeddings but the tokenizer "
        f"has {len(other)} tokens; a pretrained text component needs its checkpoint's "
        "tokenizer: leave data.text.tokenizer unset to load it from the checkpoint, or set it "
        "to that tokenizer"
    )


def test_special_tokens_the_tokenizer_adds_get_new_embedding_rows(tmp_path: Path) -> None:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "square"]
    wordpiece = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    specials = {f"{name}_token": f"[{name.upper()}]" for name in ("unk", "pad", "cls", "sep")}
    bert_like = PreTrainedTokenizerFast(tokenizer_object=wordpiece, mask_token="[MASK]", **specials)
    bert_like.save_pretrained(tmp_path / "bert")
    saved = BertModel(BertConfig(**TINY_TEXT, vocab_size=len(vocab)), add_pooling_layer=False)
    saved.save_pretrained(tmp_path / "bert")
    spec = clip_tiny(**{"model.components.text.pretrained": str(tmp_path / "bert")})
    processors = build_processors(spec.data, REGISTRY, {}, None, spec.model)
    text = processors["text"]
    assert isinstance(text, TextProcessor) and text.vocab_size == len(vocab) + 2  # [ENC], [DEC]
    bert = build_model(spec.model, REGISTRY, processors).components["text"].bert
    rows = bert.embeddings.word_embeddings.weight
    assert rows.shape[0] == len(vocab) + 2
    assert torch.equal(rows[: len(vocab)], saved.embeddings.word_embeddings.weight)


def test_a_directory_without_tokenizer_files_is_not_a_tokenizer(tmp_path: Path) -> None:
    BertModel(BertConfig(**TINY_TEXT, vocab_size=40)).save_pretrained(tmp_path)
    with pytest.raises(SpecError) as info:
        load_tokenizer(tmp_path)
    assert str(info.value) == (
        "spec is invalid (1 problem):\n  data.text.tokenizer: cannot load a tokenizer from "
        f"{tmp_path}: it has none of tokenizer.json, tokenizer_config.json, vocab.txt"
    )


def test_a_tokenizer_path_that_does_not_exist_is_refused_when_the_spec_loads(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "tokenizer"
    with pytest.raises(SpecError) as info:
        clip_tiny(**{"data.text.tokenizer": str(missing)})
    assert str(info.value) == (
        f"clip-tiny is invalid (1 problem):\n  data.text.tokenizer: {str(missing)!r} does not exist"
    )
