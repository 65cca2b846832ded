"""Retrieval evaluator: R@1/5/10, median and mean rank in both directions, computed in chunks.

The protocol of the papers' tables (`modaloom.core.metrics`): with N captions per item (COCO,
Flickr30K: 5; MSR-VTT 1k-A: 1), text-to-visual ranks each caption against the items (its only
positive is its item) and visual-to-text ranks each item against all captions (a hit at K when
any of its captions is in the top K). Items and captions are laid out by
`modaloom.plugins.evaluators.retrieval_gallery`. Ranks are computed ``chunk_size`` queries at a
time, so memory stays at chunk x gallery size whatever the number of queries.

Metrics, for the forward name (``t2v``) and the backward one (``v2t``):
``retrieval.<dir>.r1 .r5 .r10 .medr .meanr .rmean`` and ``retrieval.<forward>.rsum`` (both
directions' R@1/5/10 summed: the papers' RSUM / 100, as recalls are fractions here).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from modaloom.core.evaluation import EvalContext, Evaluator, eval_spec_error
from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import Objective
from modaloom.core.metrics import (
    Matches,
    ScoreRows,
    chunked_ranks,
    column_logsumexp,
    dual_softmax,
    recall_metrics,
    summarize,
)
from modaloom.core.registry import Registry
from modaloom.core.spec_models import (
    EvaluatorSpec,
    Reference,
    component_references,
    objective_reference,
)
from modaloom.plugins.evaluators.retrieval_gallery import (
    Gallery,
    GalleryBuilder,
    GalleryConfig,
    Side,
    encode_batch,
)
from modaloom.plugins.evaluators.retrieval_rerank import sharded_reranks


class RetrievalSpec(EvaluatorSpec):
    """Text-to-media and media-to-text retrieval over a paired source."""

    type: Literal["retrieval"] = "retrieval"
    query: list[str] = ["text"]
    """Components of the query side."""
    target: list[str] = ["vision"]
    """Components of the target side (``[vision, audio]`` scores against both together)."""
    objective: str | None = None
    """Objective whose embeddings and scores are used; the first that can score both sides."""
    name: str | None = None
    """Metric name, e.g. ``t2av``; the components' initials by default."""
    chunk_size: int = Field(512, gt=0)
    """Queries scored at once; memory grows with chunk_size x gallery size."""
    rerank: str | None = None
    """Name of an ``itm`` objective: re-score each query's ``rerank_k`` best targets by ITM
    match probability + first-stage score (BLIP/OmniVL), in both directions, reported as
    ``retrieval.<name>_itm.*`` (and the reverse name). Needs a single text query component and
    a single visual target component."""
    rerank_k: int = Field(16, gt=0)
    """Candidates per query re-scored by ITM."""
    match_by: Literal["text", "item"] = "text"
    """``item``: a caption's only positive is its item (the papers' protocol); ``text``: also
    every item with an identical caption (digits-av, whose captions repeat across clips)."""
    item_field: str = "item"
    """Samples with the same value of this field are one item (e.g. one manifest line per COCO
    caption, all with the image id); without the field each sample is its own item."""
    text_field: str = "text"
    """The sample field holding the captions (a string or a list: COCO's 5)."""
    dsl: bool = False
    """Dual-softmax re-scoring (CAMoE) of the first-stage scores in both directions."""
    dsl_temperature: float = Field(0.01, gt=0.0)
    """Softmax temperature of `dsl` (0.01 suits cosine similarities)."""

    def references(self) -> list[Reference]:
        """``query`` and ``target`` name components, ``objective`` an objective, ``rerank`` an
        ``itm`` objective."""
        return [
            *component_references("query", self.query),
            *component_references("target", self.target),
            *objective_reference("objective", self.objective),
            *objective_reference("rerank", self.rerank, ("itm",)),
        ]


def initials(components: list[str]) -> str:
    """``["vision", "audio"]`` -> ``"va"``."""
    return "".join(name[0] for name in components)


def rank_metrics(prefix: str, ranks: Tensor) -> dict[str, float]:
    """``<prefix>.r1 .r5 .r10 .medr .meanr`` of 1-based ranks (R@K in 0..1)."""
    return {f"{prefix}.{key}": value for key, value in recall_metrics(ranks).items()}


def both_directions(forward: str, backward: str, ranks: tuple[Tensor, Tensor]) -> dict[str, Any]:
    """`rank_metrics` of both directions plus each one's ``rmean`` and their ``rsum``."""
    first, second = recall_metrics(ranks[0]), recall_metrics(ranks[1])
    first["rmean"], second["rmean"], rsum = summarize(first, second)
    metrics = {f"retrieval.{forward}.{key}": value for key, value in first.items()}
    metrics.update({f"retrieval.{backward}.{key}": value for key, value in second.items()})
    metrics[f"retrieval.{forward}.rsum"] = rsum
    return metrics


def side_rows(side: Side, start: int, stop: int) -> Side:
    """Rows ``start..stop`` of a side."""
    return {key: value[start:stop] for key, value in side.items()}


def dsl_rows(
    ctx: EvalContext, scores: ScoreRows, total: int, chunk_size: int, temperature: float
) -> ScoreRows:
    """``scores`` re-scored by `dual_softmax`, its normaliser summed over every process's shard
    of the ``total`` queries."""

    def normaliser(start: int, stop: int) -> Tensor | None:
        return column_logsumexp(scores, range(start, stop), chunk_size, temperature)

    parts = [part for part in ctx.map_shards(total, normaliser) if part is not None]
    lse = torch.stack(parts).logsumexp(dim=0)
    return lambda start, stop: dual_softmax(scores(start, stop), lse, temperature)


