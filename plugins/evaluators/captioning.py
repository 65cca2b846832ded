"""Captioning evaluator: generate a caption per item, score it with the COCO caption metrics
(BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE: `modaloom.core.caption_metrics`).

An item's references are the strings of its samples' ``text`` field (a caption or a list, COCO's
5); samples sharing an ``item`` field value (one manifest line per caption) are one item,
captioned once.
"""

from __future__ import annotations

import importlib.util
import shutil
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from modaloom.core.caption_metrics import caption_metrics, notice, tokenize_caption
from modaloom.core.compose import FeatureCache
from modaloom.core.errors import SpecError
from modaloom.core.evaluation import EvalContext, Evaluator, eval_spec_error
from modaloom.core.features import Group, group_members, present_rows
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

__all__ = [
    "CaptioningEvaluator",
    "CaptioningSpec",
    "caption_metrics",
    "caption_references",
    "text_generator",
    "tokenize_caption",
]


def text_generator(ctx: EvalContext, name: str | None, for_qa: bool) -> TextGenerator:
    """The named objective, or the first generating one (for QA: the first trained on QA pairs,
    for captioning: the first that is not).

    Raises:
        SpecError: the named objective does not exist or does not generate text; none does.
    """
    return ctx.model.objective_with(
        TextGenerator,
        name,
        what="generate text",
        fix="add an lm or mgc objective",
        prefer=lambda objective: objective.answers_questions == for_qa,
        error=eval_spec_error,
    )


def condition_of(objective: TextGenerator, group: Group | None) -> list[str]:
    """The components to condition on: the group's, or the objective's default."""
    return objective.default_condition if group is None else group_members(group)


def caption_references(meta: dict[str, Any], field: str = "text") -> list[str]:
    """A sample's reference captions: the string or strings in ``meta[field]``."""
    value = meta.get(field)
    values = value if isinstance(value, list | tuple) else [value]
    return [v for v in values if isinstance(v, str)]


def item_of(key: str, meta: dict[str, Any], field: str = "item") -> str:
    """A sample's item identity: its ``field`` value (e.g. the COCO image id shared by the
    lines of its 5 captions) or, without one, its key."""
    value = meta.get(field)
    return key if value is None else str(value)


def merge_items(
    captioned: list[tuple[str, str, list[str], str]],
) -> list[tuple[str, list[str], str]]:
    """``(item, key, references, generated)`` rows -> one ``(key, references, generated)`` per
    item, in first-seen order: the first sample's key and caption, every sample's references
    (repeats dropped)."""
    merged: dict[str, tuple[str, list[str], str]] = {}
    for item, key, refs, text in captioned:
        if item not in merged:
            merged[item] = (key, [], text)
        known = merged[item][1]
        known += [ref for ref in refs if ref not in known]
    return list(merged.values())


PYCOCOEVALCAP_MISSING = (
    "captioning is scored with pycocoevalcap, which is not installed: pip install 'modaloom[eval]'"
)
JAVA_MISSING = (
    "captioning: no java on PATH, so METEOR and SPICE will be left out of the metrics (install "
    "a Java runtime to compute them, or set meteor: false and spice: false)"
)


