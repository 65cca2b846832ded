"""Retrieval metrics against ranks computed by hand; chunking does not change them."""

from __future__ import annotations

import torch
from torch import Tensor

from modaloom.core.interfaces import Objective
from modaloom.plugins.evaluators.retrieval import best_correct_ranks, group_ids, rank_metrics


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


class FakeITM:
    """Matches text i with visual j when the visual token equals the text's first id."""

    class config:
        decoder = "align"

    def match_logits(self, decoder, input_ids, attention_mask, visual, visual_mask):  # type: ignore[no-untyped-def]
        match = (visual[:, 0, 0] == input_ids[:, 0].float()).float() * 20 - 10
        return torch.stack([-match, match], dim=1)


class RecordingITM(FakeITM):
    """Records the (text ids, visual tokens) of every call, as sample indices."""

    def __init__(self) -> None:
        self.calls: list[tuple[Tensor, Tensor]] = []

    def match_logits(self, decoder, input_ids, attention_mask, visual, visual_mask):  # type: ignore[no-untyped-def]
        self.calls.append((input_ids[:, 0].clone(), visual[:, 0, 0].long()))
        return super().match_logits(decoder, input_ids, attention_mask, visual, visual_mask)


def test_itm_rerank_moves_the_matching_target_up() -> None:
    from types import SimpleNamespace

    from modaloom.plugins.evaluators.retrieval import reranked_ranks

    scores = torch.tensor([[0.1, 0.3, 0.2], [0.5, 0.4, 0.0], [0.9, 0.8, 0.1]])
    query, target = {"embedding": scores}, {"embedding": torch.eye(3)}
    pairs = {
        "input_ids": torch.tensor([[0], [1], [2]]),
        "attention_mask": torch.ones(3, 1, dtype=torch.long),
        "visual": torch.arange(3).float().view(3, 1, 1),
        "visual_mask": torch.ones(3, 1, dtype=torch.long),
    }
    ctx = SimpleNamespace(
        model=SimpleNamespace(components={"align": None}), device=torch.device("cpu")
    )
    groups = torch.arange(3)
    first = best_correct_ranks(DotObjective(), query, target, groups, groups, chunk_size=3)
    assert first.tolist() == [2, 1, 2]
    gallery = (query, target, pairs, groups)
    ranks = reranked_ranks(FakeITM(), ctx, DotObjective(), *gallery, k=2, rows=range(3))
    assert ranks.tolist() == [2, 0, 2]  # query 0's match is not in its top 2: rank kept
    ranks = reranked_ranks(FakeITM(), ctx, DotObjective(), *gallery, k=3, rows=range(3))
    assert ranks.tolist() == [0, 0, 0]
    shards = [
        reranked_ranks(FakeITM(), ctx, DotObjective(), *gallery, k=3, rows=r)
        for r in (range(0, 1), range(1, 3))
    ]
    assert torch.cat(shards).tolist() == [0, 0, 0]
    # visual queries against texts: the query's visual tokens meet each candidate text
    recorder = RecordingITM()
    ranks = reranked_ranks(recorder, ctx, DotObjective(), *gallery, 2, range(3), False)
    assert ranks.tolist() == [2, 0, 2]
    ((texts, visuals),) = recorder.calls  # only query 1 has its match in its top 2
    assert visuals.tolist() == [1, 1] and sorted(texts.tolist()) == [0, 1]
    ranks = reranked_ranks(FakeITM(), ctx, DotObjective(), *gallery, 3, range(3), False)
    assert ranks.tolist() == [0, 0, 0]
