"""Generative QA evaluator (VALOR, SPEC §A2): answer each question greedily, exact match.

Each sample's QA pairs (``[{"question", "answer"}, ...]`` in its ``qa`` field, as digits-av
clips carry them) are asked one by one: the question is encoded as in training (the text
processor's pair encoding, ``[CLS] question [SEP]``), the objective decodes the answer with no
vocabulary restriction, and an answer counts as correct when it equals the reference after
`normalize_answer` (lowercase, punctuation and extra whitespace removed).
"""

from __future__ import annotations

import random
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from modaloom.core.compose import FeatureCache
from modaloom.core.data import process_values
from modaloom.core.errors import SpecError
from modaloom.core.evaluation import EvalContext, Evaluator
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
from modaloom.plugins.evaluators.captioning import condition_of, text_generator, tokenize_caption


def normalize_answer(text: str) -> str:
    """Lowercase, punctuation removed, whitespace collapsed (as captions are tokenized)."""
    return tokenize_caption(text)


def qa_pairs(value: Any) -> list[tuple[str, str]]:
    """``(question, answer)`` pairs of a sample's QA field (a pair or a list of pairs)."""
    values = value if isinstance(value, list | tuple) else [value]
    return [
        (v["question"], v["answer"])
        for v in values
        if isinstance(v, dict) and isinstance(v.get("question"), str) and "answer" in v
    ]


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
    """Answer every QA pair of a source's samples; accuracy by normalised exact match."""

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

    def references(self) -> list[Reference]:
        """``objective`` names an objective, ``group`` components."""
        return [
            *objective_reference("objective", self.objective),
            *group_references("group", self.group),
        ]


class QAEvaluator(Evaluator):
    """``<name>.accuracy`` in 0..1 over all QA pairs; examples in ``self.examples``."""

    def __init__(self, config: QASpec) -> None:
        self.config = config
        self.examples: list[dict[str, str]] = []
        """The first ``config.examples`` answers: ``{"key", "question", "generated",
        "reference"}``."""

    def answers(
        self,
        ctx: EvalContext,
        objective: TextGenerator,
        features: FeatureCache,
        questions: list[tuple[int, str]],
    ) -> list[str]:
        """Generated answers to ``(row, question)`` pairs about the batch's samples."""
        processor = ctx.processors["text"]
        assert isinstance(processor, TextCodec)
        ids, mask = encode_questions(processor, [question for _, question in questions])
        rows = torch.tensor([row for row, _ in questions], device=ctx.device)
        answer_ids = objective.answer(
            features,
            ids.to(ctx.device),
            mask.to(ctx.device),
            rows,
            condition_of(objective, self.config.group),
            max_length=self.config.max_length,
        )
        return processor.decode(answer_ids)

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        cfg = self.config
        objective = text_generator(ctx, cfg.objective, for_qa=True)

        def answer_batch(batch: Batch) -> list[dict[str, str]]:
            features = ctx.features(batch)
            present = present_rows(features, condition_of(objective, cfg.group)).tolist()
            asked = [
                (row, question, answer)
                for row in present
                for question, answer in qa_pairs(batch["__meta__"][row].get(cfg.qa_field))
            ]
            if not asked:
                return []
            generated = self.answers(ctx, objective, features, [(r, q) for r, q, _ in asked])
            return [
                {
                    "key": batch["__keys__"][row],
                    "question": question,
                    "generated": text,
                    "reference": str(answer),
                }
                for (row, question, answer), text in zip(asked, generated, strict=True)
            ]

        answered = [item for part in ctx.map_batches(answer_batch) for item in part]
        total = len(answered)
        correct = sum(
            normalize_answer(item["generated"]) == normalize_answer(item["reference"])
            for item in answered
        )
        self.examples = answered[: cfg.examples]
        if total == 0:
            message = f"{cfg.name}: no sample has QA pairs in {cfg.qa_field!r} and its condition"
            raise SpecError([("eval", message)])
        return {f"{cfg.name}.accuracy": correct / total}


@hookimpl
def modaloom_register_evaluators(registry: Registry) -> None:
    """Register the QA evaluator."""
    registry.add_evaluator(
        QAEvaluator,
        QASpec,
        description="generative QA (greedy answers), normalised exact-match accuracy",
    )
