"""ITC with a momentum queue (BLIP/OmniVL, SPEC §B2) and UniVLC (OmniVL, SPEC §B3), one module.

`QueueContrastive` builds on `MomentumContrast` (`modaloom.objectives.momentum_contrast`: the
momentum copies, feature queues and clamped temperature every momentum-queue objective shares),
adds the BLIP/OmniVL loss (`contrastive_loss_with_queue`, beside it here) and is registered
twice: ``itc_queue`` (positives = the pair, plus equal ``ids`` when given) and
``univlc`` (positives = every batch and queue sample of the same class; the flag is
``use_labels``). COTS's objective (`modaloom.objectives.cots`) builds on the same base.

Choices the papers leave open:

* **Per-modality queues (UniVLC).** OmniVL's code writes separate image and video queues but
  reads the image queue for both batch types. Here ``per_modality_queues: true`` (the ``univlc``
  default) keeps one `FeatureQueue` per batch field the visual component can read (``image``,
  ``video``, ...): an image batch reads and writes the image queue, a video batch the video
  queue, so negatives always come from the same kind of input. ``itc_queue`` defaults to one
  queue, as in BLIP.
* **Caption pairs** carry label -1 in the batch and in the queue; each step they are renamed to
  fresh unique ids with `remap_caption_labels` (SPEC B3(d)), so stale queue entries can never
  collide with a new batch.
* **alpha** is constant unless ``alpha_ramp_steps`` is set: BLIP ramps it linearly from 0
  during the first epoch, which modaloom counts in optimizer steps (it has no epochs).
* **Only local momentum features are candidates** besides the queue (BLIP does the same); the
  gathered global batch is what is enqueued.
* Samples missing either modality (``present`` False) take no part and are not enqueued.

For ITM's hard negatives the online in-batch logits are published in
``features.shared[SIMILARITY_KEY][(a, b)]`` (`MomentumContrast.step_embeddings`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from modaloom.core.compose import BuildContext, FeatureCache
from modaloom.core.hookspecs import hookimpl
from modaloom.core.registry import Registry
from modaloom.objectives.losses import label_equality, soft_cross_entropy, zero_loss_like
from modaloom.objectives.momentum_contrast import (
    SHARED_QUEUE,
    MomentumContrast,
    MomentumQueueSpec,
    component_fields,
)

__all__ = [
    "ITCQueueSpec",
    "QueueContrastive",
    "UniVLCSpec",
    "contrastive_loss_with_queue",
    "make_queue_contrastive",
    "positive_targets",
    "remap_caption_labels",
]


class _DistillationFields(MomentumQueueSpec):
    alpha: float = Field(0.4, ge=0.0, le=1.0)
    """Momentum-distillation weight of the soft targets (OmniVL/BLIP: 0.4; 0 = hard targets)."""
    alpha_ramp_steps: int = Field(0, ge=0)
    """Grow alpha linearly from 0 to ``alpha`` over this many optimizer steps (BLIP ramps it
    over the first epoch: set the steps of one epoch); 0 = ``alpha`` from the start. The step
    count is a buffer, so it is checkpointed and resumes exactly."""
    ids: str | None = None
    """Batch key of (B,) long sample ids (e.g. COCO image ids, -1 = none): queue entries with
    the same id are positives instead of false negatives (fine-tuning, SPEC B2)."""


class ITCQueueSpec(_DistillationFields):
    """ITC against a momentum queue with momentum distillation (BLIP/OmniVL, SPEC §B2)."""

    type: Literal["itc_queue"] = "itc_queue"
    per_modality_queues: bool = False
    """Keep one queue per batch field of ``a`` (image / video) instead of one shared queue."""


class UniVLCSpec(_DistillationFields):
    """UniVLC: ITC with a queue whose positives are all samples of the same class (SPEC §B3)."""

    type: Literal["univlc"] = "univlc"
    labels: str = "labels"
    """Batch key of the (B,) long class labels; -1 = a caption pair (a unique class)."""
    per_modality_queues: bool = True
    """Keep one queue per batch field of ``a`` (image / video); see the module docstring."""


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
            positives = positives | label_equality(rows, torch.cat([rows, queue.to(rows.device)]))
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


class QueueContrastive(MomentumContrast):
    """BLIP/OmniVL ITC with a momentum queue (``itc_queue``), or UniVLC (``univlc``).

    Returns ``{"itc_loss", "temperature"}``. The kept momentum features (with labels and ids)
    are enqueued after the loss, every step.

    Args:
        config: an `ITCQueueSpec` or `UniVLCSpec`.
        online: ``{"a": component_a, "b": component_b}``.
        dim_a: D of ``a``.
        dim_b: D of ``b``.
        queue_keys: see `MomentumContrast`.
    """

    def __init__(
        self,
        config: ITCQueueSpec | UniVLCSpec,
        online: Mapping[str, nn.Module],
        dim_a: int,
        dim_b: int,
        queue_keys: tuple[str, ...] = (SHARED_QUEUE,),
    ) -> None:
        super().__init__(config, online, dim_a, dim_b, queue_keys)
        self.use_labels = isinstance(config, UniVLCSpec)
        if config.alpha_ramp_steps:  # only then: checkpoints without a ramp keep their keys
            self.register_buffer("optimizer_steps", torch.zeros((), dtype=torch.long))

    def alpha(self) -> float:
        """The distillation weight of this step: ``alpha``, ramped over ``alpha_ramp_steps``."""
        cfg = self.config
        if not cfg.alpha_ramp_steps:
            return cfg.alpha
        done = int(self.optimizer_steps)
        return cfg.alpha * min(1.0, done / cfg.alpha_ramp_steps)

    def after_optimizer_step(self) -> None:
        """EMA update of the momentum copies, and one more step of the alpha ramp."""
        super().after_optimizer_step()
        if self.config.alpha_ramp_steps:
            self.optimizer_steps += 1

    def _batch_long(self, features: FeatureCache, key: str | None, size: int) -> Tensor | None:
        if key is None:
            return None
        value = features.batch.get(key)
        if value is None:  # e.g. a caption-only batch without labels: every sample is unique
            return torch.full((size,), -1, dtype=torch.long)
        return torch.as_tensor(value, dtype=torch.long)

    def forward(self, features: FeatureCache) -> dict[str, Tensor]:
        cfg = self.config
        keep, za, zb, za_hat, zb_hat, temperature = self.step_embeddings(features)
        queue = self.queue_for(features)
        size = za.shape[0]
        labels = self._batch_long(features, cfg.labels if self.use_labels else None, size)
        ids = self._batch_long(features, cfg.ids, size)
        extra: dict[str, Tensor] = {}
        if labels is not None:
            labels = labels.to(za.device)
            batch_labels, queue_labels = remap_caption_labels(labels[keep], queue.queued_labels())
            extra.update(labels=batch_labels, queue_labels=queue_labels)
        if ids is not None:
            ids = ids.to(za.device)
            extra.update(ids=ids[keep], queue_ids=queue.queued_ids())
        if bool(keep.any()):
            loss = contrastive_loss_with_queue(
                za[keep],
                zb[keep],
                za_hat[keep],
                zb_hat[keep],
                queue.features("a"),
                queue.features("b"),
                temperature,
                alpha=self.alpha(),
                **extra,
            )
        else:
            loss = zero_loss_like(za, zb)
        queue.enqueue(
            {"a": za_hat[keep], "b": zb_hat[keep]},
            ids=ids[keep] if ids is not None else None,
            labels=labels[keep] if labels is not None else None,
        )
        out = {"itc_loss": loss, "temperature": temperature.detach()}
        if cfg.alpha_ramp_steps:
            out["alpha"] = temperature.new_tensor(self.alpha())
        return out


def make_queue_contrastive(
    config: ITCQueueSpec | UniVLCSpec, ctx: BuildContext
) -> QueueContrastive:
    """Registry factory of ``itc_queue`` and ``univlc``."""
    online = {"a": ctx.component(config.a), "b": ctx.component(config.b)}
    keys = component_fields(ctx, config.a) if config.per_modality_queues else ()
    return QueueContrastive(
        config,
        online,
        ctx.output_dim(config.a),
        ctx.output_dim(config.b),
        keys or (SHARED_QUEUE,),
    )


@hookimpl
def modaloom_register_objectives(registry: Registry) -> None:
    """Register ``itc_queue`` and ``univlc``."""
    registry.add_objective(
        make_queue_contrastive,
        ITCQueueSpec,
        description="ITC with momentum encoders, a feature queue and momentum distillation",
    )
    registry.add_objective(
        make_queue_contrastive,
        UniVLCSpec,
        description="UniVLC: label-aware ITC with momentum queues (OmniVL)",
    )
