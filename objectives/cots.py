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
from modaloom.objectives.functional import (
    amf_keep_mask,
    queue_logits,
    task_alignment_kl,
    zero_loss_like,
)
from modaloom.objectives.queue_contrastive import (
    SHARED_QUEUE,
    MomentumContrast,
    MomentumQueueSpec,
)

__all__ = ["AMF_KEEP_KEY", "COTSContrast", "COTSContrastSpec"]

AMF_KEEP_KEY = "amf_keep"
"""``features.shared`` key of the (B,) bool AMF keep-mask (present pairs that passed)."""


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
    registry.add(
        "objective",
        "cots_contrastive",
        make_cots_contrast,
        COTSContrastSpec,
        description="COTS momentum contrast with task-level KL and adaptive momentum filter",
    )