def sharded_ranks(
    ctx: EvalContext,
    scorer: Objective,
    sides: tuple[Side, Side],
    matches: Matches,
    chunk_size: int,
    dsl_temperature: float | None = None,
) -> Tensor:
    """1-based rank of every query's best positive, each process ranking its shard of the
    queries ``chunk_size`` at a time.

    Args:
        ctx: the evaluation context (sharding).
        scorer: scores queries against targets (`Objective.retrieval_scores`).
        sides: ``(queries, targets)``.
        matches: the positives of each query.
        chunk_size: queries scored at once.
        dsl_temperature: re-score with `dual_softmax` at this temperature; ``None``: no DSL.
    """
    queries, targets = sides

    def scores(start: int, stop: int) -> Tensor:
        return scorer.retrieval_scores(side_rows(queries, start, stop), targets)

    rows = (
        scores
        if dsl_temperature is None
        else dsl_rows(ctx, scores, len(matches), chunk_size, dsl_temperature)
    )

    def shard(start: int, stop: int) -> Tensor:
        return chunked_ranks(rows, matches.rows, range(start, stop), chunk_size)

    return torch.cat(ctx.map_shards(len(matches), shard))


class RetrievalEvaluator(Evaluator):
    """Embeds every item and caption once, then ranks in chunks."""

    def __init__(self, config: RetrievalSpec, examples: int = 5) -> None:
        self.config = config
        self.num_examples = examples
        self.examples: list[dict[str, object]] = []
        """After `evaluate`: the first queries with their top-ranked target (for reports)."""

    def keep_examples(self, objective: Objective, gallery: Gallery) -> None:
        """Record the best target of the first few queries."""
        count = min(self.num_examples, len(gallery.matches))
        head = side_rows(gallery.query, 0, count)
        best = objective.retrieval_scores(head, gallery.target).argmax(dim=1).tolist()
        correct = gallery.matches.rows(0, count)
        self.examples = [
            {
                "query": gallery.query_text[i],
                "retrieved": gallery.target_key[j],
                "retrieved_text": gallery.target_text[j],
                "correct": bool(correct[i, j]),
            }
            for i, j in enumerate(best)
        ]

    def gallery(self, ctx: EvalContext, objective: Objective, itm: Any) -> Gallery:
        """Every batch's sides, items and captions, joined."""
        cfg = self.config
        layout = GalleryConfig(tuple(cfg.query), tuple(cfg.target), cfg.text_field, cfg.item_field)
        records = ctx.map_batches(lambda batch: encode_batch(ctx, layout, objective, batch, itm))
        builder = GalleryBuilder(by_text=cfg.match_by == "text")
        for record in records:
            builder.add(record)
        if itm is not None and builder.which != "query":
            name = "+".join(cfg.query)
            message = f"retrieval: rerank needs the text component as the query (got {name})"
            raise eval_spec_error(message)
        return builder.gallery()

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        cfg = self.config
        objective = ctx.objective(cfg.objective, [tuple(cfg.query), tuple(cfg.target)])
        itm = ctx.objective(cfg.rerank, []) if cfg.rerank is not None else None
        gallery = self.gallery(ctx, objective, itm)
        self.keep_examples(objective, gallery)
        forward = cfg.name or f"{initials(cfg.query)}2{initials(cfg.target)}"
        backward = "2".join(reversed(forward.split("2", 1)))
        swapped = Swapped(objective)
        sides = (gallery.query, gallery.target)
        reverse = (gallery.target, gallery.query)
        temperature = cfg.dsl_temperature if cfg.dsl else None
        ranks = (
            sharded_ranks(ctx, objective, sides, gallery.matches, cfg.chunk_size, temperature),
            sharded_ranks(
                ctx, swapped, reverse, gallery.matches.transposed(), cfg.chunk_size, temperature
            ),
        )
        metrics = both_directions(forward, backward, ranks)
        if itm is not None:
            assert gallery.texts is not None and gallery.visuals is not None
            inputs = (gallery.texts, gallery.visuals)
            reranked = (
                sharded_reranks(
                    ctx, itm, objective, sides, inputs, gallery.matches, cfg.rerank_k, True
                ),
                sharded_reranks(
                    ctx, itm, swapped, reverse, inputs, gallery.matches.transposed(),
                    cfg.rerank_k, False,
                ),
            )  # fmt: skip
            metrics.update(both_directions(f"{forward}_itm", f"{backward}_itm", reranked))
        return metrics


class Swapped(Objective):
    """Scores target->query with the same objective (the reverse direction): (T, Q) scores as
    the inner objective's (Q, T) transposed."""

    def __init__(self, inner: Objective) -> None:
        super().__init__()
        self.inner = [inner]  # a list keeps it out of this module's children

    def retrieval_scores(self, query: dict[str, Tensor], target: dict[str, Tensor]) -> Tensor:
        return self.inner[0].retrieval_scores(target, query).T


@hookimpl
def modaloom_register_evaluators(registry: Registry) -> None:
    """Register the retrieval evaluator."""
    registry.add_evaluator(
        RetrievalEvaluator,
        RetrievalSpec,
        description="R@1/5/10, median/mean rank in both directions, N captions per item (chunked)",
    )
