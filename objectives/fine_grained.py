"""MGA: VALOR's fine-grained weighted token-frame contrast over modality groups (SPEC §B7).

Per group ``(L, X)`` with L one component and X one component or several (T-AV), in any order
(VALOR's Tab. 8 also aligns V-A, A-TV, V-TA: the text need not come first, nor be there):

* a text component (one whose encoder reads ``text``) gives tokens: its token sequence,
  linearly projected to the common width C and L2-normalised; padded tokens are masked
  (``EncoderOutput.mask``), e.g. ``e_t`` (B, N_t, C);
* any other component gives one vector per frame or clip (see `frame_features`), projected by
  that modality's linear layer and L2-normalised, e.g. ``e_v`` (B, N_v, C); for several
  components the per-modality features are concatenated along N (``e_av = [e_v; e_a]``).
* weight logits: one linear layer C -> 1 per modality applied to its ``e``; for several
  components the logits are concatenated and share one softmax [I, as SPEC B7 suggests].
* ``s(L, X)`` by `fine_grained_similarity` (``chunk_size`` bounds its memory), then the
  symmetric InfoNCE of SPEC B1 over the B x B scores with a learnable temperature (init 0.07,
  clamped like ITC's; VALOR gives none [I]).

Ablation variants (VALOR's Tab. 10, `group_similarity`), the paper's choice by default:
``granularity: coarse`` scores one global vector per side (the weighted average of its
features), ``fusion: score`` scores a side of several modalities one modality at a time and
averages the scores, ``weighting: mean`` replaces the learned token/frame weights by uniform
ones. Retrieval scoring (`retrieval_scores`) follows the same options.

Samples lacking a modality of the group leave it; a group with fewer than two samples is
skipped; ``mga_loss`` is the mean over the groups computed (each is also logged). With
``gather: true`` (the default) the negatives are every rank's batch, as SPEC B1 asks of
contrastive losses: token and frame features are padded to the longest rank's and gathered with
gradient, and each rank scores its own rows against the global batch (`global_group_loss`).

**One vector per frame / clip** (`frame_features`) from a component's `EncoderOutput`, with
``T`` = the component's ``tokens_per_clip`` / ``tokens_per_frame`` attribute when it has one
(AST: ``N / tokens_per_clip`` clips), else the time axis of its input (``pixel_values`` (B, T,
3, H, W) frames, or the component's ``time_steps(T)`` when it has one: a TimeSformer with a
tubelet t gives T / t positions; ``spectrogram`` (B, T, M, L) clips; 1 otherwise):

1. ``N == T``: ``sequence`` as is (``frame_mean`` gives one feature per frame);
2. ``N % T == 0``: ``sequence`` cut into T equal chunks, each reduced by ``frame_pooling``
   (``cls``: the chunk's first token, e.g. each CLIP frame's or AST clip's [CLS]; ``mean``).
   This holds at ``T == 1`` too, so a frame's (or clip's) feature is the same whether its
   clip has one frame or several (the component's ``pooled`` output, e.g. CLIP's post-LayerNorm
   [CLS] or AST's [CLS]/distillation mean, is not used);
3. ``(N - 1) % T == 0``: a leading global token then T chunks (TimeSformer's [CLS] + frame-major
   patches): each frame is the mean of its patch tokens (no per-frame [CLS] exists).

Anything else is an error naming the shapes.
"""

from __future__ import annotations

from typing import Literal, cast

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from modaloom.core.compose import BuildContext, FeatureCache
from modaloom.core.distributed import gather_no_grad, gather_padded, rank, world_size
from modaloom.core.features import Group, default_groups, group_members, group_name, present_rows
from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import EncoderOutput, Objective
from modaloom.core.registry import Registry
from modaloom.core.spec_models import ObjectiveSpec, Reference, group_list_references
from modaloom.objectives.contrastive import ClampedTemperature
from modaloom.objectives.fine_grained_similarity import (
    Fusion,
    Granularity,
    Scoring,
    Side,
    Weighting,
    group_similarity,
    join,
)
from modaloom.objectives.losses import similarity_contrastive_loss, zero_loss_like

__all__ = ["MGA", "MGASpec", "frame_features", "similarity_contrastive_loss"]

FramePooling = Literal["cls", "mean"]


