"""Retrieval metrics as the papers compute them: ranks of the best positive, R@K, median and
mean rank, several positives per query (COCO/Flickr's 5 captions per image) and dual-softmax
re-scoring, all computable a chunk of queries at a time.

Conventions:

* ``scores`` (Q, T): higher is better; ``positives`` (Q, T) bool marks the correct targets.
* A query's rank is the 1-based position of its best-scored positive. Ties are broken
  pessimistically: every negative with the same score as that positive ranks above it. A query
  without any positive gets rank T + 1 (a miss at every K).
* Text-to-visual with N captions per item: each caption is a query whose only positive is its
  item. Visual-to-text: each item is a query whose positives are its N captions, so it is a hit
  at K when any of them is in the top K (the best-ranked positive counts).
* R@K is a fraction in 0..1 (the papers print percentages: x100); ``medr`` is the lower median
  of the ranks (``torch.median``), ``meanr`` their mean.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

RECALL_AT = (1, 5, 10)

ScoreRows = Callable[[int, int], Tensor]
"""``scores(start, stop)`` -> (stop - start, T) scores of those queries against every target."""


def best_positive_ranks(scores: Tensor, positives: Tensor) -> Tensor:
    """1-based rank of each query's best-scored positive, ties pessimistic, (Q,) long.

    Args:
        scores: (Q, T) query-target scores.
        positives: (Q, T) bool, True where the target is correct for the query.

    Returns:
        (Q,) ranks in 1..T; T + 1 for a query without a positive.
    """
    scores = scores.float()
    best = scores.masked_fill(~positives, float("-inf")).amax(dim=1, keepdim=True)
    above = (scores > best).sum(dim=1) + ((scores == best) & ~positives).sum(dim=1)
    missing = torch.full_like(above, scores.shape[1] + 1)
    return torch.where(positives.any(dim=1), above + 1, missing)


def recall_metrics(ranks: Tensor, ks: Sequence[int] = RECALL_AT) -> dict[str, float]:
    """``{"r<k>" for k in ks, "medr", "meanr"}`` of 1-based ranks (Q,).

    R@K is the fraction of queries ranked at most K; ``medr`` the lower median rank, ``meanr``
    the mean rank.
    """
    if ranks.numel() == 0:
        raise ValueError("no queries to compute retrieval metrics over")
    ranks = ranks.double()
    metrics = {f"r{k}": float((ranks <= k).double().mean()) for k in ks}
    metrics["medr"] = float(ranks.median())
    metrics["meanr"] = float(ranks.mean())
    return metrics


def retrieval_metrics(
    scores: Tensor, positives: Tensor, ks: Sequence[int] = RECALL_AT
) -> dict[str, float]:
    """Recall at K, median and mean rank of a scored query set.

    Args:
        scores: (Q, T) query-target scores.
        positives: (Q, T) bool; several positives per query count as one hit at K when any of
            them is in the top K (visual-to-text with several captions per item).
        ks: the K of each R@K.

    Returns:
        ``{"r1", "r5", "r10", "medr", "meanr"}`` (for the default ``ks``); R@K in 0..1, ranks
        from 1, ties broken pessimistically.
    """
    if scores.shape != positives.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and positives {tuple(positives.shape)}")
    return recall_metrics(best_positive_ranks(scores, positives.bool()), ks)


def summarize(
    forward: dict[str, float], backward: dict[str, float], ks: Sequence[int] = RECALL_AT
) -> tuple[float, float, float]:
    """``(rmean forward, rmean backward, rsum)``: each direction's mean R@K and the sum of
    both directions' R@K (the papers' RSUM / 100, as R@K are fractions here)."""
    first = [forward[f"r{k}"] for k in ks]
    second = [backward[f"r{k}"] for k in ks]
    return sum(first) / len(ks), sum(second) / len(ks), sum(first) + sum(second)


@dataclass(frozen=True)
class Matches:
    """Which targets are positives of which queries, computed per chunk of queries.

    A row (query or target) belongs to one item and carries a set of caption ids. A target is
    a positive of a query when both belong to the same item or, when ``*_texts`` are given,
    they share a caption (duplicate captions count as matches: the ``match_by: text`` rule).

    Attributes:
        query_items: (Q,) long item index of each query.
        target_items: (T,) long item index of each target.
        query_texts: (Q, Cq) long caption ids, -1 padded; ``None``: match by item only.
        target_texts: (T, Ct) long caption ids, -1 padded; ``None`` with ``query_texts``.
    """

    query_items: Tensor
    target_items: Tensor
    query_texts: Tensor | None = None
    target_texts: Tensor | None = None

    def rows(self, start: int, stop: int) -> Tensor:
        """(stop - start, T) bool positives of queries ``start..stop``."""
        positives = self.query_items[start:stop, None] == self.target_items[None, :]
        if self.query_texts is None or self.target_texts is None:
            return positives
        for column in self.query_texts[start:stop].T:  # (q,) one caption id per query
            shared = (column[:, None, None] == self.target_texts[None, :, :]).any(dim=2)
            positives |= shared & (column[:, None] >= 0)
        return positives

    def transposed(self) -> Matches:
        """The same relation with queries and targets swapped."""
        return Matches(self.target_items, self.query_items, self.target_texts, self.query_texts)

    def __len__(self) -> int:
        return len(self.query_items)


def chunked_ranks(scores: ScoreRows, positives: ScoreRows, rows: range, chunk_size: int) -> Tensor:
    """`best_positive_ranks` of the queries ``rows``, ``chunk_size`` at a time, (len(rows),).

    Peak memory is a few (chunk_size, T) tensors whatever the number of queries.

    Args:
        scores: ``scores(start, stop)`` -> (stop - start, T) scores of those queries.
        positives: ``positives(start, stop)`` -> (stop - start, T) bool.
        rows: the queries (a contiguous range, e.g. one process's shard).
        chunk_size: queries scored at once.
    """
    ranks = []
    for start in range(rows.start, rows.stop, chunk_size):
        stop = min(start + chunk_size, rows.stop)
        chunk = scores(start, stop)
        ranks.append(best_positive_ranks(chunk, positives(start, stop).to(chunk.device)).cpu())
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


def column_logsumexp(
    scores: ScoreRows, rows: range, chunk_size: int, temperature: float
) -> Tensor | None:
    """(T,) ``logsumexp`` over the queries ``rows`` of ``scores / temperature`` per target,
    accumulated a chunk at a time (the normaliser of `dual_softmax`); ``None`` for no rows.
    Normalisers of disjoint row ranges combine with ``torch.logaddexp``."""
    result: Tensor | None = None
    for start in range(rows.start, rows.stop, chunk_size):
        stop = min(start + chunk_size, rows.stop)
        part = (scores(start, stop).float() / temperature).logsumexp(dim=0)
        result = part if result is None else torch.logaddexp(result, part)
    return result


def dual_softmax(scores: Tensor, column_lse: Tensor, temperature: float) -> Tensor:
    """Dual-softmax (DSL) re-scoring at inference (CAMoE, Cheng et al. 2021).

    Each score is multiplied by the softmax over *queries* of ``scores / temperature`` for its
    target, a prior that lowers targets which many queries score highly. The constant factor
    Q of the original formula is left out (it changes no rank).

    Args:
        scores: (q, T) scores of a chunk of queries.
        column_lse: (T,) `column_logsumexp` over all queries.
        temperature: softmax temperature (0.01 for cosine similarities, CLIP's logit scale).

    Returns:
        (q, T) re-scored.
    """
    scores = scores.float()
    return scores * torch.exp(scores / temperature - column_lse.to(scores.device)[None, :])


def dual_softmax_rows(
    scores: ScoreRows, total: int, chunk_size: int, temperature: float
) -> ScoreRows:
    """``scores`` of ``total`` queries wrapped with `dual_softmax` (in one process: one extra
    pass over the queries computes the normaliser)."""
    lse = column_logsumexp(scores, range(total), chunk_size, temperature)
    if lse is None:
        raise ValueError("no queries to re-score")
    return lambda start, stop: dual_softmax(scores(start, stop), lse, temperature)
