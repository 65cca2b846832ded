"""``vqav2``: VQA v2 questions + annotations (the official JSON files) -> one manifest line per
COCO image with its questions.

Sources: ``v2_OpenEnded_mscoco_<subtype>_questions.json`` (``{"data_subtype": "val2014",
"questions": [{"image_id", "question", "question_id"}]}``) and ``v2_mscoco_<subtype>_annotations
.json`` (``{"annotations": [{"question_id", "image_id", "answers": [{"answer",
"answer_confidence", "answer_id"}], "multiple_choice_answer", "answer_type",
"question_type"}]}``), paired by ``data_subtype``; train2014 -> ``train``, val2014 -> ``val``,
test2015 / test-dev2015 (questions only) -> ``test`` / ``test-dev``. A line holds

- ``qa``: ``[{"question_id", "question", "answer": [the 10 human answers]}]``, what the ``qa``
  evaluator scores with ``metric: vqa`` (test questions have no answers, so nothing to score);
- ``text``: one ``{"question", "answer"}`` pair per human answer, from which training draws one
  at random (so an answer is drawn as often as annotators gave it, BLIP's answer weighting in
  expectation); ``lm`` with ``qa: true`` reads it there, ``mgc`` with ``qa_field: text``.

Images are found at ``MEDIA_ROOT/<subtype>/COCO_<subtype>_<image_id:012d>.jpg`` (test-dev uses
test2015's images) or directly under ``MEDIA_ROOT``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from modaloom.core.convert import ConvertedItem, read_json, require
from modaloom.core.errors import DataError
from modaloom.core.hookspecs import hookimpl
from modaloom.core.registry import Registry

QUESTIONS = '{"data_subtype", "questions": [{image_id, question, question_id}]}'
ANNOTATIONS = '{"annotations": [{question_id, image_id, answers: [{answer}], ...}]}'
SPLITS = {"train2014": "train", "val2014": "val", "test2015": "test", "test-dev2015": "test-dev"}


def subtype_of(data: dict[str, Any], path: Path) -> str:
    """The file's ``data_subtype`` (or the ``train2014``-like word of its name)."""
    subtype = data.get("data_subtype")
    if isinstance(subtype, str):
        return subtype
    match = re.search(r"(test-dev|train|val|test)\d{4}", path.name)
    if match is None:
        raise DataError(f"{path} has no 'data_subtype' and its name names no split (val2014, ...)")
    return match.group(0)


def read_files(sources: Sequence[Path]) -> tuple[dict[str, list], dict[int, list[str]]]:
    """(subtype -> its questions, question id -> its human answers) of the given files."""
    questions: dict[str, list] = {}
    answers: dict[int, list[str]] = {}
    for path in map(Path, sources):
        data = read_json(path, "a VQA v2 questions or annotations JSON")
        if isinstance(data, dict) and "questions" in data:
            found = _records(data, "questions", path, ["image_id", "question", "question_id"])
            questions.setdefault(subtype_of(data, path), []).extend(found)
        elif isinstance(data, dict) and "annotations" in data:
            for record in _records(data, "annotations", path, ["question_id", "answers"]):
                answers[int(record["question_id"])] = _answers(record, path)
        else:
            raise DataError(f"{path} is neither VQA v2 questions {QUESTIONS} nor {ANNOTATIONS}")
    if not questions:
        raise DataError(
            "no VQA v2 questions file among the sources; pass v2_OpenEnded_*_questions.json"
        )
    return questions, answers


def _records(data: dict[str, Any], name: str, path: Path, keys: list[str]) -> list[dict]:
    records = data[name]
    layout = QUESTIONS if name == "questions" else ANNOTATIONS
    if not isinstance(records, list):
        raise DataError(f"{path}: {name!r} is not a list; expected {layout}")
    return [require(r, keys, f"{path}: {name}[{i}]", layout) for i, r in enumerate(records)]


def _answers(record: dict[str, Any], path: Path) -> list[str]:
    values = record["answers"]
    if not isinstance(values, list) or not all(
        isinstance(a, dict) and "answer" in a for a in values
    ):
        raise DataError(
            f"{path}: question {record['question_id']}'s answers are not [{{answer, ...}}]"
        )
    return [str(a["answer"]) for a in values]


def image_files(subtype: str, image_id: int) -> tuple[str, ...]:
    """Candidate paths of a COCO image."""
    folder = "test2015" if subtype.startswith("test") else subtype
    name = f"COCO_{folder}_{image_id:012d}.jpg"
    return (f"{folder}/{name}", name)


def convert_vqav2(sources: Sequence[Path]) -> Iterator[ConvertedItem]:
    """Items of VQA v2 files, one per image (raises `DataError` for a malformed file)."""
    questions, answers = read_files(sources)
    for subtype, records in questions.items():
        split = SPLITS.get(subtype, subtype)
        images: dict[int, list[dict[str, Any]]] = {}
        for record in records:
            images.setdefault(int(record["image_id"]), []).append(record)
        for image_id, asked in images.items():
            qa: list[dict[str, Any]] = [
                {
                    "question_id": int(r["question_id"]),
                    "question": str(r["question"]),
                    "answer": answers.get(int(r["question_id"]), []),
                }
                for r in asked
            ]
            fields: dict[str, Any] = {"qa": qa}
            pairs = [{"question": p["question"], "answer": a} for p in qa for a in p["answer"]]
            if pairs:
                fields["text"] = pairs
            media = {"image": image_files(subtype, image_id)}
            yield ConvertedItem(split, str(image_id), media, fields)


@hookimpl
def modaloom_register_converters(registry: Registry) -> None:
    """Register the VQA v2 format."""
    registry.add_converter(
        "vqav2",
        convert_vqav2,
        description="VQA v2 questions + annotations (official JSON); qa with the 10 answers",
    )
