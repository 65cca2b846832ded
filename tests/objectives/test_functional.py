"""Tests of the pure-tensor objective functions against hand values and loop transcriptions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.testing import assert_close

from modaloom.objectives import functional as OF


def _unit(*shape: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def _log_softmax_row(row: list[float]) -> list[float]:
    top = max(row)
    log_z = top + math.log(sum(math.exp(x - top) for x in row))
    return [x - log_z for x in row]


def _soft_ce_loops(logits: Tensor, positives: list[list[bool]]) -> float:
    """Mean over rows of -(1/|P(i)|) sum_{k in P(i)} log softmax(row)[k]."""
    total = 0.0
    for i, row in enumerate(logits.tolist()):
        logp = _log_softmax_row(row)
        pos = [k for k, is_pos in enumerate(positives[i]) if is_pos]
        total += -sum(logp[k] for k in pos) / len(pos)
    return total / logits.shape[0]


# --------------------------------------------------------------------------- B1 / B3 in-batch


def test_contrastive_loss_matches_loop_transcription() -> None:
    a, b = _unit(5, 8, seed=1), _unit(5, 8, seed=2)
    logits = a @ b.T / 0.1
    diag = [[i == j for j in range(5)] for i in range(5)]
    expected = (_soft_ce_loops(logits, diag) + _soft_ce_loops(logits.T, diag)) / 2
    assert_close(OF.contrastive_loss(a, b, 0.1), torch.tensor(expected, dtype=torch.float64))


def test_contrastive_loss_with_labels_normalises_same_label_targets() -> None:
    a, b = _unit(6, 4, seed=3), _unit(6, 4, seed=4)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    logits = a @ b.T / 0.5
    pos = [[bool(labels[i] == labels[j]) for j in range(6)] for i in range(6)]
    expected = (_soft_ce_loops(logits, pos) + _soft_ce_loops(logits.T, pos)) / 2
    got = OF.contrastive_loss(a, b, torch.tensor(0.5, dtype=torch.float64), labels=labels)
    assert_close(got, torch.tensor(expected, dtype=torch.float64))


def test_contrastive_loss_negative_labels_are_unique_pairs() -> None:
    a, b = _unit(4, 4, seed=5), _unit(4, 4, seed=6)
    with_none = OF.contrastive_loss(a, b, 0.2, labels=torch.tensor([-1, -1, 3, -1]))
    assert_close(with_none, OF.contrastive_loss(a, b, 0.2))


def test_contrastive_loss_batch_of_one_is_zero_and_temperature_gets_gradient() -> None:
    a, b = _unit(1, 4, seed=7), _unit(1, 4, seed=8)
    assert OF.contrastive_loss(a, b, 0.07).item() == 0.0
    tau = torch.tensor(0.07, dtype=torch.float64, requires_grad=True)
    OF.contrastive_loss(_unit(3, 4, seed=9), _unit(3, 4, seed=10), tau).backward()
    assert tau.grad is not None and tau.grad.item() != 0.0


# --------------------------------------------------------------------------- B2 / B3 queue


def test_remap_caption_labels_gives_fresh_unique_ids() -> None:
    batch, queue = OF.remap_caption_labels(torch.tensor([-1, 4, -1, 0]), torch.tensor([2, -1, 4]))
    assert batch.tolist() == [5, 4, 6, 0]
    assert queue.tolist() == [2, 7, 4]


def test_remap_caption_labels_all_captions() -> None:
    batch, queue = OF.remap_caption_labels(torch.tensor([-1, -1]), torch.tensor([-1]))
    assert batch.tolist() == [0, 1]
    assert queue.tolist() == [2]


def test_positive_targets_by_label_and_id() -> None:
    targets = OF.positive_targets(
        2,
        3,
        labels=torch.tensor([7, -1]),
        queue_labels=torch.tensor([7, -1, 7]),
        ids=torch.tensor([-1, 5]),
        queue_ids=torch.tensor([-1, -1, 5]),
    )
    expected = torch.tensor([[1, 0, 1, 0, 1], [0, 1, 0, 0, 1]], dtype=torch.float32)
    assert_close(targets, expected / expected.sum(1, keepdim=True))


def test_positive_targets_requires_both_halves() -> None:
    with pytest.raises(ValueError, match="pass both labels and queue_labels, or neither"):
        OF.positive_targets(2, 3, labels=torch.tensor([1, 2]))


def _queue_loss_loops(
    v: Tensor,
    t: Tensor,
    v_hat: Tensor,
    t_hat: Tensor,
    qv: Tensor,
    qt: Tensor,
    tau: float,
    alpha: float,
    keys: list[int],
) -> float:
    """BLIP's ITC over [batch; queue]; ``keys`` (B + K) mark positives (equal and >= 0)."""
    b = v.shape[0]
    cand_t, cand_v = torch.cat([t_hat, qt]), torch.cat([v_hat, qv])
    losses = []
    for x, x_hat, cand in ((v, v_hat, cand_t), (t, t_hat, cand_v)):
        total = 0.0
        for i in range(b):
            row = [float(x[i] @ c) / tau for c in cand]
            soft = [
                math.exp(p) for p in _log_softmax_row([float(x_hat[i] @ c) / tau for c in cand])
            ]
            pos = [k == i or (keys[k] == keys[i] and keys[i] >= 0) for k in range(len(cand))]
            hard = [float(p) / sum(pos) for p in pos]
            target = [alpha * s + (1 - alpha) * h for s, h in zip(soft, hard)]
            total -= sum(w * lp for w, lp in zip(target, _log_softmax_row(row)))
        losses.append(total / b)
    return sum(losses) / 2


