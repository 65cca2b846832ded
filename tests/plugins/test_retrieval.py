"""Retrieval metrics against ranks computed by hand; chunking does not change them."""

from __future__ import annotations

import torch
from torch import Tensor

from modaloom.core.interfaces import Objective
from modaloom.plugins.retrieval import best_correct_ranks, group_ids, rank_metrics


class DotObjective(Objective):
    def retrieval_scores(self, query: dict[str, Tensor], target: dict[str, Tensor]) -> Tensor:
        return query["embedding"] @ target["embedding"].T


def test_ranks_by_hand_with_shared_captions() -> None:
    # scores[q, t]: query 0 ranks target 2 first, its own target 0 second.
    scores = torch.tensor(
        [[0.5, 0.1, 0.9, 0.0], [0.2, 0.8, 0.1, 0.0], [0.3, 0.2, 0.1, 0.4], [0.0, 0.0, 0.0, 0.1]]
    )
    query = {"embedding": scores}
    target = {"embedding": torch.eye(4)}
    own = torch.arange(4)
    ranks = best_correct_ranks(DotObjective(), query, target, own, own, chunk_size=3)
    assert ranks.tolist() == [1, 0, 3, 0]
    shared = group_ids(["a dog", "a cat", "a dog", "a bird"])  # 0 and 2 share a caption
    ranks = best_correct_ranks(DotObjective(), query, target, shared, shared, chunk_size=1)
    assert ranks.tolist() == [0, 0, 1, 0]
    metrics = rank_metrics("retrieval.t2v", torch.tensor([1, 0, 2, 0]))
    assert metrics == {
        "retrieval.t2v.r1": 0.5,
        "retrieval.t2v.r5": 1.0,
        "retrieval.t2v.r10": 1.0,
        "retrieval.t2v.medr": 1.0,
    }


def test_chunk_size_does_not_change_ranks() -> None:
    generator = torch.Generator().manual_seed(0)
    query = {"embedding": torch.randn(50, 8, generator=generator)}
    target = {"embedding": torch.randn(50, 8, generator=generator)}
    groups = torch.arange(50) // 2
    whole = best_correct_ranks(DotObjective(), query, target, groups, groups, chunk_size=50)
    for chunk in (1, 7, 16):
        assert torch.equal(
            whole,
            best_correct_ranks(DotObjective(), query, target, groups, groups, chunk_size=chunk),
        )
