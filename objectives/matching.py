"""ITM with contrastive hard negatives (OmniVL/BLIP, SPEC §B4).

The alignment decoder (a ``bert_decoder`` component, e.g. ``align``) reads the text with [ENC]
in place of [CLS], bidirectional self-attention and cross-attention to the visual component's
token sequence; a linear head on the first token scores match / no match. Each step runs B
positive pairs and up to 2B negatives: for every text one visual sample drawn with probability
proportional to ``softmax(sim_t2v) + 1e-4``, and for every visual sample one text likewise, never
from the same pair, the same label (``batch["labels"] >= 0``) or the same id (`ids`). Rows with
no allowed negative (a batch of one class) get none (`itm_hard_negatives` returns -1 and they
are dropped).

Where the similarities come from (the papers use the in-batch ITC similarities):

1. ``features.shared[SIMILARITY_KEY][(vision, text)]`` (or its transpose), published by
   ``itc_queue``, ``univlc`` and ``cots_contrastive`` earlier in the same step;
2. else any other objective of the model with an ``embed(features)`` method and ``config.a`` /
   ``config.b`` naming the same two components (the in-batch ``itc``), re-run without gradient
   on the cached pooled features and divided by its temperature;
3. else uniform over the allowed negatives (logged as ``hard_negatives: 0``).

With ``negatives_from: all_ranks`` (OmniVL's ``negative_all_rank``, used for retrieval
fine-tuning) the negatives are drawn from the global batch of every process: texts, masks and
embeddings are gathered without gradient and visual tokens with it (`gather_with_grad`), so a
negative drawn from another process sends its gradient back there.

Choices the papers leave open: negatives come from the local batch by default [I]; ITM runs on
label data too (as OmniVL's code does) [I]; fewer than two usable pairs, or no negative at all,
give a zero loss that keeps the graph (training on positives alone would only bias the head).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modaloom.core.compose import BuildContext, FeatureCache
from modaloom.core.distributed import (
    gather_no_grad,
    gather_padded,
    gather_with_grad,
    rank,
    world_size,
)
from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import Decoder, Objective
from modaloom.core.registry import Registry
from modaloom.core.spec_models import ObjectiveSpec, Reference
from modaloom.objectives.conditioning import TextTokens, check_decoder, decoder_of, text_tokens
from modaloom.objectives.contrastive import ClampedTemperature
from modaloom.objectives.losses import zero_loss_like
from modaloom.objectives.momentum_contrast import SIMILARITY_KEY

__all__ = ["ITM", "ITMSpec", "itm_hard_negatives"]


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


class ITMSpec(ObjectiveSpec):
    """Image/video-text matching with hard negatives (SPEC §B4)."""

    type: Literal["itm"] = "itm"
    vision: str = "vision"
    """Visual component whose token sequence the decoder cross-attends to."""
    text: str = "text"
    """Text component (names the similarities to read; its field carries the text)."""
    decoder: str = "align"
    """The alignment decoder component (a ``bert_decoder``)."""
    labels: str | None = "labels"
    """Batch key of (B,) class labels: same-label pairs are never negatives (``null``: off)."""
    ids: str | None = None
    """Batch key of (B,) sample ids: same-id pairs are never negatives."""
    negatives_from: Literal["batch", "all_ranks"] = "batch"
    """``batch``: negatives come from this process's batch. ``all_ranks``: from the global batch
    of every process (OmniVL/BLIP retrieval fine-tuning, ``negative_all_rank``); similarities
    then come from a contrastive objective's ``embed`` (uniform without one), and visual tokens
    drawn from another process carry their gradient back to it."""

    def references(self) -> list[Reference]:
        """``vision`` and ``text`` name components, ``decoder`` a decoder component."""
        return [
            Reference("vision", self.vision),
            Reference("text", self.text),
            Reference("decoder", self.decoder, "decoder"),
        ]


class ITM(Objective):
    """ITM head and loss. Returns ``{"itm_loss", "itm_accuracy", "negatives", "hard_negatives"}``.

    Args:
        config: the spec.
        width: D of the decoder.
        tokens: special ids ([ENC]).
    """

    def __init__(self, config: ITMSpec, width: int, tokens: TextTokens) -> None:
        super().__init__()
        self.config = config
        self.head = nn.Linear(width, 2)
        self.tokens = tokens

    def positives(self, features: FeatureCache, rows: Tensor) -> Tensor:
        """(b, b) bool: same pair, same label or same id among the selected samples."""
        eye = torch.eye(rows.numel(), dtype=torch.bool, device=rows.device)
        positive = eye
        for key in (self.config.labels, self.config.ids):
            value = features.batch.get(key) if key is not None else None
            if value is not None:
                sub = torch.as_tensor(value).to(rows.device)[rows]
                positive = positive | ((sub[:, None] == sub[None, :]) & (sub[:, None] >= 0))
        return positive

    @torch.no_grad()
    def similarity(self, features: FeatureCache, rows: Tensor) -> Tensor | None:
        """(b, b) text-to-visual logits of the selected samples, or ``None`` when unavailable."""
        vision, text = self.config.vision, self.config.text
        shared = features.shared.get(SIMILARITY_KEY, {})
        if (vision, text) in shared:
            v2t: Tensor = shared[(vision, text)]
        elif (text, vision) in shared:
            v2t = shared[(text, vision)].T
        else:
            found = self._from_embedding(features)
            if found is None:
                return None
            v2t = found
        return v2t[rows][:, rows].T

    def _from_embedding(self, features: FeatureCache) -> Tensor | None:
        """(B, B) visual-to-text logits from another objective's ``embed``, if one matches."""
        found = self.embeddings(features)
        if found is None:
            return None
        visual, text, temperature = found
        return visual @ text.T / temperature

    @torch.no_grad()
    def embeddings(self, features: FeatureCache) -> tuple[Tensor, Tensor, Tensor | float] | None:
        """``(visual (B, E), text (B, E), temperature)`` from another objective's ``embed``
        naming the same two components, or ``None`` when the model has none."""
        wanted = (self.config.vision, self.config.text)
        for objective in features.model.objectives:
            config = getattr(objective, "config", None)
            pair = (getattr(config, "a", None), getattr(config, "b", None))
            if objective is self or not hasattr(objective, "embed"):
                continue
            if pair not in {wanted, wanted[::-1]}:
                continue
            embed = cast(Callable[[FeatureCache], tuple[Tensor, Tensor]], objective.embed)
            za, zb = embed(features)
            tau = getattr(objective, "temperature", None)  # read, never called: it clamps in place
            temperature = tau.value.detach() if isinstance(tau, ClampedTemperature) else 1.0
            return (za, zb, temperature) if pair == wanted else (zb, za, temperature)
        return None

    def sample_pairs(self, features: FeatureCache, rows: Tensor) -> tuple[Tensor, Tensor, bool]:
        """Indices into the selected samples of the B positive and the negative pairs.

        Returns:
            ``(text_index, visual_index, hard)``: (B + n,) each, positives first; ``hard``
            says whether contrastive similarities drove the sampling.
        """
        size = rows.numel()
        sim_t2v = self.similarity(features, rows)
        hard = sim_t2v is not None
        if sim_t2v is None:
            sim_t2v = torch.zeros(size, size, device=rows.device)
        neg_visual, neg_text = itm_hard_negatives(
            sim_t2v.float(), sim_t2v.T.float(), self.positives(features, rows)
        )
        with_visual, with_text = neg_visual >= 0, neg_text >= 0
        arange = torch.arange(size, device=rows.device)
        text_index = torch.cat([arange, arange[with_visual], neg_text[with_text]])
        visual_index = torch.cat([arange, neg_visual[with_visual], arange[with_text]])
        return text_index, visual_index, hard

    def match_logits(
        self,
        decoder: Decoder,
        input_ids: Tensor,
        attention_mask: Tensor,
        visual: Tensor,
        visual_mask: Tensor | None,
    ) -> Tensor:
        """(n, 2) no-match/match logits of n text-visual pairs: the alignment decoder runs
        bidirectionally with [ENC] first, cross-attending to the visual tokens (n, N, D)."""
        ids = input_ids.clone()
        ids[:, 0] = self.tokens.enc
        hidden = decoder.hidden_states(
            ids, attention_mask, visual, visual_mask, mode="bidirectional"
        )
        return self.head(hidden[:, 0])  # type: ignore[no-any-return]

    def local_pairs(self, features: FeatureCache, rows: Tensor) -> MatchPairs:
        """The B positive pairs and the negatives drawn from this process's batch."""
        visual = features[self.config.vision]
        if rows.numel() >= 2:
            text_index, visual_index, hard = self.sample_pairs(features, rows)
        else:  # a single pair (or none): positives only
            text_index = visual_index = torch.arange(rows.numel(), device=rows.device)
            hard = False
        text = features.batch[features.model.input_field(self.config.decoder, features.batch)]
        return MatchPairs(
            text["input_ids"][rows][text_index],
            text["attention_mask"][rows][text_index],
            visual.sequence[rows][visual_index],
            visual_mask(visual.sequence, visual.mask)[rows][visual_index],
            rows.numel(),
            hard,
            zero_loss_like(visual.sequence),
        )

    def forward(self, features: FeatureCache) -> dict[str, Tensor]:
        cfg = self.config
        visual = features[cfg.vision]
        new = visual.sequence.new_tensor
        rows = (features.present(cfg.vision) & features.present(cfg.decoder)).nonzero()[:, 0]
        if cfg.negatives_from == "all_ranks" and world_size() > 1:
            pairs = global_pairs(self, features, rows)
        else:
            pairs = self.local_pairs(features, rows)
        negatives = pairs.input_ids.shape[0] - pairs.positives
        metrics = {"negatives": new(float(negatives)), "hard_negatives": new(float(pairs.hard))}
        if negatives == 0:  # fewer than two pairs, or a batch of one class
            loss = zero_loss_like(visual.sequence, *self.head.parameters()) + pairs.anchor
            return {"itm_loss": loss, "itm_accuracy": new(0.0), **metrics}
        logits = self.match_logits(
            decoder_of(features, cfg.decoder),
            pairs.input_ids,
            pairs.attention_mask,
            pairs.visual,
            pairs.visual_mask,
        )
        targets = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        targets[: pairs.positives] = 1
        loss = F.cross_entropy(logits, targets) + pairs.anchor
        accuracy = (logits.argmax(dim=1) == targets).float().mean()
        return {"itm_loss": loss, "itm_accuracy": accuracy.detach(), **metrics}


