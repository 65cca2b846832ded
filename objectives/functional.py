"""Pure-tensor objective functions (SPEC section B): the stable functional API.

Every function here takes and returns tensors only; the objective modules in this package wrap
them with their heads, configs and registration. Conventions shared by all functions:

* features passed to contrastive functions are L2-normalised rows, (B, D);
* ``temperature`` is a float or a 0-dim tensor (a learnable temperature gets its gradient);
* a **negative label or id means "none"**: such an entry is never a positive of any other entry
  (it stays a positive of its own pair). This is the batch convention (``labels`` is -1 for
  caption pairs) and the queue's initial value, and replaces OmniVL's ``0`` (a valid class id
  in most label sets) as the "caption pair, no class" marker of SPEC B3(d);
* per-sample losses are returned where AMF (B10) must mask them; :func:`masked_mean` averages
  over the kept samples and is a zero that keeps the graph when none is kept.

Fine-grained similarity (:mod:`modaloom.objectives.fine_grained_similarity`) and masking
(:mod:`modaloom.objectives.masking`) live in their own files and are re-exported here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from modaloom.objectives.fine_grained_similarity import fine_grained_similarity, masked_softmax
from modaloom.objectives.masking import block_mask_patches, mask_tokens_for_mlm

__all__ = [
    "amf_keep_mask",
    "block_mask_patches",
    "contrastive_loss",
    "contrastive_loss_with_queue",
    "fine_grained_similarity",
    "instance_queue_loss",
    "itm_hard_negatives",
    "label_smoothed_lm_loss",
    "mask_tokens_for_mlm",
    "masked_mean",
    "masked_softmax",
    "positive_targets",
    "queue_logits",
    "remap_caption_labels",
    "soft_cross_entropy",
    "task_alignment_kl",
    "zero_loss_like",
]


# --------------------------------------------------------------------------- contrastive (B1-B3)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy against soft targets, per row.

    Args:
        logits: (B, M).
        targets: (B, M), rows summing to one.

    Returns:
        (B,) ``-sum_j targets[i, j] * log_softmax(logits[i])[j]``.
    """
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1)


def _label_equality(rows: Tensor, cols: Tensor) -> Tensor:
    """(R, C) bool: equal labels, where a negative label equals nothing."""
    return (rows[:, None] == cols[None, :]) & (rows[:, None] >= 0)