class CaptioningSpec(EvaluatorSpec):
    """Caption every sample of a source and score against its captions (``text`` field)."""

    type: Literal["captioning"] = "captioning"
    objective: str | None = None
    """An ``lm`` or ``mgc`` objective; default: the first generating one not trained on QA."""
    group: Group | None = None
    """Condition to caption from, e.g. ``[text, [vision, audio]]`` (MGC's T-AV); default: the
    objective's last group (MGC) or its ``condition`` (LM)."""
    num_beams: int = Field(3, ge=1)
    """Beam size; 1 = greedy (VALOR and BLIP: 3)."""
    max_length: int = Field(20, ge=1)
    """Generated tokens at most, [SEP] included."""
    min_length: int = Field(1, ge=0)
    """Generated tokens before [SEP] at least (BLIP COCO: 5)."""
    name: str = "captioning"
    """Metric prefix."""
    examples: int = Field(5, ge=0)
    """How many (key, generated, reference) examples to keep in ``evaluator.examples``."""
    meteor: bool = True
    """Compute METEOR when Java is available (it starts a JVM: a few seconds)."""
    spice: bool = True
    """Compute SPICE when Java and Stanford CoreNLP's jars are available (a JVM with 8 GB
    heap; slow)."""
    item_field: str = "item"
    """Samples with the same value of this field are one item (their captions pooled as
    references, captioned once); without the field each sample is its own item."""

    def references(self) -> list[Reference]:
        """``objective`` names an objective, ``group`` components."""
        return [
            *objective_reference("objective", self.objective),
            *group_references("group", self.group),
        ]

    @model_validator(mode="after")
    def _extras_installed(self) -> CaptioningSpec:
        """pycocoevalcap must be installed, so ``modaloom validate`` (and ``train``, before any
        step) refuses a spec whose captioning could not be scored; without Java, METEOR and
        SPICE are left out, which is only warned (once)."""
        if importlib.util.find_spec("pycocoevalcap") is None:
            raise ValueError(PYCOCOEVALCAP_MISSING)
        if (self.meteor or self.spice) and shutil.which("java") is None:
            notice(JAVA_MISSING)
        return self


class CaptioningEvaluator(Evaluator):
    """``<name>.bleu1`` .. ``.bleu4``, ``.rouge_l``, ``.cider`` (``.meteor``, ``.spice``);
    examples in ``self.examples``.

    Samples without a reference caption or without the condition's components are skipped.
    """

    def __init__(self, config: CaptioningSpec) -> None:
        self.config = config
        self.examples: list[dict[str, str]] = []
        """The first ``config.examples`` captions: ``{"key", "generated", "reference"}``."""

    def captions(
        self, ctx: EvalContext, objective: TextGenerator, features: FeatureCache, rows: list[int]
    ) -> list[str]:
        """Generated captions of the samples ``rows`` of the batch."""
        cfg = self.config
        ids = objective.generate(
            features,
            condition_of(objective, cfg.group),
            rows=torch.tensor(rows, device=ctx.device),
            num_beams=cfg.num_beams,
            max_length=cfg.max_length,
            min_length=cfg.min_length,
        )
        processor = ctx.processors["text"]
        assert isinstance(processor, TextCodec)
        return processor.decode(ids)

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        cfg = self.config
        objective = text_generator(ctx, cfg.objective, for_qa=False)

        def caption_batch(batch: Batch) -> list[tuple[str, str, list[str], str]]:
            keys, metas = batch["__keys__"], batch["__meta__"]
            items = [item_of(key, meta, cfg.item_field) for key, meta in zip(keys, metas)]
            refs = [caption_references(meta) for meta in metas]
            features = ctx.features(batch)
            present = present_rows(features, condition_of(objective, cfg.group)).tolist()
            usable = [row for row in present if refs[row]]
            first: dict[str, int] = {}
            for row in usable:
                first.setdefault(items[row], row)
            rows = list(first.values())  # one caption per item of the batch
            texts = self.captions(ctx, objective, features, rows) if rows else []
            generated = dict(zip(rows, texts, strict=True))
            return [
                (items[row], keys[row], refs[row], generated[first[items[row]]]) for row in usable
            ]

        rows = [row for part in ctx.map_batches(caption_batch) for row in part]
        captioned = merge_items(rows)
        references = {index: refs for index, (_, refs, _) in enumerate(captioned)}
        candidates = {index: text for index, (_, _, text) in enumerate(captioned)}
        self.examples = [
            {"key": key, "generated": text, "reference": refs[0]}
            for key, refs, text in captioned[: cfg.examples]
        ]
        if not references:
            raise SpecError([("eval", f"{cfg.name}: no sample has a caption and its condition")])
        metrics = caption_metrics(references, candidates, cfg.meteor, cfg.spice)
        return {f"{cfg.name}.{key}": value for key, value in metrics.items()}


@hookimpl
def modaloom_register_evaluators(registry: Registry) -> None:
    """Register the captioning evaluator."""
    registry.add_evaluator(
        CaptioningEvaluator,
        CaptioningSpec,
        description="greedy/beam captions: BLEU-1..4, ROUGE-L, CIDEr-D (METEOR, SPICE with Java)",
    )
