"""Zero-shot classification: prompted class names embedded as texts, nearest class wins."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from modaloom.core.data import batch_from_values
from modaloom.core.errors import SpecError
from modaloom.core.evaluation import EvalContext, Evaluator, concat_sides
from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import Batch, Objective
from modaloom.core.registry import Registry
from modaloom.core.spec_models import (
    EvaluatorSpec,
    Reference,
    component_references,
    objective_reference,
)


class ZeroShotSpec(EvaluatorSpec):
    """Classify each sample of a labelled source by its most similar prompted class text."""

    type: Literal["zeroshot"] = "zeroshot"
    classes: list[str] = Field(min_length=2)
    """Class names; index i is label i of the source."""
    templates: list[str] = ["a photo of a {}."]
    """Prompts; the class embedding is the normalised mean over templates."""
    media: list[str] = ["vision"]
    """Components of the sample side."""
    text: str = "text"
    """The text component."""
    objective: str | None = None
    """Objective whose embeddings are used; the first that embeds both sides."""
    name: str = "zeroshot"
    """Metric prefix."""
    label_field: str = "label"
    """The sample field holding the class index (``label``, or e.g. ``visual_digit``)."""

    def references(self) -> list[Reference]:
        """``media`` and ``text`` name components, ``objective`` an objective."""
        return [
            *component_references("media", self.media),
            Reference("text", self.text),
            *objective_reference("objective", self.objective),
        ]


def prompt_batch(ctx: EvalContext, texts: list[str]) -> Batch:
    """A text-only batch of ``texts``, tokenized by the data's text processor."""
    return batch_from_values(ctx.processors, {"text": texts}, keys=texts, device=ctx.device)


class ZeroShotEvaluator(Evaluator):
    """Accuracy of the nearest prompted class, in ``<name>.accuracy``."""

    def __init__(self, config: ZeroShotSpec) -> None:
        self.config = config

    def class_embeddings(self, ctx: EvalContext, objective: Objective) -> dict[str, Tensor]:
        cfg = self.config
        sides = []
        for template in cfg.templates:
            texts = [template.format(name) for name in cfg.classes]
            side = objective.retrieval_side((cfg.text,), ctx.features(prompt_batch(ctx, texts)))
            assert side is not None
            sides.append(side)
        if len(sides) == 1 or set(sides[0]) != {"embedding"}:
            return sides[0]  # token-level sides are not averaged over templates
        mean = torch.stack([s["embedding"] for s in sides]).mean(dim=0)
        return {"embedding": torch.nn.functional.normalize(mean, dim=-1)}

    def labels(self, batch: Batch) -> Tensor:
        """(B,) class indices, -1 where a sample has none."""
        field = self.config.label_field
        values = [meta.get(field) for meta in batch["__meta__"]]
        if all(value is None for value in values):
            message = f"zero-shot source has no {field!r} field (sample {batch['__keys__'][0]!r})"
            raise SpecError([("eval", f"{message}; set `label_field`")])
        return torch.tensor([-1 if value is None else int(value) for value in values])

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        cfg = self.config
        objective = ctx.objective(cfg.objective, [(cfg.text,), tuple(cfg.media)])
        classes = self.class_embeddings(ctx, objective)

        def count_correct(batch: Batch) -> tuple[int, int]:
            labels = self.labels(batch).to(ctx.device)
            side = objective.retrieval_side(tuple(cfg.media), ctx.features(batch))
            assert side is not None
            scores = objective.retrieval_scores(concat_sides([side]), classes)
            valid = labels >= 0
            return int((scores.argmax(dim=1) == labels)[valid].sum()), int(valid.sum())

        counts = ctx.map_batches(count_correct)
        correct, total = sum(c for c, _ in counts), sum(t for _, t in counts)
        return {f"{cfg.name}.accuracy": correct / max(total, 1)}


@hookimpl
def modaloom_register_evaluators(registry: Registry) -> None:
    """Register the zero-shot classification evaluator."""
    registry.add_evaluator(
        ZeroShotEvaluator,
        ZeroShotSpec,
        description="zero-shot classification from prompted label texts",
    )
