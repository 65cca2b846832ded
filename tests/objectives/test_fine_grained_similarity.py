"""Tests of VALOR's fine-grained (MGA) similarity against a loop transcription of SPEC B7."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.testing import assert_close

from modaloom.objectives.fine_grained_similarity import (
    Scoring,
    fine_grained_similarity,
    global_features,
    group_similarity,
    join,
    masked_softmax,
)


def fine_grained_similarity_reference(
    text: Tensor,
    text_mask: Tensor,
    text_logits: Tensor,
    other: Tensor,
    other_mask: Tensor,
    other_logits: Tensor,
) -> Tensor:
    """s = 1/2 sum_i w_t[i] max_j t_i.x_j + 1/2 sum_j w_x[j] max_i x_j.t_i, over valid i, j."""

    def weights(logits: list[float], mask: list[int]) -> list[float]:
        exps = [math.exp(z) if m else 0.0 for z, m in zip(logits, mask)]
        return [e / sum(exps) for e in exps]

    text, other = text.detach(), other.detach()
    out = torch.zeros(text.shape[0], other.shape[0], dtype=torch.float64)
    for b in range(text.shape[0]):
        tokens = [i for i in range(text.shape[1]) if text_mask[b, i]]
        w_t = weights(text_logits[b].tolist(), text_mask[b].tolist())
        for d in range(other.shape[0]):
            frames = [j for j in range(other.shape[1]) if other_mask[d, j]]
            w_x = weights(other_logits[d].tolist(), other_mask[d].tolist())
            dot = {(i, j): float(text[b, i] @ other[d, j]) for i in tokens for j in frames}
            s_t = sum(w_t[i] * max(dot[i, j] for j in frames) for i in tokens)
            s_x = sum(w_x[j] * max(dot[i, j] for i in tokens) for j in frames)
            out[b, d] = (s_t + s_x) / 2
    return out


def _inputs(bt: int = 5, bx: int = 4, nt: int = 6, nx: int = 3, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(bt, nt, 8, generator=g, dtype=torch.float64), dim=-1)
    other = F.normalize(torch.randn(bx, nx, 8, generator=g, dtype=torch.float64), dim=-1)
    text_mask = torch.arange(nt)[None] < torch.randint(1, nt + 1, (bt,), generator=g)[:, None]
    other_mask = torch.rand(bx, nx, generator=g) < 0.7
    other_mask[:, 0] = True  # every sample keeps at least one frame
    t_logits = torch.randn(bt, nt, generator=g, dtype=torch.float64)
    x_logits = torch.randn(bx, nx, generator=g, dtype=torch.float64)
    return [text, text_mask.long(), t_logits, other, other_mask.long(), x_logits]


@pytest.mark.parametrize("with_grad", [False, True])
def test_matches_reference_with_padding(with_grad: bool) -> None:
    args = _inputs()
    assert not bool(args[1].all()) and not bool(args[4].all())  # padding is exercised
    args[0].requires_grad_(with_grad)  # the grad path reduces with max, the other with amax
    assert_close(fine_grained_similarity(*args), fine_grained_similarity_reference(*args))


def test_matches_reference_without_padding() -> None:
    args = _inputs(seed=7)
    args[1], args[4] = torch.ones_like(args[1]), torch.ones_like(args[4])
    assert_close(
        fine_grained_similarity(*args, chunk_size=2), fine_grained_similarity_reference(*args)
    )


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 100])
def test_chunked_equals_unchunked(chunk_size: int) -> None:
    args = _inputs(bt=7, bx=5, seed=1)
    assert_close(
        fine_grained_similarity(*args, chunk_size=chunk_size), fine_grained_similarity(*args)
    )


def test_chunked_gradients_equal_unchunked() -> None:
    grads = []
    for chunk_size in (None, 2):
        args = _inputs(bt=4, bx=3, seed=2)
        leaves = [args[0], args[2], args[3], args[5]]
        for leaf in leaves:
            leaf.requires_grad_()
        (fine_grained_similarity(*args, chunk_size=chunk_size) ** 2).sum().backward()
        grads.append([leaf.grad for leaf in leaves])
    for unchunked, chunked in zip(*grads):
        assert unchunked is not None and unchunked.abs().sum() > 0
        assert_close(chunked, unchunked)


def test_padded_values_do_not_change_the_output() -> None:
    args = _inputs(seed=3)
    text, text_mask, t_logits, other, other_mask, x_logits = args
    before = fine_grained_similarity(*args, chunk_size=2)
    pad_t, pad_x = ~text_mask.bool(), ~other_mask.bool()
    text = torch.where(pad_t[..., None], 100.0, text)
    other = torch.where(pad_x[..., None], -100.0, other)
    t_logits = torch.where(pad_t, 50.0, t_logits)
    x_logits = torch.where(pad_x, 50.0, x_logits)
    after = fine_grained_similarity(text, text_mask, t_logits, other, other_mask, x_logits, 2)
    assert_close(after, before)


def test_single_frame_and_batch_of_one() -> None:
    args = _inputs(bt=1, bx=1, nt=4, nx=1, seed=4)
    assert fine_grained_similarity(*args).shape == (1, 1)
    assert_close(fine_grained_similarity(*args), fine_grained_similarity_reference(*args))


def test_empty_gallery_and_bad_chunk() -> None:
    text, text_mask, t_logits, other, other_mask, x_logits = _inputs()
    empty = fine_grained_similarity(
        text, text_mask, t_logits, other[:0], other_mask[:0], x_logits[:0]
    )
    assert empty.shape == (5, 0)
    with pytest.raises(ValueError, match="chunk_size must be positive or None, got 0"):
        fine_grained_similarity(text, text_mask, t_logits, other, other_mask, x_logits, 0)


def test_masked_softmax_zeroes_padding_and_empty_rows() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 0, 1], [0, 0, 0]])
    out = masked_softmax(logits, mask)
    e1, e3 = math.exp(1.0), math.exp(3.0)
    assert_close(out, torch.tensor([[e1 / (e1 + e3), 0.0, e3 / (e1 + e3)], [0.0, 0.0, 0.0]]))


def test_gradcheck_chunked() -> None:
    text, text_mask, t_logits, other, other_mask, x_logits = _inputs(bt=3, bx=2, nt=3, nx=2, seed=5)

    def score(t: Tensor, tl: Tensor, o: Tensor, ol: Tensor) -> Tensor:
        return fine_grained_similarity(t, text_mask, tl, o, other_mask, ol, chunk_size=2)

    leaves = [x.requires_grad_() for x in (text, t_logits, other, x_logits)]
    assert torch.autograd.gradcheck(score, leaves, fast_mode=True)


def test_sample_without_valid_tokens_scores_zero_with_finite_gradients() -> None:
    text, text_mask, t_logits, other, other_mask, x_logits = _inputs(seed=6)
    text_mask[0] = 0
    text.requires_grad_()
    scores = fine_grained_similarity(text, text_mask, t_logits, other, other_mask, x_logits)
    assert torch.equal(scores[0], torch.zeros(4, dtype=torch.float64))
    scores.sum().backward()
    assert text.grad is not None and torch.isfinite(text.grad).all()
    assert torch.equal(text.grad[~text_mask.bool()], torch.zeros_like(text.grad[~text_mask.bool()]))


def _side(batch: int, length: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    features = F.normalize(torch.randn(batch, length, 4, generator=g), dim=-1)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, -1] = False
    return features, mask, torch.randn(batch, length, generator=g)


def test_group_similarity_variants() -> None:
    """VALOR Tab. 10: feature vs score fusion, fine vs coarse, learned vs mean weights."""
    text, vision, audio = _side(3, 5, 0), _side(2, 3, 1), _side(2, 2, 2)
    joined = join([vision, audio])
    default = group_similarity(text, [vision, audio])  # the paper's: one joined sequence
    assert torch.equal(default, fine_grained_similarity(*text, *joined))
    score = group_similarity(text, [vision, audio], Scoring(fusion="score"))
    expected = fine_grained_similarity(*text, *vision) + fine_grained_similarity(*text, *audio)
    assert_close(score, expected / 2)
    mean = group_similarity(text, [joined], Scoring(weighting="mean"))
    uniform = fine_grained_similarity(
        text[0], text[1], torch.zeros(3, 5), joined[0], joined[1], torch.zeros(2, 5)
    )
    assert_close(mean, uniform)
    coarse = group_similarity(text, [joined], Scoring(granularity="coarse"))
    g_t = F.normalize((masked_softmax(text[2], text[1])[..., None] * text[0]).sum(1), dim=-1)
    g_x = F.normalize((masked_softmax(joined[2], joined[1])[..., None] * joined[0]).sum(1), dim=-1)
    assert_close(coarse, g_t @ g_x.T)
    assert_close(global_features(text), g_t)
