"""Captioning evaluator: generate a caption per sample, score it with the COCO caption metrics.

Metrics come from pycocoevalcap (``pip install modaloom[eval]``): BLEU-4, CIDEr (CIDEr-D as
in the COCO toolkit; its IDF is computed over the evaluated references, so it needs varied
captions) and ROUGE-L, plus METEOR when a ``java`` binary is on PATH. The COCO toolkit's
``PTBTokenizer`` needs Java too, so captions are tokenized here instead (`tokenize_caption`:
lowercase, punctuation removed, whitespace split), which matches it on plain English captions.
"""

from __future__ import annotations

import functools
import logging
import re
import shutil
from typing import Any, Literal

import torch
from pydantic import Field

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

log = logging.getLogger(__name__)


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


def tokenize_caption(text: str) -> str:
    """Lowercase, punctuation replaced by spaces, whitespace collapsed (PTBTokenizer-like)."""
    return " ".join(re.sub(r"[^\w\s]|_", " ", text.lower()).split())


def caption_references(meta: dict[str, Any], field: str = "text") -> list[str]:
    """A sample's reference captions: the string or strings in ``meta[field]``."""
    value = meta.get(field)
    values = value if isinstance(value, list | tuple) else [value]
    return [v for v in values if isinstance(v, str)]


@functools.cache
def _warn_no_meteor(reason: str) -> None:
    log.warning("captioning: METEOR left out (%s)", reason)


def meteor_score(
    references: dict[int, list[str]], candidates: dict[int, list[str]]
) -> float | None:
    """Corpus METEOR through pycocoevalcap's Java scorer; ``None`` (warned once) without Java."""
    if shutil.which("java") is None:
        _warn_no_meteor("no java on PATH")
        return None
    from pycocoevalcap.meteor.meteor import Meteor

    try:
        scorer = Meteor()
        score, _ = scorer.compute_score(references, candidates)
    except (OSError, ValueError) as exc:
        _warn_no_meteor(f"the Java scorer failed: {exc}")
        return None
    return float(score)


def caption_metrics(
    references: dict[int, list[str]], candidates: dict[int, str], meteor: bool = True
) -> dict[str, float]:
    """BLEU-4, CIDEr, ROUGE-L (and METEOR) of candidates against references.

    Args:
        references: per sample id, one or more reference captions.
        candidates: per sample id (the same ids), the generated caption.
        meteor: also compute METEOR when Java is available.

    Returns:
        ``{"bleu4", "cider", "rouge_l"[, "meteor"]}`` as floats (CIDEr on its 0..10 scale).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    refs = {i: [tokenize_caption(r) for r in captions] for i, captions in references.items()}
    cands = {i: [tokenize_caption(candidates[i])] for i in references}
    bleu, _ = Bleu(4).compute_score(refs, cands, verbose=0)
    metrics = {
        "bleu4": float(bleu[3]),
        "cider": float(Cider().compute_score(refs, cands)[0]),
        "rouge_l": float(Rouge().compute_score(refs, cands)[0]),
    }
    if meteor:
        score = meteor_score(refs, cands)
        if score is not None:
            metrics["meteor"] = score
    return metrics


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

    def references(self) -> list[Reference]:
        """``objective`` names an objective, ``group`` components."""
        return [
            *objective_reference("objective", self.objective),
            *group_references("group", self.group),
        ]


class CaptioningEvaluator(Evaluator):
    """``<name>.bleu4``, ``.cider``, ``.rouge_l`` (``.meteor``); examples in ``self.examples``.

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
        references: dict[int, list[str]] = {}
        candidates: dict[int, str] = {}

        def caption_batch(batch: Batch) -> list[tuple[str, list[str], str]]:
            refs = [caption_references(meta) for meta in batch["__meta__"]]
            features = ctx.features(batch)
            present = present_rows(features, condition_of(objective, cfg.group))
            rows = [row for row in present.tolist() if refs[row]]
            if not rows:
                return []
            texts = self.captions(ctx, objective, features, rows)
            return [(batch["__keys__"][row], refs[row], text) for row, text in zip(rows, texts)]

        captioned = [item for part in ctx.map_batches(caption_batch) for item in part]
        references = {index: refs for index, (_, refs, _) in enumerate(captioned)}
        candidates = {index: text for index, (_, _, text) in enumerate(captioned)}
        self.examples = [
            {"key": key, "generated": text, "reference": refs[0]}
            for key, refs, text in captioned[: cfg.examples]
        ]
        if not references:
            raise SpecError([("eval", f"{cfg.name}: no sample has a caption and its condition")])
        metrics = caption_metrics(references, candidates, cfg.meteor)
        return {f"{cfg.name}.{key}": value for key, value in metrics.items()}


@hookimpl
def modaloom_register_evaluators(registry: Registry) -> None:
    """Register the captioning evaluator."""
    registry.add_evaluator(
        CaptioningEvaluator,
        CaptioningSpec,
        description="greedy/beam captions scored with BLEU-4, CIDEr, ROUGE-L (METEOR with Java)",
    )
