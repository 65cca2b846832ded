"""QA evaluator: generative answers (VALOR, SPEC §A2) or a ranked answer list (OmniVL/BLIP),
scored by normalised exact match (video QA) or the official VQA accuracy.

Each sample's QA pairs (``[{"question", "answer"}, ...]`` in its ``qa`` field, as digits-av
clips carry them; ``answer`` is a string or, for VQA, the list of the 10 human answers) are
asked one by one: the question is encoded as in training (the text processor's pair encoding,
``[CLS] question [SEP]``) and the objective either decodes the answer greedily with no
vocabulary restriction or, with ``answer_list``, picks the candidate it finds most likely
(`modaloom.core.answer_scoring`). ``metric: exact`` counts an answer correct when it equals a
reference after the official VQA normalisation (`modaloom.core.vqa.normalize_answer`: lower
case, punctuation, articles, number words to digits, contractions): MSRVTT-QA and MSVD-QA.
``metric: vqa`` averages `modaloom.core.vqa.vqa_accuracy` (VQA v2).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from modaloom.core.answer_scoring import AnswerScorer, pad_answers
from modaloom.core.compose import FeatureCache
from modaloom.core.data import process_values
from modaloom.core.errors import SpecError
from modaloom.core.evaluation import EvalContext, Evaluator, eval_spec_error
from modaloom.core.features import Group, present_rows
from modaloom.core.generation import TextGenerator
from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import Batch, TextCodec
from modaloom.core.registry import Registry
from modaloom.core.spec_models import (
    EvaluatorSpec,
    Reference,
    group_references,
    objective_reference,
)
from modaloom.core.vqa import exact_match, normalize_answer, vqa_accuracy
from modaloom.plugins.evaluators.captioning import condition_of, text_generator

__all__ = ["QAEvaluator", "QASpec", "encode_questions", "normalize_answer", "qa_pairs"]


def answer_strings(value: Any) -> list[str]:
    """A QA pair's reference answers: a string, or the strings of a list (VQA's 10)."""
    values = value if isinstance(value, list | tuple) else [value]
    return [str(v) for v in values if v is not None]


def qa_pairs(value: Any) -> list[tuple[str, list[str]]]:
    """``(question, answers)`` pairs of a sample's QA field (a pair or a list of pairs)."""
    values = value if isinstance(value, list | tuple) else [value]
    return [
        (v["question"], answer_strings(v["answer"]))
        for v in values
        if isinstance(v, dict) and isinstance(v.get("question"), str) and "answer" in v
    ]


def load_answer_list(path: str) -> list[str]:
    """The candidate answers of a JSON file holding a list of strings.

    Raises:
        SpecError: the file is missing, not JSON, or not a non-empty list of strings.
    """
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise eval_spec_error(f"qa: cannot read answer_list {path!r}: {exc}") from exc
    if not values or not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise eval_spec_error(f"qa: answer_list {path!r} must hold a JSON list of strings")
    return values


def encode_questions(processor: TextCodec, questions: list[str]) -> tuple[Tensor, Tensor]:
    """``[CLS] question [SEP]`` rows as training encodes them (truncated the same way).

    Returns:
        ``(ids (Q, L), attention_mask (Q, L))``, right-padded.
    """
    pairs = [{"question": question, "answer": ""} for question in questions]
    items = process_values(processor, pairs, [""] * len(pairs), random.Random(0))
    prefixes = [{"input_ids": item["input_ids"][: int(item["answer_start"])]} for item in items]
    batch = processor.collate(list(prefixes))
    return batch["input_ids"], batch["attention_mask"]


class QASpec(EvaluatorSpec):
    """Answer every QA pair of a source's samples; exact-match or VQA accuracy."""

    type: Literal["qa"] = "qa"
    objective: str | None = None
    """An ``mgc`` with ``qa: true`` (or an ``lm``); default: the first trained on QA pairs."""
    group: Group | None = None
    """Condition to answer from, e.g. ``[text, [vision, audio]]``; default: the objective's
    last group (MGC) or its ``condition`` (LM)."""
    max_length: int = Field(5, ge=1)
    """Answer tokens at most, [SEP] included."""
    name: str = "qa"
    """Metric prefix."""
    qa_field: str = "qa"
    """The sample field holding the QA pairs (``[{question, answer}, ...]``)."""
    examples: int = Field(5, ge=0)
    """How many (key, question, generated, reference) examples to keep in
    ``evaluator.examples``."""
    metric: Literal["exact", "vqa"] = "exact"
    """``exact``: 1 when the answer equals a reference after VQA normalisation (MSRVTT-QA,
    MSVD-QA); ``vqa``: the official VQA accuracy against the 10 human answers (VQA v2)."""
    answer_list: str | None = None
    """Path of a JSON list of candidate answers: answer with the candidate the objective finds
    most likely (OmniVL/BLIP) instead of generating freely."""

    def references(self) -> list[Reference]:
        """``objective`` names an objective, ``group`` components."""
        return [
            *objective_reference("objective", self.objective),
            *group_references("group", self.group),
        ]