class MGASpec(ObjectiveSpec):
    """VALOR's fine-grained token-frame contrast over modality groups (SPEC §B7)."""

    type: Literal["mga"] = "mga"
    groups: list[Group] = Field(default_factory=default_groups, min_length=1)
    """Modality groups, e.g. ``[[text, vision], [text, audio], [text, [vision, audio]]]``: one
    component, then one or a list; in any order (``[vision, audio]``, ``[audio, [text,
    vision]]``)."""
    embed_dim: int = Field(256, gt=0)
    """Common width C of the projected token and frame features."""
    temperature: float = Field(0.07, gt=0.0)
    """Initial temperature."""
    learnable_temperature: bool = True
    """Learn the temperature (clamped to ``temperature_range``)."""
    temperature_range: tuple[float, float] = (0.001, 0.5)
    """Clamp range of the temperature."""
    chunk_size: int | None = Field(None, gt=0)
    """Score at most ``chunk_size`` x ``chunk_size`` pairs at a time (bounds peak memory)."""
    frame_pooling: FramePooling = "cls"
    """How a chunk of tokens becomes one frame / clip vector (rule 2 of the module docstring)."""
    gather: bool = True
    """Use every rank's batch as negatives: token and frame features are gathered with
    gradient and each rank scores its own rows against the global batch."""
    granularity: Granularity = "fine"
    """``fine``: token x frame similarity (VALOR); ``coarse``: one global vector per side."""
    fusion: Fusion = "feature"
    """A side of several modalities: one joined sequence (``feature``, VALOR) or the mean of
    per-modality scores (``score``)."""
    weighting: Weighting = "learned"
    """Token and frame weights: learned linear layers (``learned``, VALOR) or uniform
    (``mean``)."""

    def references(self) -> list[Reference]:
        """``groups`` name components."""
        return group_list_references("groups", self.groups)

    @model_validator(mode="after")
    def _check(self) -> MGASpec:
        low, high = self.temperature_range
        if not 0 < low <= self.temperature <= high:
            raise ValueError(
                f"temperature {self.temperature} must lie in "
                f"temperature_range {self.temperature_range}"
            )
        names = [group_name(g) for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"groups must be distinct, got {names}")
        return self


def _time_steps(component: nn.Module, inputs: dict[str, Tensor], tokens: int) -> int:
    for attribute in ("tokens_per_clip", "tokens_per_frame"):
        size = getattr(component, attribute, None)
        if isinstance(size, int) and size > 0 and tokens % size == 0:
            return tokens // size
    pixels, spectrogram = inputs.get("pixel_values"), inputs.get("spectrogram")
    if pixels is not None and pixels.ndim == 5:
        steps = getattr(component, "time_steps", None)  # a tubelet TimeSformer: frames / t
        return int(steps(pixels.shape[1])) if callable(steps) else int(pixels.shape[1])
    if spectrogram is not None and spectrogram.ndim == 4:
        return int(spectrogram.shape[1])
    return 1


def frame_features(
    output: EncoderOutput, component: nn.Module, inputs: dict[str, Tensor], pooling: FramePooling
) -> tuple[Tensor, Tensor]:
    """One feature per frame or clip (rules in the module docstring).

    Args:
        output: the component's output, sequence (B, N, D).
        component: the component (read for ``tokens_per_clip`` / ``tokens_per_frame``).
        inputs: the batch field it encoded (read for the time axis).
        pooling: reduction of a chunk of tokens.

    Returns:
        ``(features (B, T, D), mask (B, T) bool)``.

    Raises:
        ValueError: N tokens cannot be split into T frames.
    """
    sequence, mask = output.sequence, output.mask
    batch, tokens, dim = sequence.shape
    frames = _time_steps(component, inputs, tokens)
    valid = mask.bool() if mask is not None else sequence.new_ones(batch, tokens, dtype=torch.bool)
    if tokens == frames:
        return sequence, valid
    if tokens % frames == 0:
        chunks = sequence.unflatten(1, (frames, -1))  # (B, T, S, D)
        pooled = chunks[:, :, 0] if pooling == "cls" else chunks.mean(dim=2)
        return pooled, valid.unflatten(1, (frames, -1)).any(dim=2)
    if (tokens - 1) % frames == 0:
        chunks = sequence[:, 1:].unflatten(1, (frames, -1))
        return chunks.mean(dim=2), valid[:, 1:].unflatten(1, (frames, -1)).any(dim=2)
    raise ValueError(
        f"cannot split {tokens} tokens of dimension {dim} into {frames} frames or clips; give the "
        "component a tokens_per_frame attribute"
    )