@dataclass
class MatchPairs:
    """Text-visual pairs for the ITM head, the positives first."""

    input_ids: Tensor
    """(n, L) decoder text ids."""
    attention_mask: Tensor
    """(n, L)."""
    visual: Tensor
    """(n, N, D) visual tokens."""
    visual_mask: Tensor
    """(n, N)."""
    positives: int
    """The first ``positives`` pairs match; the rest are negatives."""
    hard: bool
    """Whether contrastive similarities drove the sampling."""
    anchor: Tensor
    """A zero added to the loss that keeps every gathered tensor in the graph, so each
    process's backward pass joins the same collectives."""


def visual_mask(sequence: Tensor, mask: Tensor | None) -> Tensor:
    """(B, N) mask of the visual tokens: ``mask``, or all ones."""
    return mask if mask is not None else sequence.new_ones(sequence.shape[:2], dtype=torch.long)


def global_pairs(itm: ITM, features: FeatureCache, rows: Tensor) -> MatchPairs:
    """The B local positive pairs, and negatives drawn from every process's batch.

    Each local text gets a visual sample from the global batch and each local visual sample a
    global text, never its own pair or a same-label / same-id sample of any process. Every
    process calls the same gathers in the same order (a process with no usable pair too).
    """
    cfg = itm.config
    visual = features[cfg.vision]
    text = features.batch[features.model.input_field(cfg.decoder, features.batch)]
    input_ids, attention = text["input_ids"][rows], text["attention_mask"][rows]
    sequence = visual.sequence[rows]
    mask = visual_mask(visual.sequence, visual.mask)[rows]
    world_sequence = gather_with_grad(sequence)  # (G, N, D)
    world_mask = gather_no_grad(mask)
    world_ids, world_attention = gather_padded(input_ids), gather_padded(attention)  # (G, L')
    input_ids, attention = (
        pad_width(input_ids, world_ids.shape[1]),
        pad_width(attention, world_ids.shape[1]),
    )
    sim_t2v, sim_v2t, hard = global_similarity(itm, features, rows, world_sequence.shape[0])
    neg_visual, neg_text = itm_hard_negatives(
        sim_t2v, sim_v2t, global_positives(itm, features, rows)
    )
    with_visual, with_text = neg_visual >= 0, neg_text >= 0
    return MatchPairs(
        torch.cat([input_ids, input_ids[with_visual], world_ids[neg_text[with_text]]]),
        torch.cat([attention, attention[with_visual], world_attention[neg_text[with_text]]]),
        torch.cat([sequence, world_sequence[neg_visual[with_visual]], sequence[with_text]]),
        torch.cat([mask, world_mask[neg_visual[with_visual]], mask[with_text]]),
        rows.numel(),
        hard,
        zero_loss_like(world_sequence),
    )


