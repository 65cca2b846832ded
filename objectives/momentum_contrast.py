"""The base of the momentum-queue contrastive objectives, written once (SPEC §B2, B3, B9).

`MomentumContrast` holds what ``itc_queue``, ``univlc`` (`modaloom.objectives.queue_contrastive`)
and ``cots_contrastive`` (`modaloom.objectives.cots`) all need: two projections to a shared
embedding space, `MomentumCopy` s of both components and both projections (EMA in
`after_optimizer_step`), `FeatureQueue` s and a clamped learnable temperature, plus
`step_embeddings`, the online and momentum embeddings of a step. It registers nothing.

For ITM's hard negatives the online in-batch logits are published in
``features.shared[SIMILARITY_KEY][(a, b)]`` (see `share_similarity`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from modaloom.core.compose import BuildContext, FeatureCache, default_inputs
from modaloom.core.momentum import FeatureQueue, MomentumCopy
from modaloom.objectives.contrastive import TwoTower, TwoTowerSpec

__all__ = [
    "SHARED_QUEUE",
    "SIMILARITY_KEY",
    "MomentumContrast",
    "MomentumQueueSpec",
    "StepEmbeddings",
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


def component_fields(ctx: BuildContext, name: str) -> tuple[str, ...]:
    """The batch fields component ``name`` may read, as `build_model` resolves them."""
    spec = ctx.specs.get(name)
    if spec is not None:
        return default_inputs(ctx.registry, spec)
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