def most_common(answers: list[str]) -> str:
    """The most frequent answer (the first of equals); ``""`` for none."""
    return max(answers, key=answers.count) if answers else ""


class QAEvaluator(Evaluator):
    """``<name>.accuracy`` in 0..1 over all QA pairs; examples in ``self.examples``."""

    def __init__(self, config: QASpec) -> None:
        self.config = config
        self.examples: list[dict[str, str]] = []
        """The first ``config.examples`` answers: ``{"key", "question", "generated",
        "reference"}`` (the most common reference answer)."""
        self.candidates: list[str] = []
        """The ``answer_list`` candidates (after `evaluate`)."""

    def answers(
        self,
        ctx: EvalContext,
        objective: TextGenerator,
        features: FeatureCache,
        questions: list[tuple[int, str]],
    ) -> list[str]:
        """Answers to ``(row, question)`` pairs about the batch's samples: generated, or the
        most likely candidate of ``answer_list``."""
        processor = ctx.processors["text"]
        assert isinstance(processor, TextCodec)
        ids, mask = encode_questions(processor, [question for _, question in questions])
        ids, mask = ids.to(ctx.device), mask.to(ctx.device)
        rows = torch.tensor([row for row, _ in questions], device=ctx.device)
        condition = condition_of(objective, self.config.group)
        if self.candidates:
            assert isinstance(objective, AnswerScorer)
            sep = processor.token_id("[SEP]")
            tokens = [[*processor.encode_words(text), sep] for text in self.candidates]
            answers, answer_mask = pad_answers(tokens, processor.pad_id)  # (C, L) each
            scores = objective.score_answers(
                features, ids, mask, rows, answers, answer_mask, condition
            )
            return [self.candidates[int(best)] for best in scores.argmax(dim=1)]
        max_length = self.config.max_length
        answer_ids = objective.answer(features, ids, mask, rows, condition, max_length=max_length)
        return processor.decode(answer_ids)

    def score(self, generated: str, references: list[str]) -> float:
        """One answer's accuracy under ``metric``."""
        if self.config.metric == "vqa":
            return vqa_accuracy(generated, references)
        return exact_match(generated, references)

    def setup(self, ctx: EvalContext) -> TextGenerator:
        """The answering objective; loads ``answer_list``.

        Raises:
            SpecError: no objective answers, or ``answer_list`` is unreadable or needs an
                objective that scores answers.
        """
        cfg = self.config
        objective = text_generator(ctx, cfg.objective, for_qa=True)
        if cfg.answer_list is not None:
            self.candidates = load_answer_list(cfg.answer_list)
            if not isinstance(objective, AnswerScorer):
                name = type(objective).__name__
                raise eval_spec_error(f"qa: answer_list needs an objective that scores answers "
                                      f"(lm or mgc); {name} does not")  # fmt: skip
        return objective

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        cfg = self.config
        objective = self.setup(ctx)

        def answer_batch(batch: Batch) -> list[dict[str, Any]]:
            features = ctx.features(batch)
            present = present_rows(features, condition_of(objective, cfg.group)).tolist()
            asked = [
                (row, question, answers)
                for row in present
                for question, answers in qa_pairs(batch["__meta__"][row].get(cfg.qa_field))
                if answers
            ]
            if not asked:
                return []
            generated = self.answers(ctx, objective, features, [(r, q) for r, q, _ in asked])
            return [
                {
                    "key": batch["__keys__"][row],
                    "question": question,
                    "generated": text,
                    "reference": most_common(answers),
                    "score": self.score(text, answers),
                }
                for (row, question, answers), text in zip(asked, generated, strict=True)
            ]

        answered = [item for part in ctx.map_batches(answer_batch) for item in part]
        self.examples = [
            {key: value for key, value in item.items() if key != "score"}
            for item in answered[: cfg.examples]
        ]
        if not answered:
            message = f"{cfg.name}: no sample has QA pairs in {cfg.qa_field!r} and its condition"
            raise SpecError([("eval", message)])
        return {f"{cfg.name}.accuracy": sum(item["score"] for item in answered) / len(answered)}


@hookimpl
def modaloom_register_evaluators(registry: Registry) -> None:
    """Register the QA evaluator."""
    registry.add_evaluator(
        QAEvaluator,
        QASpec,
        description="QA: greedy or answer-list answers; exact match or VQA accuracy",
    )