def global_positives(itm: ITM, features: FeatureCache, rows: Tensor) -> Tensor:
    """(b, G) bool: local sample i and global sample j are the same pair, label or id."""
    local = torch.arange(rows.numel(), device=rows.device)
    owner = gather_no_grad(torch.full_like(local, rank()))
    index = gather_no_grad(local)
    positive = (owner[None, :] == rank()) & (index[None, :] == local[:, None])
    for key in (itm.config.labels, itm.config.ids):
        value = features.batch.get(key) if key is not None else None
        if value is None:
            continue  # the same on every process: they run the same spec on the same fields
        mine = torch.as_tensor(value).to(rows.device)[rows]
        world = gather_no_grad(mine)
        positive = positive | ((mine[:, None] == world[None, :]) & (mine[:, None] >= 0))
    return positive


@torch.no_grad()
def global_similarity(
    itm: ITM, features: FeatureCache, rows: Tensor, total: int
) -> tuple[Tensor, Tensor, bool]:
    """``(sim_t2v, sim_v2t, hard)``: (b, G) logits of local texts against every process's
    visual samples and of local visual samples against every text; zeros (uniform sampling)
    when the model has no contrastive embedding of the pair."""
    found = itm.embeddings(features)
    if found is None:
        zeros = torch.zeros(rows.numel(), total, device=rows.device)
        return zeros, zeros, False
    visual, text, temperature = found
    visual, text = visual[rows].float(), text[rows].float()
    world_visual, world_text = gather_no_grad(visual), gather_no_grad(text)
    return text @ world_visual.T / temperature, visual @ world_text.T / temperature, True


def pad_width(x: Tensor, width: int) -> Tensor:
    """Zero-pad dim 1 of (b, L) token ids or masks to ``width``."""
    return F.pad(x, (0, width - x.shape[1]))


def make_itm(config: ITMSpec, ctx: BuildContext) -> ITM:
    """Registry factory of ``itm``."""
    where = "model.objectives.itm"
    decoder = check_decoder(ctx, config.decoder, where)
    ctx.component(config.vision)
    return ITM(config, decoder.output_dim, text_tokens(ctx, where))


@hookimpl
def modaloom_register_objectives(registry: Registry) -> None:
    """Register ``itm``."""
    registry.add_objective(
        make_itm,
        ITMSpec,
        description="image/video-text matching with contrastive hard negatives (OmniVL/BLIP)",
    )
