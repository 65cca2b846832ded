"""``vqav2``: the official questions and annotations JSON files -> one line per image whose
``qa`` the ``qa`` evaluator scores (metric: vqa) and whose ``text`` pairs training draws."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modaloom.core.convert import convert_dataset
from modaloom.core.errors import DataError
from modaloom.core.plugins import load_plugins
from modaloom.core.vqa import vqa_accuracy
from modaloom.plugins.evaluators.qa import qa_pairs
from modaloom.plugins.sources.jsonl import JsonlSource, JsonlSpec

REGISTRY = load_plugins(entry_points=False)


def questions(subtype: str, asked: list[tuple[int, int, str]]) -> dict[str, Any]:
    return {
        "info": {},
        "task_type": "Open-Ended",
        "data_type": "mscoco",
        "license": {},
        "data_subtype": subtype,
        "questions": [
            {"image_id": image, "question": text, "question_id": qid} for image, qid, text in asked
        ],
    }


def annotation(image: int, qid: int, answers: list[str]) -> dict[str, Any]:
    return {
        "question_type": "how many",
        "multiple_choice_answer": max(answers, key=answers.count),
        "answers": [
            {"answer": a, "answer_confidence": "yes", "answer_id": n + 1}
            for n, a in enumerate(answers)
        ],
        "image_id": image,
        "answer_type": "number",
        "question_id": qid,
    }


def test_questions_and_annotations_pair_into_qa_lines(tmp_path: Path) -> None:
    val_q = tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json"
    val_q.write_text(
        json.dumps(
            questions(
                "val2014",
                [(42, 420, "How many cats?"), (42, 421, "Is it red?"), (73, 730, "What is it?")],
            )
        )
    )
    val_a = tmp_path / "v2_mscoco_val2014_annotations.json"
    two = ["2"] * 7 + ["two", "3", "2"]
    val_a.write_text(
        json.dumps(
            {
                "info": {},
                "license": {},
                "data_subtype": "val2014",
                "annotations": [
                    annotation(42, 420, two),
                    annotation(42, 421, ["yes"] * 10),
                    annotation(73, 730, ["cat"] * 10),
                ],
            }
        )
    )
    test_q = tmp_path / "v2_OpenEnded_mscoco_test-dev2015_questions.json"
    test_q.write_text(json.dumps(questions("test-dev2015", [(5, 50, "Why?")])))
    coco = tmp_path / "coco"
    for name in (
        "val2014/COCO_val2014_000000000042.jpg",
        "test2015/COCO_test2015_000000000005.jpg",
    ):
        (coco / name).parent.mkdir(parents=True, exist_ok=True)
        (coco / name).write_bytes(b"jpeg")
    report = convert_dataset(
        "vqav2", [val_q, val_a, test_q], tmp_path / "out", coco, registry=REGISTRY
    )
    assert report.items == {"val": 1, "test-dev": 1} and report.missing == {"val": 1, "test-dev": 0}
    (line,) = JsonlSource(JsonlSpec(path=str(tmp_path / "out" / "val.jsonl"))).iter_raw()
    assert line["__key__"] == line["item"] == "42"
    assert Path(line["image"]).read_bytes() == b"jpeg"
    assert line["qa"][0] == {"question_id": 420, "question": "How many cats?", "answer": two}
    assert qa_pairs(line["qa"]) == [("How many cats?", two), ("Is it red?", ["yes"] * 10)]
    assert vqa_accuracy("2", qa_pairs(line["qa"])[0][1]) == 1.0
    assert len(line["text"]) == 20 and line["text"][7] == {
        "question": "How many cats?",
        "answer": "two",
    }
    test = json.loads((tmp_path / "out" / "test-dev.jsonl").read_text())
    assert test["qa"] == [{"question_id": 50, "question": "Why?", "answer": []}]
    assert "text" not in test and test["image"] == "../coco/test2015/COCO_test2015_000000000005.jpg"
    assert report.answer_list is None  # no train split


def test_train_answers_make_the_answer_list(tmp_path: Path) -> None:
    asked = [(1, 10, "What color?"), (1, 11, "What color?"), (2, 20, "How many?")]
    train_q = tmp_path / "v2_OpenEnded_mscoco_train2014_questions.json"
    train_q.write_text(json.dumps(questions("train2014", asked)))
    train_a = tmp_path / "v2_mscoco_train2014_annotations.json"
    answers = {10: ["red"] * 6 + ["blue"] * 4, 11: ["blue"] * 9 + ["red"], 20: ["2"] * 10}
    notes = [annotation(image, qid, answers[qid]) for image, qid, _ in asked]
    train_a.write_text(json.dumps({"data_subtype": "train2014", "annotations": notes}))
    report = convert_dataset("vqav2", [train_q, train_a], tmp_path / "out", registry=REGISTRY)
    assert report.answer_list == str(tmp_path / "out" / "answer_list.json")
    assert json.loads((tmp_path / "out" / "answer_list.json").read_text()) == ["red", "blue", "2"]


def test_a_file_of_neither_kind_is_one_data_error(tmp_path: Path) -> None:
    source = tmp_path / "v2_mscoco_val2014_complementary_pairs.json"
    source.write_text(json.dumps([[1, 2]]))
    with pytest.raises(DataError) as info:
        convert_dataset("vqav2", [source], tmp_path / "out", registry=REGISTRY)
    assert str(info.value) == (
        f"{source} is neither VQA v2 questions "
        '{"data_subtype", "questions": [{image_id, question, question_id}]} nor '
        '{"annotations": [{question_id, image_id, answers: [{answer}], ...}]}'
    )
