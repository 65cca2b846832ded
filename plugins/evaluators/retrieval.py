"""Retrieval evaluator: R@1/5/10 and median rank in both directions, computed in chunks."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from modaloom.core.compose import FeatureCache
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

RECALL_AT = (1, 5, 10)


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
    match_by: Literal["text", "key"] = "text"
    """``text``: samples sharing a caption count as correct matches; ``key``: only the pair."""

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


def group_ids(values: list[str]) -> Tensor:
    """Equal strings get equal integer ids, (N,)."""
    table: dict[str, int] = {}
    return torch.tensor([table.setdefault(value, len(table)) for value in values])


def best_correct_ranks(
    objective: Objective,
    queries: dict[str, Tensor],
    targets: dict[str, Tensor],
    query_groups: Tensor,
    target_groups: Tensor,
    chunk_size: int,
) -> Tensor:
    """0-based rank of the best-scored correct target for each query, (Q,).

    Scores are computed ``chunk_size`` queries at a time, so peak memory is chunk x T.
    """
    ranks = []
    total = len(query_groups)
    for start in range(0, total, chunk_size):
        stop = min(start + chunk_size, total)
        chunk = {key: value[start:stop] for key, value in queries.items()}
        scores = objective.retrieval_scores(chunk, targets).float()  # (q, T)
        correct = query_groups[start:stop, None] == target_groups[None, :]
        best = scores.masked_fill(~correct, float("-inf")).amax(dim=1, keepdim=True)
        ranks.append((scores > best).sum(dim=1))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


def rank_metrics(prefix: str, ranks: Tensor) -> dict[str, float]:
    """R@K (fractions in 0..1) and the median rank (1-based)."""
    metrics = {f"{prefix}.r{k}": float((ranks < k).float().mean()) for k in RECALL_AT}
    metrics[f"{prefix}.medr"] = float((ranks + 1).float().median())
    return metrics


class RetrievalEvaluator(Evaluator):
    """Embeds every sample's query and target sides once, then ranks in chunks."""

    def __init__(self, config: RetrievalSpec, examples: int = 5) -> None:
        self.config = config
        self.num_examples = examples
        self.examples: list[dict[str, object]] = []
        """After `evaluate`: the first queries with their top-ranked target (for reports)."""

    def keep_examples(
        self,
        objective: Objective,
        queries: dict[str, Tensor],
        targets: dict[str, Tensor],
        ids: Tensor,
        texts: list[str],
        keys: list[str],
    ) -> None:
        """Record the best target of the first few queries."""
        count = min(self.num_examples, len(ids))
        head = {key: value[:count] for key, value in queries.items()}
        best = objective.retrieval_scores(head, targets).argmax(dim=1).tolist()
        self.examples = [
            {
                "query": texts[i],
                "retrieved": keys[j],
                "retrieved_text": texts[j],
                "correct": bool(ids[i] == ids[j]),
            }
            for i, j in enumerate(best)
        ]

    def encode(
        self, ctx: EvalContext, objective: Objective, itm: Any, batch: Batch
    ) -> dict[str, Any]:
        """One batch's query and target sides (and ITM inputs), on the CPU, with its captions
        and keys."""
        cfg = self.config
        features = ctx.features(batch)
        query = objective.retrieval_side(tuple(cfg.query), features)
        target = objective.retrieval_side(tuple(cfg.target), features)
        assert query is not None and target is not None
        record: dict[str, Any] = {
            "query": {k: v.cpu() for k, v in query.items()},
            "target": {k: v.cpu() for k, v in target.items()},
            "pairs": rerank_inputs(itm, features) if itm is not None else None,
            "groups": [],
            "texts": [],
            "keys": list(batch["__keys__"]),
        }
        for key, meta in zip(batch["__keys__"], batch["__meta__"], strict=True):
            text = meta.get("text")
            if isinstance(text, list | tuple):  # the eval processors use the first caption
                text = text[0] if text else None
            by_text = cfg.match_by == "text" and text is not None
            record["groups"].append(str(text) if by_text else key)
            record["texts"].append(str(text))
        return record

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        cfg = self.config
        objective = ctx.objective(cfg.objective, [tuple(cfg.query), tuple(cfg.target)])
        itm = ctx.objective(cfg.rerank, []) if cfg.rerank is not None else None
        records = ctx.map_batches(lambda batch: self.encode(ctx, objective, itm, batch))
        ids = group_ids([group for record in records for group in record["groups"]])
        texts = [text for record in records for text in record["texts"]]
        keys = [key for record in records for key in record["keys"]]
        gallery_q = concat_sides([record["query"] for record in records])
        gallery_t = concat_sides([record["target"] for record in records])

        self.keep_examples(objective, gallery_q, gallery_t, ids, texts, keys)
        forward = cfg.name or f"{initials(cfg.query)}2{initials(cfg.target)}"
        backward = "2".join(reversed(forward.split("2", 1)))
        swapped = _Swapped(objective)
        metrics = rank_metrics(
            f"retrieval.{forward}",
            sharded_ranks(ctx, objective, gallery_q, gallery_t, ids, cfg.chunk_size),
        )
        metrics.update(
            rank_metrics(
                f"retrieval.{backward}",
                sharded_ranks(ctx, swapped, gallery_t, gallery_q, ids, cfg.chunk_size),
            )
        )
        if itm is not None:
            pairs = concat_sides([record["pairs"] for record in records])

            for name, text_query in ((forward, True), (backward, False)):
                scorer, queries, targets = (
                    (objective, gallery_q, gallery_t)
                    if text_query
                    else (swapped, gallery_t, gallery_q)
                )
                gallery = (queries, targets, pairs, ids)
                ranks = sharded_reranks(ctx, itm, scorer, gallery, cfg.rerank_k, text_query)
                metrics.update(rank_metrics(f"retrieval.{name}_itm", ranks))
        return metrics


