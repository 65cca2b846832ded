"""The text processor's captions and QA pairs (``[CLS] q [SEP] a [SEP]`` + ``answer_start``)."""

from __future__ import annotations

import random

import pytest
import torch

from modaloom.core.errors import MediaDecodeError
from modaloom.modalities.text import TextProcessor, train_wordpiece

TEXTS = ["a red square", "which color is it", "which shape is it", "blue circle"]
TOKENIZER = train_wordpiece(TEXTS * 3, vocab_size=80)
RNG = random.Random(0)


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