@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_contrastive_loss_with_queue_matches_loops(alpha: float) -> None:
    v, t, v_hat, t_hat = (_unit(3, 4, seed=s) for s in (11, 12, 13, 14))
    qv, qt = _unit(5, 4, seed=15), _unit(5, 4, seed=16)
    got = OF.contrastive_loss_with_queue(v, t, v_hat, t_hat, qv, qt, 0.2, alpha=alpha)
    keys = [0, 1, 2] + [-1] * 5  # the diagonal only
    expected = _queue_loss_loops(v, t, v_hat, t_hat, qv, qt, 0.2, alpha, keys)
    assert_close(got, torch.tensor(expected, dtype=torch.float64))


def test_univlc_is_queue_loss_with_labels() -> None:
    v, t, v_hat, t_hat = (_unit(4, 4, seed=s) for s in (21, 22, 23, 24))
    qv, qt = _unit(3, 4, seed=25), _unit(3, 4, seed=26)
    labels, queue_labels = torch.tensor([2, -1, 2, 0]), torch.tensor([0, -1, 2])
    got = OF.contrastive_loss_with_queue(
        v, t, v_hat, t_hat, qv, qt, 0.1, alpha=0.4, labels=labels, queue_labels=queue_labels
    )
    keys = labels.tolist() + queue_labels.tolist()
    expected = _queue_loss_loops(v, t, v_hat, t_hat, qv, qt, 0.1, 0.4, keys)
    assert_close(got, torch.tensor(expected, dtype=torch.float64))


def test_queue_loss_gradient_reaches_online_features_only() -> None:
    v, t = _unit(3, 4, seed=31).requires_grad_(), _unit(3, 4, seed=32).requires_grad_()
    v_hat, t_hat = _unit(3, 4, seed=33).requires_grad_(), _unit(3, 4, seed=34).requires_grad_()
    OF.contrastive_loss_with_queue(
        v, t, v_hat, t_hat, _unit(2, 4), _unit(2, 4, seed=1), 0.1, alpha=0.4
    ).backward()
    assert v.grad is not None and t.grad is not None
    assert v_hat.grad is None and t_hat.grad is None


