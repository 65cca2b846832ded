"""ITM re-ranking for the retrieval evaluator (BLIP/OmniVL): each query's ``k`` best targets by
the first-stage score are re-scored by ITM match probability + first-stage score."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from modaloom.core.compose import FeatureCache
from modaloom.core.evaluation import EvalContext
from modaloom.core.interfaces import Objective
from modaloom.core.metrics import Matches, best_positive_ranks

Side = dict[str, Tensor]


def text_inputs(itm: Any, features: FeatureCache) -> Side:
    """Per-sample decoder text an ITM objective scores (``input_ids``, ``attention_mask``), on
    the CPU."""
    text = features.batch[features.model.input_field(itm.config.decoder, features.batch)]
    return {"input_ids": text["input_ids"].cpu(), "attention_mask": text["attention_mask"].cpu()}


def visual_inputs(itm: Any, features: FeatureCache) -> Side:
    """Per-sample visual tokens an ITM objective scores (``visual``, ``visual_mask``), on the
    CPU."""
    visual = features[itm.config.vision]
    mask = (
        visual.mask
        if visual.mask is not None
        else visual.sequence.new_ones(visual.sequence.shape[:2], dtype=torch.long)
    )
    return {"visual": visual.sequence.cpu(), "visual_mask": mask.cpu()}


@torch.no_grad()
def reranked_ranks(
    itm: Any,
    ctx: EvalContext,
    objective: Objective,
    sides: tuple[Side, Side],
    inputs: tuple[Side, Side],
    matches: Matches,
    k: int,
    rows: range,
    text_query: bool = True,
) -> Tensor:
    """1-based rank of each query's best positive after ITM re-scoring of its top k.

    Ties are pessimistic (`modaloom.core.metrics.best_positive_ranks`). A query whose top k
    holds no positive keeps its first-stage rank (> k).

    Args:
        itm: the ``itm`` objective (``match_logits``, ``config.decoder``).
        ctx: the evaluation context (model components, device).
        objective: the first-stage scorer of queries against targets.
        sides: ``(queries, targets)`` retrieval sides.
        inputs: ``(texts, visuals)``: ITM inputs of the text rows and of the visual rows.
        matches: the positives of each query.
        k: candidates re-scored per query.
        rows: the queries to re-rank (a shard); the result has one rank per row.
        text_query: texts query visual targets (else visual rows query texts).
    """
    decoder = ctx.model.components[itm.config.decoder]
    queries, targets = sides
    texts, visuals = inputs
    ranks = []
    for index in rows:
        query = {key: value[index : index + 1] for key, value in queries.items()}
        first = objective.retrieval_scores(query, targets)[0].float().cpu()
        positives = matches.rows(index, index + 1)[0]
        top = first.topk(min(k, first.numel())).indices
        correct = positives[top]
        if not bool(correct.any()):
            ranks.append(int(best_positive_ranks(first[None], positives[None])[0]))
            continue
        query_rows = torch.full_like(top, index)
        text_rows, visual_rows = (query_rows, top) if text_query else (top, query_rows)
        logits = itm.match_logits(
            decoder,
            texts["input_ids"][text_rows].to(ctx.device),
            texts["attention_mask"][text_rows].to(ctx.device),
            visuals["visual"][visual_rows].to(ctx.device),
            visuals["visual_mask"][visual_rows].to(ctx.device),
        )
        score = logits.softmax(dim=1)[:, 1].float().cpu() + first[top]
        ranks.append(int(best_positive_ranks(score[None], correct[None])[0]))
    return torch.tensor(ranks, dtype=torch.long)


def sharded_reranks(
    ctx: EvalContext,
    itm: Any,
    objective: Objective,
    sides: tuple[Side, Side],
    inputs: tuple[Side, Side],
    matches: Matches,
    k: int,
    text_query: bool,
) -> Tensor:
    """`reranked_ranks` of every query, each process re-scoring its own shard of the queries."""

    def shard(start: int, stop: int) -> Tensor:
        rows = range(start, stop)
        return reranked_ranks(itm, ctx, objective, sides, inputs, matches, k, rows, text_query)

    return torch.cat(ctx.map_shards(len(matches), shard))
