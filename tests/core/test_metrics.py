"""Retrieval metrics on hand-made score matrices: ties, several positives, 5 captions per item,
chunking and dual softmax."""

from __future__ import annotations

import pytest
import torch

from modaloom.core.metrics import (
    Matches,
    best_positive_ranks,
    chunked_ranks,
    column_logsumexp,
    dual_softmax,
    dual_softmax_rows,
    recall_metrics,
    retrieval_metrics,
    summarize,
)
from modaloom.evaluation import retrieval_metrics as public_retrieval_metrics


def test_ties_rank_the_positive_below_equal_negatives() -> None:
    scores = torch.tensor([[0.5, 0.5, 0.2, 0.5]])
    cases = {
        (0, 1, 0, 0): 3,  # two negatives tie with it: both above
        (1, 1, 0, 0): 2,  # a tied positive is no obstacle; the tied negative (3) is
        (1, 1, 0, 1): 1,
        (0, 0, 1, 0): 4,
        (0, 0, 0, 0): 5,  # no positive: T + 1, a miss at every K
    }
    for positives, rank in cases.items():
        mask = torch.tensor([positives], dtype=torch.bool)
        assert best_positive_ranks(scores, mask).tolist() == [rank]


def test_several_positives_count_the_best_ranked_one() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.8, 0.3], [0.4, 0.3, 0.2, 0.1]])
    positives = torch.tensor([[1, 0, 0, 1], [0, 0, 1, 1]], dtype=torch.bool)
    # query 0: best positive 0.3 (target 3), 0.9 and 0.8 above -> 3; query 1: 0.2 -> 3
    assert best_positive_ranks(scores, positives).tolist() == [3, 3]
    metrics = retrieval_metrics(scores, positives)
    assert metrics == {"r1": 0.0, "r5": 1.0, "r10": 1.0, "medr": 3.0, "meanr": 3.0}
    assert public_retrieval_metrics is retrieval_metrics


# Two items with 5 captions each: captions 0-4 describe item 0, captions 5-9 item 1.
# similarity[i, c] of item i and caption c, used in both directions.
SIMILARITY = torch.tensor(
    [
        [0.10, 0.90, 0.30, 0.20, 0.00, 0.95, 0.40, 0.70, 0.60, 0.50],
        [0.20, 0.10, 0.35, 0.25, 0.00, 0.30, 0.20, 0.80, 0.10, 0.30],
    ]
)
CAPTION_ITEM = torch.tensor([0] * 5 + [1] * 5)


def test_five_captions_per_item_in_both_directions() -> None:
    positives = CAPTION_ITEM[:, None] == torch.arange(2)[None, :]  # (10 captions, 2 items)
    t2i = retrieval_metrics(SIMILARITY.T, positives)
    # caption -> its item, pessimistic on ties: caption c is rank 1 when its item scores it
    # strictly higher than the other item does.
    # item 0's captions: 0.1<0.2 (2), 0.9>0.1 (1), 0.3<0.35 (2), 0.2<0.25 (2), 0.0=0.0 (2)
    # item 1's captions: 0.30<0.95 (2), 0.2<0.4 (2), 0.8>0.7 (1), 0.1<0.6 (2), 0.3<0.5 (2)
    ranks = [2, 1, 2, 2, 2, 2, 2, 1, 2, 2]
    assert best_positive_ranks(SIMILARITY.T, positives).tolist() == ranks
    assert t2i == {"r1": 0.2, "r5": 1.0, "r10": 1.0, "medr": 2.0, "meanr": 1.8}
    i2t = retrieval_metrics(SIMILARITY, positives.T)
    # item 0: best caption 1 (0.90), only caption 5 (0.95) above -> 2
    # item 1: best caption 7 (0.80), nothing above -> 1
    assert best_positive_ranks(SIMILARITY, positives.T).tolist() == [2, 1]
    assert i2t == {"r1": 0.5, "r5": 1.0, "r10": 1.0, "medr": 1.0, "meanr": 1.5}
    assert summarize(t2i, i2t) == pytest.approx(((0.2 + 2) / 3, (0.5 + 2) / 3, 0.2 + 2 + 0.5 + 2))


def test_recall_metrics_custom_ks_and_lower_median() -> None:
    metrics = recall_metrics(torch.tensor([1, 4, 2, 9]), ks=(2, 5))
    assert metrics == {"r2": 0.5, "r5": 0.75, "medr": 2.0, "meanr": 4.0}
    with pytest.raises(ValueError, match="no queries"):
        recall_metrics(torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"scores \(2, 3\) and positives \(3, 2\)"):
        retrieval_metrics(torch.zeros(2, 3), torch.zeros(3, 2, dtype=torch.bool))


def test_matches_by_item_and_by_shared_caption() -> None:
    # 3 captions (items 0, 0, 1) against 3 items; caption ids: "a dog"=0, "a cat"=1
    query_items = torch.tensor([0, 0, 1])
    query_texts = torch.tensor([[0], [1], [1]])
    item_texts = torch.tensor([[0, 1], [1, -1], [2, -1]])  # item 1 also says "a cat"
    by_item = Matches(query_items, torch.arange(3))
    assert by_item.rows(0, 3).int().tolist() == [[1, 0, 0], [1, 0, 0], [0, 1, 0]]
    by_text = Matches(query_items, torch.arange(3), query_texts, item_texts)
    assert by_text.rows(0, 3).int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 0]]
    assert by_text.rows(1, 2).int().tolist() == [[1, 1, 0]]
    assert torch.equal(by_text.transposed().rows(0, 3), by_text.rows(0, 3).T)
    assert len(by_text) == 3 and len(by_text.transposed()) == 3


def test_chunks_do_not_change_ranks() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(37, 11, generator=generator).round(decimals=1)  # plenty of ties
    matches = Matches(torch.arange(37) % 11, torch.arange(11))
    whole = best_positive_ranks(scores, matches.rows(0, 37))
    for chunk in (1, 5, 37, 100):
        got = chunked_ranks(lambda a, b: scores[a:b], matches.rows, range(37), chunk)
        assert torch.equal(got, whole)
    shards = [chunked_ranks(lambda a, b: scores[a:b], matches.rows, r, 4) for r in
              (range(0, 10), range(10, 37))]  # fmt: skip
    assert torch.equal(torch.cat(shards), whole)
    assert chunked_ranks(lambda a, b: scores[a:b], matches.rows, range(0), 4).numel() == 0


def test_dual_softmax_matches_the_dense_formula() -> None:
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(20, 7, generator=generator) * 0.3
    dense = scores * torch.softmax(scores / 0.05, dim=0)  # CAMoE's prior over the queries
    lse = column_logsumexp(lambda a, b: scores[a:b], range(20), 6, 0.05)
    assert lse is not None
    torch.testing.assert_close(dual_softmax(scores, lse, 0.05), dense)
    first = column_logsumexp(lambda a, b: scores[a:b], range(0, 8), 3, 0.05)
    second = column_logsumexp(lambda a, b: scores[a:b], range(8, 20), 5, 0.05)
    assert first is not None and second is not None
    torch.testing.assert_close(torch.logaddexp(first, second), lse)
    rows = dual_softmax_rows(lambda a, b: scores[a:b], 20, 6, 0.05)
    torch.testing.assert_close(rows(3, 9), dense[3:9])
    assert column_logsumexp(lambda a, b: scores[a:b], range(0), 6, 0.05) is None