def test_instance_queue_loss_per_sample_matches_cots_formula() -> None:
    v, t, v_hat, t_hat = (_unit(3, 4, seed=s) for s in (41, 42, 43, 44))
    qv, qt = _unit(4, 4, seed=45), _unit(4, 4, seed=46)
    got = OF.instance_queue_loss(v, t, v_hat, t_hat, qv, qt, 0.05)
    expected = []
    for i in range(3):
        per = 0.0
        for x, pos, queue in ((v[i], t_hat[i], qt), (t[i], v_hat[i], qv)):
            num = math.exp(float(x @ pos) / 0.05)
            den = num + sum(math.exp(float(x @ q) / 0.05) for q in queue)
            per += -math.log(num / den)
        expected.append(per)
    assert_close(got, torch.tensor(expected, dtype=torch.float64))


def test_task_alignment_kl_matches_explicit_sum() -> None:
    g = torch.Generator().manual_seed(0)
    p_logits, q_logits = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    expected = 0.0
    for pl, ql in zip(p_logits.tolist(), q_logits.tolist()):
        lp, lq = _log_softmax_row(pl), _log_softmax_row(ql)
        expected += sum(math.exp(a) * (a - b) + math.exp(b) * (b - a) for a, b in zip(lp, lq))
    assert_close(OF.task_alignment_kl(p_logits, q_logits), torch.tensor(expected / 3))
    assert OF.task_alignment_kl(p_logits, p_logits).item() == pytest.approx(0.0, abs=1e-6)


def test_task_alignment_kl_uses_queue_logits_and_flows_both_ways() -> None:
    v, t = _unit(2, 4, seed=51).requires_grad_(), _unit(2, 4, seed=52).requires_grad_()
    qv, qt = _unit(6, 4, seed=53), _unit(6, 4, seed=54)
    i2t = OF.queue_logits(v, _unit(2, 4, seed=55), qt, 0.05)
    t2i = OF.queue_logits(t, _unit(2, 4, seed=56), qv, 0.05)
    assert i2t.shape == (2, 7)
    OF.task_alignment_kl(i2t, t2i).backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
    assert t.grad is not None and t.grad.abs().sum() > 0


# --------------------------------------------------------------------------- B10 AMF


def test_amf_keep_mask_threshold_is_mean_minus_two_std() -> None:
    queue_sim = torch.tensor([0.2, 0.4, 0.6, 0.8])  # mean 0.5, population std sqrt(0.05)
    threshold = 0.5 - 2 * math.sqrt(0.05)  # about 0.0528
    pairs = torch.tensor([threshold - 0.01, threshold + 0.01, 0.9])
    assert OF.amf_keep_mask(pairs, queue_sim).tolist() == [False, True, True]
    assert OF.amf_keep_mask(pairs, queue_sim[:1]).tolist() == [True, True, True]


def test_amf_empty_batch_gives_zero_loss_with_graph() -> None:
    v, t = _unit(3, 4, seed=61).requires_grad_(), _unit(3, 4, seed=62).requires_grad_()
    qv, qt = _unit(4, 4, seed=63), _unit(4, 4, seed=64)
    per_sample = OF.instance_queue_loss(v, t, _unit(3, 4), _unit(3, 4, seed=1), qv, qt, 0.05)
    keep = torch.zeros(3, dtype=torch.bool)
    inst = OF.masked_mean(per_sample, keep)
    kl = OF.task_alignment_kl(
        OF.queue_logits(v, _unit(3, 4), qt, 0.05)[keep],
        OF.queue_logits(t, _unit(3, 4), qv, 0.05)[keep],
    )
    total = inst + kl
    assert total.item() == 0.0 and total.requires_grad
    total.backward()
    assert v.grad is not None and torch.equal(v.grad, torch.zeros_like(v))