class MGA(Objective):
    """VALOR's MGA. Returns ``{"mga_loss", "temperature"}`` plus each computed group's loss.

    Args:
        config: the spec.
        dims: D of every component used by the groups.
        text_names: the components that give tokens (text encoders); the others give one
            vector per frame or clip. Default: each group's first component.
    """

    def __init__(
        self, config: MGASpec, dims: dict[str, int], text_names: set[str] | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.proj = nn.ModuleDict({n: nn.Linear(d, config.embed_dim) for n, d in dims.items()})
        self.weight = nn.ModuleDict({n: nn.Linear(config.embed_dim, 1) for n in dims})
        low, high = config.temperature_range
        self.temperature = ClampedTemperature(
            config.temperature, low, high, config.learnable_temperature
        )
        self.text_names = text_names if text_names is not None else {g[0] for g in config.groups}
        self.scoring = Scoring(
            config.granularity, config.fusion, config.weighting, config.chunk_size
        )

    def embed(self, features: FeatureCache, name: str) -> tuple[Tensor, Tensor, Tensor]:
        """Projected, normalised features (B, N, C), their mask (B, N) and weight logits (B, N).

        Tokens for text components, one vector per frame / clip for the others.
        """
        output = features[name]
        if name in self.text_names:
            sequence = output.sequence
            mask = output.mask.bool() if output.mask is not None else None
            if mask is None:
                mask = torch.ones(sequence.shape[:2], dtype=torch.bool, device=sequence.device)
        else:
            inputs = features.batch[features.model.input_field(name, features.batch)]
            component = features.components[name]
            sequence, mask = frame_features(output, component, inputs, self.config.frame_pooling)
        embedded = F.normalize(self.proj[name](sequence), dim=-1)
        return embedded, mask, self.weight[name](embedded).squeeze(-1)

    def retrieval_side(
        self, components: tuple[str, ...], features: FeatureCache
    ) -> dict[str, Tensor] | None:
        """Token (text) or frame/clip (other side) features with masks and weight logits; the
        other side may join several components (``("vision", "audio")``) as a group does.

        Returns:
            ``{"tokens": (B, N, C), "mask": (B, N) float, "logits": (B, N), "is_text": (B,)}``
            (``is_text``: its first component is text); with ``fusion: score`` and several
            components, each one's too, as ``tokens_<i>``, ``mask_<i>``, ``logits_<i>``.
        """
        if not components or any(name not in self.proj for name in components):
            return None
        is_text = components[0] in self.text_names
        parts = [self.embed(features, name) for name in components]
        tokens, mask, logits = (torch.cat([p[i] for p in parts], dim=1) for i in range(3))
        flag = torch.full((tokens.shape[0],), float(is_text), device=tokens.device)
        side = {"tokens": tokens, "mask": mask.float(), "logits": logits, "is_text": flag}
        if self.config.fusion == "score" and len(parts) > 1:
            for index, (part_tokens, part_mask, part_logits) in enumerate(parts):
                side[f"tokens_{index}"], side[f"logits_{index}"] = part_tokens, part_logits
                side[f"mask_{index}"] = part_mask.float()
        return side

    def retrieval_scores(self, query: dict[str, Tensor], target: dict[str, Tensor]) -> Tensor:
        """MGA scores (Q, T) as training computes them, the text side first when there is one."""
        if not bool(query["is_text"][0]) and bool(target["is_text"][0]):
            return self.retrieval_scores(target, query).T
        left = (query["tokens"], query["mask"] > 0.5, query["logits"])
        return group_similarity(left, retrieval_parts(target), self.scoring)

    def group_loss(
        self,
        cache: dict[str, Side],
        group: Group,
        rows: Tensor,
        temperature: Tensor,
    ) -> Tensor:
        """The contrastive loss of one group on the selected samples (b >= 2)."""
        left = cast(Side, tuple(x[rows] for x in cache[group[0]]))
        parts = [cast(Side, tuple(x[rows] for x in cache[name])) for name in group_members(group)]
        if self.scoring.fusion == "feature":
            parts = [join(parts)]
        if self.config.gather and world_size() > 1:
            return global_group_loss(left, parts, temperature, self.scoring)
        return similarity_contrastive_loss(group_similarity(left, parts, self.scoring), temperature)

    def usable(self, rows: Tensor) -> bool:
        """Whether a group has at least two samples (over every rank when gathering; every
        rank then computes the group, so that they all join the same gathers)."""
        count = rows.new_tensor([rows.numel()])
        if self.config.gather and world_size() > 1:
            count = gather_no_grad(count).sum()
        return int(count) >= 2

    def forward(self, features: FeatureCache) -> dict[str, Tensor]:
        cache: dict[str, Side] = {}
        temperature = self.temperature()  # once: it clamps in place
        out: dict[str, Tensor] = {}
        losses = []
        for group in self.config.groups:
            names = [group[0], *group_members(group)]
            rows = present_rows(features, names)
            if not self.usable(rows):
                continue
            for name in names:
                if name not in cache:
                    cache[name] = self.embed(features, name)
            loss = self.group_loss(cache, group, rows, temperature)
            losses.append(loss)
            out[group_name(group)] = loss.detach()
        out["mga_loss"] = (
            torch.stack(losses).mean() if losses else zero_loss_like(*self.parameters())
        )
        out["temperature"] = temperature.detach()
        return out


def retrieval_parts(side: dict[str, Tensor]) -> list[Side]:
    """A `retrieval_side` output as group parts: one, or one per component (score fusion)."""
    if "tokens_0" not in side:
        return [(side["tokens"], side["mask"] > 0.5, side["logits"])]
    count = sum(1 for key in side if key.startswith("tokens_"))
    return [
        (side[f"tokens_{i}"], side[f"mask_{i}"] > 0.5, side[f"logits_{i}"]) for i in range(count)
    ]


def global_group_loss(
    text: Side, others: list[Side], temperature: Tensor, scoring: Scoring
) -> Tensor:
    """This rank's share of the symmetric InfoNCE over the global batch of every rank.

    Each rank scores its b rows against the G gathered ones in both directions and sums the
    cross-entropies scaled by ``world / G``: the ranks' mean (what DDP's gradient averaging
    optimises, `gather_with_grad` carrying the gradient back) is the loss of one process on the
    global batch. A rank with no row contributes zero but still joins the gathers.
    """
    world_text, world_others = gather_side(text), [gather_side(other) for other in others]
    local = text[0].shape[0]
    sizes = gather_no_grad(torch.tensor([local], device=text[0].device))  # (world,)
    start = int(sizes[: rank()].sum())
    targets = torch.arange(start, start + local, device=text[0].device)
    t2x = group_similarity(text, world_others, scoring) / temperature  # (b, G)
    x2t = group_similarity(world_text, others, scoring).T / temperature  # (b, G)
    total = world_text[0].shape[0]
    summed = F.cross_entropy(t2x, targets, reduction="sum") + F.cross_entropy(
        x2t, targets, reduction="sum"
    )
    gathered = [t for other in world_others for t in (other[0], other[2])]
    anchor = zero_loss_like(world_text[0], world_text[2], *gathered)
    return summed * world_size() / (2 * total) + anchor


def gather_side(side: Side) -> Side:
    """Every rank's features and weight logits (with gradient) and masks, (G, N', ...)."""
    features, mask, logits = side
    return gather_padded(features, True), gather_padded(mask), gather_padded(logits, True)


def make_mga(config: MGASpec, ctx: BuildContext) -> MGA:
    """Registry factory of ``mga``."""
    names = [name for group in config.groups for name in (group[0], *group_members(group))]
    dims = {name: ctx.output_dim(name) for name in dict.fromkeys(names)}
    text = {name for name in dims if getattr(ctx.component(name), "modality", None) == "text"}
    return MGA(config, dims, text)


@hookimpl
def modaloom_register_objectives(registry: Registry) -> None:
    """Register ``mga``."""
    registry.add_objective(
        make_mga,
        MGASpec,
        description="VALOR fine-grained weighted token-frame contrast over modality groups",
    )
