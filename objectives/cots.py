"""COTS's momentum contrast: instance loss (SPEC §B2), task-level KL (§B9) and AMF (§B10).

One objective, ``cots_contrastive``, built on `MomentumContrast` (momentum copies of both
components and projections, a `FeatureQueue` holding the paired queues ``a`` (Q^v), ``b``
(Q^l) and the similarity queue ``sim`` (Q^s, one value per row: ``q^v_j . q^l_j``), all
written by the same `enqueue`, so they stay aligned).

Per step, with ``keep`` = samples carrying both modalities:

1. **AMF** (``amf: true``): once the queue has been filled once (its ``filled`` counter reached
   ``queue_size``; before that the queue holds random vectors and mu/sigma mean nothing), keep
   only pairs whose momentum similarity ``v_hat_i . t_hat_i`` exceeds ``mean(Q^s) - amf_std *
   std(Q^s)`` (population std, over the whole, globally gathered queue). The keep-mask is
   published in ``features.shared["amf_keep"]`` for MVLM, and ``amf_kept`` (kept / present) is
   logged.
2. **Instance loss** ``inst_loss``: per-sample ``L_I2T + L_T2I`` (`instance_queue_loss`,
   computed here from the same logits as the KL term so the B x K products are formed once),
   averaged over the kept samples.
3. **Task loss** ``task_loss`` (``task_alignment: true``): `task_alignment_kl` of the kept rows'
   I2T and T2I distributions over [momentum positive; queue]. Enabled once the queue has been
   filled once (``task_after_fill``, [I] SPEC B9), a zero with a graph before.
4. The **whole batch** (every present pair, filtered or not) is enqueued, its similarities too.

An empty filtered batch gives zero losses that keep the graph. Choices left open by COTS: the
global features are the components' pooled features, linearly projected and L2-normalised [I];
the temperature is fixed at 0.05 by default (``learnable_temperature: true`` learns it).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from modaloom.core.compose import BuildContext, FeatureCache
from modaloom.core.hookspecs import hookimpl
from modaloom.core.registry import Registry
from modaloom.objectives.losses import zero_loss_like
from modaloom.objectives.momentum_contrast import (
    SHARED_QUEUE,
    MomentumContrast,
    MomentumQueueSpec,
)

__all__ = [
    "AMF_KEEP_KEY",
    "COTSContrast",
    "COTSContrastSpec",
    "amf_keep_mask",
    "instance_queue_loss",
    "queue_logits",
    "task_alignment_kl",
]

AMF_KEEP_KEY = "amf_keep"
"""``features.shared`` key of the (B,) bool AMF keep-mask (present pairs that passed)."""


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


class COTSContrastSpec(MomentumQueueSpec):
    """COTS instance-level momentum contrast with task-level KL and AMF (SPEC §B2, B9, B10)."""

    type: Literal["cots_contrastive"] = "cots_contrastive"
    temperature: float = Field(0.05, gt=0.0)
    """Temperature tau (COTS: 0.05)."""
    learnable_temperature: bool = False
    """COTS keeps tau fixed."""
    queue_size: int = Field(12800, gt=0)
    """N_q (COTS pretraining: 12,800; COCO fine-tune 6,400; Flickr 1,200)."""
    momentum: float = Field(0.99, ge=0.0, le=1.0)
    """EMA coefficient m (COTS: 0.99)."""
    task_alignment: bool = True
    """Add the task-level symmetric KL term ``task_loss`` (SPEC B9)."""
    task_after_fill: bool = True
    """Keep ``task_loss`` at zero until the queue has been filled once."""
    amf: bool = True
    """Filter noisy pairs with the adaptive momentum filter (SPEC B10)."""
    amf_std: float = Field(2.0, ge=0.0)
    """The AMF threshold is ``mean - amf_std * std`` of the similarity queue."""


class COTSContrast(MomentumContrast):
    """COTS's instance, task and AMF terms (see the module docstring).

    Returns ``{"inst_loss", ["task_loss",] "amf_kept", "temperature"}``.
    """

    config: COTSContrastSpec

    def amf_mask(
        self, pair_similarity: Tensor, present: Tensor, queue_similarity: Tensor, queue_full: bool
    ) -> Tensor:
        """(B,) bool: present pairs that pass AMF (all present ones while AMF is inactive)."""
        if not (self.config.amf and queue_full):
            return present
        return present & amf_keep_mask(pair_similarity, queue_similarity, self.config.amf_std)

    def forward(self, features: FeatureCache) -> dict[str, Tensor]:
        cfg = self.config
        present, za, zb, za_hat, zb_hat, temperature = self.step_embeddings(features)
        pair_similarity = (za_hat * zb_hat).sum(dim=1)
        queue = self.queue_for(features)
        queue_full = queue.is_full
        keep = self.amf_mask(pair_similarity, present, queue.features("sim")[:, 0], queue_full)
        features.shared[AMF_KEEP_KEY] = keep
        out: dict[str, Tensor] = {}
        if bool(keep.any()):
            queue_a, queue_b = queue.features("a"), queue.features("b")
            i2t = queue_logits(za[keep], zb_hat[keep], queue_b, temperature)
            t2i = queue_logits(zb[keep], za_hat[keep], queue_a, temperature)
            target = torch.zeros(i2t.shape[0], dtype=torch.long, device=i2t.device)
            per_sample = F.cross_entropy(i2t, target, reduction="none") + F.cross_entropy(
                t2i, target, reduction="none"
            )
            out["inst_loss"] = per_sample.mean()
            task_on = queue_full or not cfg.task_after_fill
            if cfg.task_alignment:
                out["task_loss"] = (
                    task_alignment_kl(i2t, t2i) if task_on else zero_loss_like(i2t, t2i)
                )
        else:
            out["inst_loss"] = zero_loss_like(za, zb)
            if cfg.task_alignment:
                out["task_loss"] = zero_loss_like(za, zb)
        out["amf_kept"] = keep.sum() / present.sum().clamp(min=1)
        out["temperature"] = temperature.detach()
        queue.enqueue(
            {"a": za_hat[present], "b": zb_hat[present], "sim": pair_similarity[present, None]}
        )
        return out


def make_cots_contrast(config: COTSContrastSpec, ctx: BuildContext) -> COTSContrast:
    """Registry factory of ``cots_contrastive``."""
    online = {"a": ctx.component(config.a), "b": ctx.component(config.b)}
    return COTSContrast(
        config,
        online,
        ctx.output_dim(config.a),
        ctx.output_dim(config.b),
        (SHARED_QUEUE,),
        {"sim": 1},
    )


@hookimpl
def modaloom_register_objectives(registry: Registry) -> None:
    """Register ``cots_contrastive``."""
    registry.add_objective(
        make_cots_contrast,
        COTSContrastSpec,
        description="COTS momentum contrast with task-level KL and adaptive momentum filter",
    )
