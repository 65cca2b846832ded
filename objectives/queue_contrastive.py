"""ITC with a momentum queue (BLIP/OmniVL, SPEC §B2) and UniVLC (OmniVL, SPEC §B3), one module.

`MomentumContrast` holds what every momentum-queue objective needs, written once: two
projections to a shared embedding space, `MomentumCopy` s of both components and both
projections (EMA in `after_optimizer_step`), `FeatureQueue` s and a clamped learnable
temperature. `QueueContrastive` adds the BLIP/OmniVL loss (`contrastive_loss_with_queue`) and is
registered twice: ``itc_queue`` (positives = the pair, plus equal ``ids`` when given) and
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
``features.shared[SIMILARITY_KEY][(a, b)]`` (see `share_similarity`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from modaloom.core.compose import BuildContext, FeatureCache, _default_inputs
from modaloom.core.hookspecs import hookimpl
from modaloom.core.momentum import FeatureQueue, MomentumCopy
from modaloom.core.registry import Registry
from modaloom.objectives.contrastive import TwoTower, TwoTowerSpec
from modaloom.objectives.functional import (
    contrastive_loss_with_queue,
    remap_caption_labels,
    zero_loss_like,
)

__all__ = [
    "SIMILARITY_KEY",
    "ITCQueueSpec",
    "MomentumContrast",
    "MomentumQueueSpec",
    "QueueContrastive",
    "UniVLCSpec",
    "component_fields",
    "share_similarity",
]

SIMILARITY_KEY = "itc_sim"
"""``features.shared`` key: ``{(a, b): (B, B) detached logits of a_i against b_j}``."""

SHARED_QUEUE = "shared"
"""Name of the single queue when queues are not kept per modality."""


class MomentumQueueSpec(TwoTowerSpec):
    """Fields shared by the momentum-queue contrastive objectives (not registered itself);
    ``a`` is the visual (or audio) component, ``b`` the text one."""

    queue_size: int = Field(57600, gt=0)
    """Rows per feature queue (OmniVL: 57,600; any size works, writes wrap around)."""
    momentum: float = Field(0.995, ge=0.0, le=1.0)
    """EMA coefficient m of the momentum copies (OmniVL 0.995, COTS 0.99)."""


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


def component_fields(ctx: BuildContext, name: str) -> tuple[str, ...]:
    """The batch fields component ``name`` may read, as `build_model` resolves them."""
    spec = ctx.specs.get(name)
    if spec is not None:
        return _default_inputs(ctx.registry, spec)
    modality = getattr(ctx.component(name), "modality", ())
    return (modality,) if isinstance(modality, str) else tuple(modality)


def share_similarity(features: FeatureCache, a: str, b: str, logits: Tensor) -> None:
    """Publish in-batch logits ``a_i . b_j / tau`` (B, B) for later objectives (ITM)."""
    features.shared.setdefault(SIMILARITY_KEY, {})[(a, b)] = logits.detach()


class StepEmbeddings(NamedTuple):
    """What `MomentumContrast.step_embeddings` returns."""

    present: Tensor
    """(B,) bool: samples carrying both modalities."""
    za: Tensor
    """(B, E) online embeddings of ``a``."""
    zb: Tensor
    """(B, E) online embeddings of ``b``."""
    za_hat: Tensor
    """(B, E) momentum embeddings of ``a`` (no gradient)."""
    zb_hat: Tensor
    """(B, E) momentum embeddings of ``b`` (no gradient)."""
    temperature: Tensor
    """The clamped temperature (0-d)."""


class MomentumContrast(TwoTower):
    """Projections, momentum copies, queues and temperature of a momentum-queue objective.

    Args:
        config: the objective's spec.
        online: the online components ``{"a": ..., "b": ...}`` (not registered here; only
            their momentum copies are).
        dim_a: D of component ``a``.
        dim_b: D of component ``b``.
        queue_keys: one `FeatureQueue` per key (batch fields of ``a``, or ``("shared",)``).
        extra_queue_dims: queues besides ``a`` and ``b`` (COTS's similarity queue ``sim``: 1).
    """

    def __init__(
        self,
        config: Any,
        online: Mapping[str, nn.Module],
        dim_a: int,
        dim_b: int,
        queue_keys: tuple[str, ...],
        extra_queue_dims: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(config, dim_a, dim_b)
        self._online: dict[str, nn.Module] = dict(online)  # a plain dict: not submodules
        self.momentum = MomentumCopy(self._momentum_targets())
        dims = {"a": config.embed_dim, "b": config.embed_dim, **(extra_queue_dims or {})}
        self.queues = nn.ModuleDict(
            {key: FeatureQueue(config.queue_size, dims) for key in queue_keys}
        )

    def _momentum_targets(self) -> dict[str, nn.Module]:
        return {**self._online, "proj_a": self.proj_a, "proj_b": self.proj_b}

    def remember(self, features: FeatureCache) -> None:
        """Keep references to this step's online components for `after_optimizer_step`."""
        self._online = {
            "a": features.components[self.config.a],
            "b": features.components[self.config.b],
        }

    def momentum_embed(self, features: FeatureCache) -> tuple[Tensor, Tensor]:
        """Momentum L2-normalised embeddings of both sides, (B, E) each, without gradient."""
        out = []
        for side in ("a", "b"):
            name = getattr(self.config, side)
            field = features.model.input_field(name, features.batch)
            pooled = self.momentum[side](features.batch[field]).pooled
            out.append(F.normalize(self.momentum[f"proj_{side}"](pooled), dim=-1))
        return out[0], out[1]

    def queue_for(self, features: FeatureCache) -> FeatureQueue:
        """The queue of this batch: the one of ``a``'s batch field, or the shared one."""
        key = SHARED_QUEUE
        if SHARED_QUEUE not in self.queues:
            key = features.model.input_field(self.config.a, features.batch)
        queue = self.queues[key]
        assert isinstance(queue, FeatureQueue)
        return queue

    def step_embeddings(self, features: FeatureCache) -> StepEmbeddings:
        """This step's online and momentum embeddings and the clamped temperature.

        Also remembers the online components for `after_optimizer_step` and publishes the
        in-batch logits for ITM (`share_similarity`): what every momentum-queue objective does
        before its own loss.
        """
        self.remember(features)
        za, zb = self.embed(features)
        temperature = self.temperature()
        share_similarity(features, self.config.a, self.config.b, za @ zb.T / temperature)
        za_hat, zb_hat = self.momentum_embed(features)
        return StepEmbeddings(self.present(features), za, zb, za_hat, zb_hat, temperature)

    def present(self, features: FeatureCache) -> Tensor:
        """(B,) bool: samples carrying both modalities."""
        return features.present(self.config.a) & features.present(self.config.b)

    def after_optimizer_step(self) -> None:
        """EMA update of the momentum components and projections."""
        self.momentum.update(self._momentum_targets(), self.config.momentum)


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


"""Tiny components of an image-text objective, for the registry-driven tests."""


@hookimpl
def modaloom_register_objectives(registry: Registry) -> None:
    """Register ``itc_queue`` and ``univlc``."""
    registry.add(
        "objective",
        "itc_queue",
        make_queue_contrastive,
        ITCQueueSpec,
        description="ITC with momentum encoders, a feature queue and momentum distillation",
    )
    registry.add(
        "objective",
        "univlc",
        make_queue_contrastive,
        UniVLCSpec,
        description="UniVLC: label-aware ITC with momentum queues (OmniVL)",
    )