def sharded_ranks(
    ctx: EvalContext,
    objective: Objective,
    queries: dict[str, Tensor],
    targets: dict[str, Tensor],
    groups: Tensor,
    chunk_size: int,
) -> Tensor:
    """`best_correct_ranks` of every query, each rank scoring its own shard of the queries."""

    def shard(start: int, stop: int) -> Tensor:
        part = {key: value[start:stop] for key, value in queries.items()}
        return best_correct_ranks(objective, part, targets, groups[start:stop], groups, chunk_size)

    return torch.cat(ctx.map_shards(len(groups), shard))


def sharded_reranks(
    ctx: EvalContext,
    itm: Any,
    objective: Objective,
    gallery: tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor], Tensor],
    k: int,
    text_query: bool,
) -> Tensor:
    """`reranked_ranks` of every query, each rank re-scoring its own shard of the queries.

    Args:
        gallery: ``(queries, targets, pairs, groups)`` as `reranked_ranks` takes them.
    """

    def shard(start: int, stop: int) -> Tensor:
        rows = range(start, stop)
        return reranked_ranks(itm, ctx, objective, *gallery, k, rows, text_query)

    return torch.cat(ctx.map_shards(len(gallery[3]), shard))


def rerank_inputs(itm: Any, features: FeatureCache) -> dict[str, Tensor]:
    """Per-sample decoder text and visual tokens an ITM objective scores, on the CPU."""
    cfg = itm.config
    text = features.batch[features.model.input_field(cfg.decoder, features.batch)]
    visual = features[cfg.vision]
    mask = (
        visual.mask
        if visual.mask is not None
        else visual.sequence.new_ones(visual.sequence.shape[:2], dtype=torch.long)
    )
    return {
        "input_ids": text["input_ids"].cpu(),
        "attention_mask": text["attention_mask"].cpu(),
        "visual": visual.sequence.cpu(),
        "visual_mask": mask.cpu(),
    }


@torch.no_grad()
def reranked_ranks(
    itm: Any,
    ctx: EvalContext,
    objective: Objective,
    queries: dict[str, Tensor],
    targets: dict[str, Tensor],
    pairs: dict[str, Tensor],
    groups: Tensor,
    k: int,
    rows: range,
    text_query: bool = True,
) -> Tensor:
    """0-based rank of the best correct target after ITM re-scoring of each query's top k.

    A query whose top k holds no correct target keeps its first-stage rank (>= k).

    Args:
        rows: the queries to re-rank (a shard); the result has one rank per row, (len(rows),).
        text_query: texts query visual targets (else visual samples query texts); ``pairs``
            holds sample i's text and visual tokens at row i either way.
    """
    decoder = ctx.model.components[itm.config.decoder]
    ranks = []
    for index in rows:
        query = {key: value[index : index + 1] for key, value in queries.items()}
        first = objective.retrieval_scores(query, targets)[0].float()
        top = first.topk(min(k, first.numel())).indices
        correct = groups[top] == groups[index]
        if not bool(correct.any()):
            best_first = first.masked_fill(groups != groups[index], float("-inf")).max()
            ranks.append(int((first > best_first).sum()))
            continue
        device = ctx.device
        query_rows = torch.full_like(top, index)
        texts, visuals = (query_rows, top) if text_query else (top, query_rows)
        logits = itm.match_logits(
            decoder,
            pairs["input_ids"][texts].to(device),
            pairs["attention_mask"][texts].to(device),
            pairs["visual"][visuals].to(device),
            pairs["visual_mask"][visuals].to(device),
        )
        score = logits.softmax(dim=1)[:, 1].cpu() + first[top]
        best = score[correct].max()
        ranks.append(int((score > best).sum()))
    return torch.tensor(ranks, dtype=torch.long)


class _Swapped(Objective):
    """Scores target->query with the same objective (for the reverse direction)."""

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
        description="R@1/5/10 and median rank in both directions (chunked)",
    )
