"""VQA accuracy and answer normalisation as the official VQA evaluation computes them."""

from __future__ import annotations

import pytest

from modaloom.core.vqa import (
    CONTRACTIONS,
    exact_match,
    normalize_answer,
    process_punctuation,
    vqa_accuracy,
)
from modaloom.evaluation import vqa_accuracy as public_vqa_accuracy


def test_number_words_become_digits() -> None:
    assert vqa_accuracy("two", ["2"] * 10) == 1.0
    assert vqa_accuracy("Two.", ["2"] * 10) == 1.0
    assert vqa_accuracy("none", ["0"] * 10) == 1.0
    assert public_vqa_accuracy is vqa_accuracy


@pytest.mark.parametrize(
    ("matching", "accuracy"),
    [
        # m of 10 humans gave the answer; leaving out one of them leaves m - 1 matches, leaving
        # out another one leaves m: mean of min(matches / 3, 1) over the 10 subsets.
        (0, 0.0),
        (1, (1 * 0 + 9 * (1 / 3)) / 10),  # 0.3
        (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10),  # 0.6
        (3, (3 * (2 / 3) + 7 * 1) / 10),  # 0.9
        (4, 1.0),
        (10, 1.0),
    ],
)
def test_leave_one_annotator_out_average(matching: int, accuracy: float) -> None:
    answers = ["yes"] * matching + ["no"] * (10 - matching)
    assert vqa_accuracy("yes", answers) == pytest.approx(accuracy)


def test_prediction_normalisation() -> None:
    assert normalize_answer("  The Dog.\n") == "dog"
    assert normalize_answer("an apple") == "apple"
    assert normalize_answer("Ten") == "10"
    assert normalize_answer("dont") == "don't"  # contractions restored
    assert normalize_answer("1,000") == "1000"  # a comma between digits glues
    assert normalize_answer("3.5") == "3.5"  # a period before a digit stays
    assert normalize_answer("red, white") == "red white"  # touching a space: deleted
    assert normalize_answer("x-ray") == "x ray"  # not touching a space: a space
    assert normalize_answer("a man's hat!") == "man's hat"  # ' is not punctuation here
    assert len(CONTRACTIONS) == 120 and CONTRACTIONS["whats"] == "what's"


def test_human_answers_get_punctuation_only_and_only_when_they_differ() -> None:
    assert process_punctuation("red, white") == "red white"
    # Released answers are already normalised; they are not lower-cased or digit-mapped.
    assert vqa_accuracy("two", ["Two"] * 10) == 0.0
    assert vqa_accuracy("x ray", ["x-ray"] * 3 + ["xray"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("x ray", ["x-ray"] * 10) == 0.0  # all equal: left as released
    with pytest.raises(ValueError, match="at least one human answer"):
        vqa_accuracy("yes", [])


def test_single_reference_scores_zero_and_exact_match_is_the_video_qa_rule() -> None:
    assert vqa_accuracy("dog", ["dog"]) == 0.0  # nobody is left after leaving one out
    assert exact_match("A dog.", ["dog"]) == 1.0
    assert exact_match("two", ["2"]) == 1.0
    assert exact_match("cat", ["dog", "The cat"]) == 1.0
    assert exact_match("cats", ["dog", "cat"]) == 0.0
