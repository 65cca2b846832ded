"""ITC: in-batch image/video/audio-text contrastive loss with a learnable, clamped temperature.

`contrastive_loss` is the pure function (SPEC §B1, with label-aware positives §B3); `TwoTower`
and `ClampedTemperature` are the projections and temperature that every contrastive objective
(``itc``, ``itc_queue``, ``univlc``, ``cots_contrastive``, and MGA's temperature) builds on.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from modaloom.core.compose import BuildContext, FeatureCache
from modaloom.core.distributed import gather_no_grad, gather_with_grad
from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import Objective
from modaloom.core.registry import Registry
from modaloom.core.spec_models import ObjectiveSpec, Reference
from modaloom.objectives.losses import (
    label_equality,
    similarity_contrastive_loss,
    soft_cross_entropy,
)


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
    if labels is None:  # one positive per row: cross-entropy against the diagonal
        return similarity_contrastive_loss(a @ b.T, temperature)
    logits = a @ b.T / temperature
    eye = torch.eye(a.shape[0], dtype=torch.bool, device=a.device)
    positives = label_equality(labels, labels) | eye
    targets = positives.to(logits.dtype)
    targets = targets / targets.sum(dim=1, keepdim=True)
    # positives is symmetric, so the same normalised rows serve the b->a direction.
    a2b = soft_cross_entropy(logits, targets)
    b2a = soft_cross_entropy(logits.T, targets)
    return (a2b.mean() + b2a.mean()) / 2


class TwoTowerSpec(ObjectiveSpec):
    """Fields of every contrastive objective between two components' projected pooled features
    (not registered itself)."""

    a: str = "vision"
    """First component (its pooled feature is projected and L2-normalised)."""
    b: str = "text"
    """Second component."""
    embed_dim: int = Field(256, gt=0)
    """Width of the shared embedding space."""
    temperature: float = Field(0.07, gt=0.0)
    """Initial temperature."""
    learnable_temperature: bool = True
    """Learn the temperature (clamped to ``temperature_range`` at every step)."""
    temperature_range: tuple[float, float] = (0.001, 0.5)
    """Clamp range of a learnable temperature (BLIP/OmniVL: 0.001..0.5)."""

    def references(self) -> list[Reference]:
        """``a`` and ``b`` name components."""
        return [Reference("a", self.a), Reference("b", self.b)]

    @model_validator(mode="after")
    def _range_holds_init(self) -> TwoTowerSpec:
        low, high = self.temperature_range
        if not 0 < low <= self.temperature <= high:
            raise ValueError(
                f"temperature {self.temperature} must lie in "
                f"temperature_range {self.temperature_range}"
            )
        return self


class ITCSpec(TwoTowerSpec):
    """In-batch symmetric InfoNCE between two components' pooled features (SPEC.md §B1)."""

    type: Literal["itc"] = "itc"
    gather: bool = True
    """Use every rank's batch as negatives (gathered with gradient)."""
    use_labels: bool = False
    """Treat samples sharing ``batch["labels"]`` (>= 0) as extra positives."""


class ClampedTemperature(nn.Module):
    """A temperature parameter clamped in place to ``[low, high]`` before each use (BLIP style)."""

    def __init__(self, init: float, low: float, high: float, learnable: bool = True) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(init)), requires_grad=learnable)
        self.low, self.high = low, high

    def forward(self) -> Tensor:
        with torch.no_grad():
            self.value.clamp_(self.low, self.high)
        return self.value


class TwoTower(Objective):
    """Base of the contrastive objectives between two components: the projections, the clamped
    temperature, the online embeddings and the retrieval side they give (ITC, ITC with a queue,
    UniVLC, COTS).
    """

    def __init__(self, config: TwoTowerSpec, dim_a: int, dim_b: int) -> None:
        super().__init__()
        self.config = config
        self.proj_a = nn.Linear(dim_a, config.embed_dim)
        self.proj_b = nn.Linear(dim_b, config.embed_dim)
        low, high = config.temperature_range
        self.temperature = ClampedTemperature(
            config.temperature, low, high, config.learnable_temperature
        )

    def embed(self, features: FeatureCache) -> tuple[Tensor, Tensor]:
        """Online L2-normalised embeddings of both sides, (B, E) each."""
        za = F.normalize(self.proj_a(features[self.config.a].pooled), dim=-1)
        zb = F.normalize(self.proj_b(features[self.config.b].pooled), dim=-1)
        return za, zb

    def retrieval_side(
        self, components: tuple[str, ...], features: FeatureCache
    ) -> dict[str, Tensor] | None:
        """``{"embedding": (B, E)}`` of a single component, ``(a,)`` or ``(b,)``."""
        projections = {self.config.a: self.proj_a, self.config.b: self.proj_b}
        if len(components) != 1 or components[0] not in projections:
            return None
        pooled = features[components[0]].pooled
        return {"embedding": F.normalize(projections[components[0]](pooled), dim=-1)}


class ITC(TwoTower):
    """Projects two components' pooled features and applies `contrastive_loss`.

    Only samples carrying both fields take part; fewer than two such samples give a zero loss
    that keeps the graph.
    """

    config: ITCSpec

    def forward(self, features: FeatureCache) -> dict[str, Tensor]:
        cfg = self.config
        za, zb = self.embed(features)
        keep = features.present(cfg.a) & features.present(cfg.b)
        labels = features.batch.get("labels") if cfg.use_labels else None
        if cfg.gather:
            za, zb, keep = gather_with_grad(za), gather_with_grad(zb), gather_no_grad(keep)
            labels = gather_no_grad(labels) if labels is not None else None
        temperature = self.temperature()
        count = int(keep.sum())
        if count < 2:
            return {"itc_loss": 0.0 * (za.sum() + zb.sum()), "temperature": temperature.detach()}
        if count < keep.numel():  # boolean indexing costs ~0.1 ms a step forward and backward
            za, zb = za[keep], zb[keep]
            labels = labels[keep] if labels is not None else None
        # a negative label is a caption pair's own: a positive of itself only
        loss = contrastive_loss(za, zb, temperature, labels=labels)
        return {"itc_loss": loss, "temperature": temperature.detach()}


def make_itc(config: ITCSpec, ctx: BuildContext) -> ITC:
    """Registry factory of the ``itc`` objective."""
    return ITC(config, ctx.output_dim(config.a), ctx.output_dim(config.b))


@hookimpl
def modaloom_register_objectives(registry: Registry) -> None:
    """Register in-batch ITC."""
    registry.add_objective(
        make_itc,
        ITCSpec,
        description="in-batch contrastive loss with a learnable clamped temperature",
    )