def contrastive_loss(
    a: Tensor, b: Tensor, temperature: float | Tensor, labels: Tensor | None = None
) -> Tensor:
    """Symmetric in-batch InfoNCE (SPEC B1), optionally with label-aware positives (B3).

    Args:
        a: (B, D) L2-normalised, e.g. visual features.
        b: (B, D) L2-normalised, e.g. text features; row i of ``a`` and ``b`` are a pair.
        temperature: tau; logits are ``a @ b.T / tau``.
        labels: optional (B,) integer labels; every same-label pair is a positive and each
            row's targets are normalised to sum to one. Negative labels match only their pair.

    Returns:
        Scalar, the mean of the a->b and b->a cross-entropies (0 for B = 1).
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"a and b must both be (B, D), got {tuple(a.shape)} and {tuple(b.shape)}")
    logits = a @ b.T / temperature
    eye = torch.eye(a.shape[0], dtype=torch.bool, device=a.device)
    positives = eye if labels is None else _label_equality(labels, labels) | eye
    targets = positives.to(logits.dtype)
    targets = targets / targets.sum(dim=1, keepdim=True)
    # positives is symmetric, so the same normalised rows serve the b->a direction.
    a2b = soft_cross_entropy(logits, targets)
    b2a = soft_cross_entropy(logits.T, targets)
    return (a2b.mean() + b2a.mean()) / 2


def remap_caption_labels(labels_batch: Tensor, labels_queue: Tensor) -> tuple[Tensor, Tensor]:
    """Give every caption pair (negative label) a fresh unique label (SPEC B3(d)).

    Non-negative labels are kept. Negative ones become ``max_label + 1, max_label + 2, ...``,
    batch first, then queue, where ``max_label`` is the largest label in batch and queue (-1 if
    none), so caption pairs never collide with a class or with each other, and stale queue
    entries never collide with a new batch. Call it at every step; the queue keeps storing -1.
    The losses in this module already treat negative labels as unique, so they need no
    remapping; this is for code that needs concrete non-negative labels (OmniVL's form).

    Args:
        labels_batch: (B,) integer labels, negative = caption pair.
        labels_queue: (K,) integer labels, negative = caption pair or never written.

    Returns:
        The remapped ``(labels_batch, labels_queue)``, long.
    """
    labels = torch.cat([labels_batch, labels_queue.to(labels_batch.device)]).long()
    missing = labels < 0
    base = labels.max().clamp(min=-1) + 1 if labels.numel() else labels.new_zeros(())
    fresh = base + torch.cumsum(missing.long(), dim=0) - 1
    labels = torch.where(missing, fresh, labels)
    return labels[: labels_batch.shape[0]], labels[labels_batch.shape[0] :]


def positive_targets(
    batch_size: int,
    queue_size: int,
    *,
    labels: Tensor | None = None,
    queue_labels: Tensor | None = None,
    ids: Tensor | None = None,
    queue_ids: Tensor | None = None,
    device: torch.device | None = None,
) -> Tensor:
    """Normalised target rows over ``[batch; queue]`` candidates (SPEC B2/B3).

    Candidate ``j < B`` is batch sample ``j`` (its momentum feature), ``j >= B`` is queue row
    ``j - B``. Sample i's positives: itself, plus every candidate with the same non-negative id
    or the same non-negative label. Caption pairs therefore stay unique without remapping.

    Args:
        batch_size: B.
        queue_size: K.
        labels: (B,) labels, with ``queue_labels`` (K,); both or neither.
        queue_labels: (K,) labels stored in the queue.
        ids: (B,) sample ids (e.g. COCO image ids), with ``queue_ids`` (K,); both or neither.
        queue_ids: (K,) ids stored in the queue.
        device: where to build the targets when no labels or ids are given.

    Returns:
        (B, B + K) float targets whose rows sum to one.
    """
    eye = torch.eye(batch_size, batch_size + queue_size, dtype=torch.bool, device=device)
    positives = eye
    for name, rows, queue in (("labels", labels, queue_labels), ("ids", ids, queue_ids)):
        if (rows is None) != (queue is None):
            raise ValueError(f"pass both {name} and queue_{name}, or neither")
        if rows is not None and queue is not None:
            positives = positives.to(rows.device)
            positives = positives | _label_equality(rows, torch.cat([rows, queue.to(rows.device)]))
    targets = positives.float()
    return targets / targets.sum(dim=1, keepdim=True)


def contrastive_loss_with_queue(
    v: Tensor,
    t: Tensor,
    v_hat: Tensor,
    t_hat: Tensor,
    queue_v: Tensor,
    queue_t: Tensor,
    temperature: float | Tensor,
    *,
    alpha: float = 0.0,
    labels: Tensor | None = None,
    queue_labels: Tensor | None = None,
    ids: Tensor | None = None,
    queue_ids: Tensor | None = None,
) -> Tensor:
    """ITC with a momentum queue and momentum distillation (BLIP/OmniVL, SPEC B2); UniVLC (B3).

    Candidates for v_i are ``[t_hat; queue_t]`` (and symmetrically for t_i); the targets are
    ``alpha * softmax(momentum similarities) + (1 - alpha) * positive_targets(...)``. With
    ``labels`` this is UniVLC: positives are all batch and queue samples of the same label, each
    row normalised to sum to one (SPEC B3(a); OmniVL's code leaves the rows multi-hot).

    Args:
        v: (B, D) online visual features.
        t: (B, D) online text features.
        v_hat: (B, D) momentum visual features of the same (local) batch.
        t_hat: (B, D) momentum text features.
        queue_v: (K, D) visual queue.
        queue_t: (K, D) text queue, row-aligned with ``queue_v``.
        temperature: tau (its gradient flows through the online logits only).
        alpha: distillation weight in [0, 1]; 0 gives plain hard targets.
        labels: (B,) labels with ``queue_labels`` (K,), see :func:`positive_targets`.
        queue_labels: (K,) labels stored in the queue.
        ids: (B,) sample ids with ``queue_ids`` (K,).
        queue_ids: (K,) ids stored in the queue.

    Returns:
        Scalar, the mean of the v->t and t->v soft cross-entropies.
    """
    cand_t = torch.cat([t_hat, queue_t]).detach()
    cand_v = torch.cat([v_hat, queue_v]).detach()
    v2t = v @ cand_t.T / temperature
    t2v = t @ cand_v.T / temperature
    targets = positive_targets(
        v.shape[0],
        queue_v.shape[0],
        labels=labels,
        queue_labels=queue_labels,
        ids=ids,
        queue_ids=queue_ids,
        device=v.device,
    ).to(v2t.dtype)
    targets_v2t, targets_t2v = targets, targets
    if alpha > 0:
        with torch.no_grad():
            tau = temperature.detach() if isinstance(temperature, Tensor) else temperature
            soft_v2t = F.softmax(v_hat.detach() @ cand_t.T / tau, dim=1)
            soft_t2v = F.softmax(t_hat.detach() @ cand_v.T / tau, dim=1)
        targets_v2t = alpha * soft_v2t + (1 - alpha) * targets
        targets_t2v = alpha * soft_t2v + (1 - alpha) * targets
    loss_v2t = soft_cross_entropy(v2t, targets_v2t).mean()
    loss_t2v = soft_cross_entropy(t2v, targets_t2v).mean()
    return (loss_v2t + loss_t2v) / 2


def queue_logits(x: Tensor, positive: Tensor, queue: Tensor, temperature: float | Tensor) -> Tensor:
    """Logits of each query against its momentum positive, then the queue (SPEC B2, B9).

    Args:
        x: (B, D) online queries.
        positive: (B, D) momentum feature of each query's pair (detached here).
        queue: (K, D) negatives of the other modality (detached here).
        temperature: tau.

    Returns:
        (B, 1 + K); column 0 is the positive.
    """
    pos = (x * positive.detach()).sum(dim=1, keepdim=True)
    return torch.cat([pos, x @ queue.detach().T], dim=1) / temperature


def instance_queue_loss(
    v: Tensor,
    t: Tensor,
    v_hat: Tensor,
    t_hat: Tensor,
    queue_v: Tensor,
    queue_t: Tensor,
    temperature: float | Tensor,
) -> Tensor:
    """COTS instance-level loss (SPEC B2): momentum positive plus queue negatives, per sample.

    ``L_I2T[i] = -log softmax([v_i.t_hat_i, v_i.Q^l] / tau)[0]`` and symmetrically ``L_T2I``.

    Args:
        v: (B, D) online visual features.
        t: (B, D) online text features.
        v_hat: (B, D) momentum visual features.
        t_hat: (B, D) momentum text features.
        queue_v: (K, D) visual queue.
        queue_t: (K, D) text queue.
        temperature: tau.

    Returns:
        (B,) ``L_I2T[i] + L_T2I[i]``; COTS's L_inst is its mean over the kept (AMF) samples.
    """
    i2t = queue_logits(v, t_hat, queue_t, temperature)
    t2i = queue_logits(t, v_hat, queue_v, temperature)
    return (torch.logsumexp(i2t, dim=1) - i2t[:, 0]) + (torch.logsumexp(t2i, dim=1) - t2i[:, 0])


def task_alignment_kl(i2t_logits: Tensor, t2i_logits: Tensor) -> Tensor:
    """Symmetric KL between the I2T and T2I distributions over the queue (COTS, SPEC B9).

    Rows are independent, so filter rows (AMF) before calling. Both directions get gradient.

    Args:
        i2t_logits: (B, 1 + K) from :func:`queue_logits` for images.
        t2i_logits: (B, 1 + K) from :func:`queue_logits` for texts (same queue order).

    Returns:
        Scalar, mean over rows of ``KL(p || q) + KL(q || p)``; a zero with a graph when B = 0.
    """
    if i2t_logits.shape[0] == 0:
        return zero_loss_like(i2t_logits, t2i_logits)
    log_p = F.log_softmax(i2t_logits, dim=1)
    log_q = F.log_softmax(t2i_logits, dim=1)
    kl_pq = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
    kl_qp = F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)
    return kl_pq + kl_qp


# --------------------------------------------------------------------------- AMF (B10)


@torch.no_grad()
def amf_keep_mask(
    pair_similarity: Tensor, queue_similarity: Tensor, num_std: float = 2.0
) -> Tensor:
    """Adaptive momentum filter (COTS, SPEC B10): keep pairs above ``mu - num_std * sigma``.

    Pass only real queue rows (see ``FeatureQueue.filled_mask``); with fewer than two the
    statistics are undefined and every pair is kept. sigma is the population std.

    Args:
        pair_similarity: (B,) ``v_hat_i . t_hat_i``.
        queue_similarity: (K,) ``q^v_j . q^l_j`` over the queue.
        num_std: how many standard deviations below the mean the threshold sits.

    Returns:
        (B,) bool, True for pairs to keep.
    """
    if queue_similarity.numel() < 2:
        return torch.ones_like(pair_similarity, dtype=torch.bool)
    q = queue_similarity.float()
    threshold = q.mean() - num_std * q.std(correction=0)
    return pair_similarity.float() > threshold


def zero_loss_like(*tensors: Tensor) -> Tensor:
    """A scalar zero connected to the graph of ``tensors`` (their gradient is zero).

    Built from empty slices, so it stays exactly zero and finite even if the tensors are not.
    """
    if not tensors:
        raise ValueError("zero_loss_like needs at least one tensor")
    return torch.stack([x.reshape(-1)[:0].sum() for x in tensors]).sum()


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask`` is True; a zero that keeps the graph when none is.

    Args:
        values: (B,) per-sample losses.
        mask: (B,) bool.

    Returns:
        Scalar.
    """
    kept = torch.where(mask, values, torch.zeros_like(values))
    return kept.sum() / mask.sum().clamp(min=1)


# --------------------------------------------------------------------------- ITM negatives (B4)


@torch.no_grad()
def _sample_negatives(sim: Tensor, allowed: Tensor, generator: torch.Generator | None) -> Tensor:
    """One column per row of ``sim`` with p ∝ softmax(sim) + 1e-4 over ``allowed``; -1 if none."""
    weights = (F.softmax(sim.float(), dim=1) + 1e-4).masked_fill(~allowed, 0.0)
    broken = ~torch.isfinite(weights).all(dim=1) | (weights.sum(dim=1) <= 0)
    weights = torch.where(broken[:, None], allowed.float(), weights)  # uniform fallback
    has_negative = allowed.any(dim=1)
    weights[~has_negative] = 1.0  # placeholder so multinomial accepts the row; replaced by -1
    picked = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    return torch.where(has_negative, picked, torch.full_like(picked, -1))


def itm_hard_negatives(
    sim_t2v: Tensor,
    sim_v2t: Tensor,
    positive_mask: Tensor,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample one hard negative per text and per visual sample for ITM (SPEC B4).

    Row i draws column j with probability ∝ ``softmax(sim[i])[j] + 1e-4`` over the columns that
    are not positives of i. A row whose weights are unusable (non-finite similarities) falls
    back to uniform over its non-positives; a row with no non-positive gets -1 (drop it).

    Args:
        sim_t2v: (B, M) text i vs visual j similarities (e.g. in-batch ITC logits).
        sim_v2t: (B, M) visual i vs text j similarities.
        positive_mask: (B, M) bool, True where sample i and sample j are positives: the same
            pair (**it must include each row's own pair**, e.g. the diagonal) or the same label.
            The relation is symmetric, so it serves both directions.
        generator: random source (on the similarities' device).

    Returns:
        ``(neg_visual_idx, neg_text_idx)``, each (B,) long: the negative visual sample for each
        text and the negative text for each visual sample, -1 where none exists (e.g. B = 1).
    """
    if not sim_t2v.shape == sim_v2t.shape == positive_mask.shape:
        raise ValueError(
            "sim_t2v, sim_v2t and positive_mask must share one (B, M) shape, got "
            f"{tuple(sim_t2v.shape)}, {tuple(sim_v2t.shape)}, {tuple(positive_mask.shape)}"
        )
    allowed = ~positive_mask.bool()
    neg_visual = _sample_negatives(sim_t2v, allowed, generator)
    neg_text = _sample_negatives(sim_v2t, allowed, generator)
    return neg_visual, neg_text


# --------------------------------------------------------------------------- LM (B5, B6)


def label_smoothed_lm_loss(logits: Tensor, labels: Tensor, smoothing: float = 0.0) -> Tensor:
    """Token cross-entropy with label smoothing, ignoring -100 labels (SPEC B5, B6).

    No shift is applied: ``logits[:, t]`` must already predict ``labels[:, t]``.

    Args:
        logits: (B, L, V).
        labels: (B, L) target ids, -100 where ignored (padding, prompt, unmasked tokens).
        smoothing: label-smoothing epsilon in [0, 1).

    Returns:
        Scalar mean over the non-ignored tokens; a zero with a graph when there are none.
    """
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1)
    total = F.cross_entropy(
        flat_logits, flat_labels, ignore_index=-100, label_smoothing=smoothing, reduction="sum"
    )
    return total / (flat_labels != -100).sum().clamp(min=1)