def test_masked_mean_averages_kept_samples() -> None:
    values = torch.tensor([1.0, 2.0, 6.0, float("inf")])
    assert OF.masked_mean(values, torch.tensor([True, False, True, False])).item() == 3.5


def test_zero_loss_like_is_finite_for_nonfinite_inputs() -> None:
    x = torch.tensor([1.0, float("inf")], requires_grad=True)
    zero = OF.zero_loss_like(x, torch.ones(2, requires_grad=True))
    assert zero.item() == 0.0
    zero.backward()
    assert x.grad is not None and torch.equal(x.grad, torch.zeros(2))
    with pytest.raises(ValueError, match="zero_loss_like needs at least one tensor"):
        OF.zero_loss_like()


# --------------------------------------------------------------------------- B4 ITM negatives


def test_itm_hard_negatives_never_pick_positives() -> None:
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(6, 6, generator=g)
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    positive = labels[:, None] == labels[None, :]
    for _ in range(20):
        neg_v, neg_t = OF.itm_hard_negatives(sim, sim.T, positive, generator=g)
        for i in range(6):
            assert labels[neg_v[i]] != labels[i] and labels[neg_t[i]] != labels[i]


def test_itm_hard_negatives_follow_softmax_plus_epsilon() -> None:
    sim = torch.tensor([[5.0, 3.0, 1.0, 0.0]]).repeat(4000, 1)
    positive = torch.zeros(4000, 4, dtype=torch.bool)
    positive[:, 0] = True
    neg_v, _ = OF.itm_hard_negatives(sim, sim, positive, generator=torch.Generator().manual_seed(1))
    weights = torch.softmax(sim[0], 0) + 1e-4
    expected = weights[1:] / weights[1:].sum()
    freq = torch.bincount(neg_v, minlength=4)[1:].float() / 4000
    assert_close(freq, expected, atol=0.03, rtol=0)


def test_itm_hard_negatives_all_same_label_and_batch_of_one() -> None:
    positive = torch.ones(3, 3, dtype=torch.bool)
    neg_v, neg_t = OF.itm_hard_negatives(torch.randn(3, 3), torch.randn(3, 3), positive)
    assert neg_v.tolist() == [-1, -1, -1] and neg_t.tolist() == [-1, -1, -1]
    one = OF.itm_hard_negatives(torch.randn(1, 1), torch.randn(1, 1), torch.ones(1, 1).bool())
    assert [x.tolist() for x in one] == [[-1], [-1]]


def test_itm_hard_negatives_uniform_fallback_for_unusable_weights() -> None:
    sim = torch.full((3000, 3), float("nan"))
    positive = torch.tensor([[True, False, False]]).repeat(3000, 1)
    neg_v, _ = OF.itm_hard_negatives(sim, sim, positive, generator=torch.Generator().manual_seed(2))
    counts = torch.bincount(neg_v, minlength=3)
    assert counts[0] == 0
    assert abs(counts[1].item() - 1500) < 150


def test_itm_hard_negatives_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="must share one"):
        OF.itm_hard_negatives(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 2).bool())


# --------------------------------------------------------------------------- B5 / B6 LM


def test_label_smoothed_lm_loss_matches_manual_and_ignores_minus_100() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([[1, -100, 4], [0, 2, -100]])
    eps = 0.1
    total, count = 0.0, 0
    for b in range(2):
        for t in range(3):
            if labels[b, t] == -100:
                continue
            logp = _log_softmax_row(logits[b, t].tolist())
            total += -(1 - eps) * logp[int(labels[b, t])] - eps * sum(logp) / 5
            count += 1
    got = OF.label_smoothed_lm_loss(logits, labels, smoothing=eps)
    assert_close(got, torch.tensor(total / count, dtype=torch.float64))


def test_label_smoothed_lm_loss_all_ignored_is_zero_with_graph() -> None:
    logits = torch.randn(1, 2, 4, requires_grad=True)
    loss = OF.label_smoothed_lm_loss(logits, torch.full((1, 2), -100))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None
