"""Shared pieces of the text-generating objectives (LM, MGC, ITM, MVLM): special token ids, the
decoder lookup, the per-modality condition encoder and conditioned decoding (`decode`), which
``lm`` (`modaloom.objectives.lm`) and ``mgc`` (`modaloom.objectives.mgc`) both generate with."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple, Protocol, cast

import torch
from torch import Tensor, nn

from modaloom.core.answer_scoring import sequence_log_probs
from modaloom.core.compose import BuildContext
from modaloom.core.errors import SpecError
from modaloom.core.features import FeatureCache
from modaloom.core.generation import SearchOptions, SearchTokens, StepFn, decoder_step, search
from modaloom.core.interfaces import ConditionLayout, Decoder, TextCodec

CrossAttention = Literal["concat", "sequential", "parallel"]
"""How a decoder cross-attends to several modalities (`ConditionEncoder.layout`)."""

ANSWER_ROWS = 4096
"""(question, candidate answer) pairs `score_answers` runs through the decoder at once."""


class TextTokens(NamedTuple):
    """Special token ids and vocabulary size of the text tokenizer."""

    pad: int
    cls: int
    sep: int
    mask: int
    enc: int
    dec: int
    vocab_size: int

    @property
    def special(self) -> tuple[int, ...]:
        """Ids that are never masked for prediction ([SEP] may be re-allowed)."""
        return (self.pad, self.cls, self.sep, self.mask, self.enc, self.dec)

    @property
    def search(self) -> SearchTokens:
        """What generation stops at ([SEP]) and never emits ([PAD], [CLS], [MASK], [ENC], [DEC])."""
        return SearchTokens(self.sep, self.pad, (self.pad, self.cls, self.mask, self.enc, self.dec))


def text_tokens(ctx: BuildContext, where: str) -> TextTokens:
    """Read `TextTokens` from the data's text processor.

    Raises:
        SpecError: there is no text processor (``data.text``) to read them from.
    """
    processor = ctx.processors.get("text")
    if not isinstance(processor, TextCodec):
        raise SpecError([(where, "needs the text tokenizer (data.text) for its special tokens")])
    cls, sep, mask, enc, dec = (
        processor.token_id(t) for t in ("[CLS]", "[SEP]", "[MASK]", "[ENC]", "[DEC]")
    )
    return TextTokens(processor.pad_id, cls, sep, mask, enc, dec, processor.vocab_size)


def check_decoder(ctx: BuildContext, name: str, where: str) -> Decoder:
    """The decoder component ``name``, which must be a `Decoder` (``bert_decoder``)."""
    decoder = ctx.component(name)
    if not isinstance(decoder, Decoder):
        raise SpecError([(where, f"component {name!r} is not a bert_decoder")])
    return decoder


def decoder_of(features: FeatureCache, name: str) -> Decoder:
    """The decoder component ``name`` of this model (checked when the objective was built)."""
    return cast(Decoder, features.components[name])


class ConditionEncoder(nn.Module):
    """Concatenates components' token sequences, each mapped to the decoder's condition width.

    Args:
        dims: D of each component, by name.
        width: the decoder's ``condition_dim``.
        always_project: add a linear map even where D already equals ``width`` (VALOR);
            otherwise such components pass through unchanged (OmniVL's visual tokens).
    """

    def __init__(self, dims: dict[str, int], width: int, always_project: bool) -> None:
        super().__init__()
        identity = not always_project
        self.adapters = nn.ModuleDict(
            {
                n: nn.Identity() if identity and d == width else nn.Linear(d, width)
                for n, d in dims.items()
            }
        )

    def forward(
        self, features: FeatureCache, names: Sequence[str], rows: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Condition tokens of the selected samples.

        Args:
            features: the batch's feature cache.
            names: components to concatenate, in order.
            rows: (b,) indices of the samples to keep.

        Returns:
            ``(condition (b, N, C), mask (b, N) long)``; N sums the components' lengths.
        """
        parts, masks = [], []
        for name in names:
            output = features[name]
            sequence = output.sequence[rows]
            parts.append(self.adapters[name](sequence))
            mask = output.mask[rows] if output.mask is not None else None
            masks.append(mask if mask is not None else sequence.new_ones(sequence.shape[:2]))
        return torch.cat(parts, dim=1), torch.cat(masks, dim=1).long()

    @staticmethod
    def layout(
        features: FeatureCache, names: Sequence[str], combine: CrossAttention
    ) -> ConditionLayout | None:
        """How a decoder attends to the condition of ``names`` (`forward`'s concatenation):
        ``None`` for one attention over it (``concat``, or a single component), else its
        segments (each component's length) and how they combine."""
        if combine == "concat" or len(names) < 2:
            return None
        segments = tuple(int(features[name].sequence.shape[1]) for name in names)
        return ConditionLayout(segments, combine)


def condition_dims(ctx: BuildContext, names: Sequence[str]) -> dict[str, int]:
    """D of each named component (duplicates once, in order): `ConditionEncoder`'s ``dims``."""
    return {name: ctx.output_dim(name) for name in dict.fromkeys(names)}


class _NamesDecoder(Protocol):
    @property
    def decoder(self) -> str:
        """The decoder component's name."""


class ConditionedGenerator(Protocol):
    """What `decode` reads of a generating objective (``lm``, ``mgc``)."""

    condition: ConditionEncoder
    tokens: TextTokens

    @property
    def config(self) -> _NamesDecoder:
        """The objective's spec; ``decoder`` names its decoder component."""

    @property
    def default_condition(self) -> list[str]:
        """The components generation conditions on when none are given."""


def decode(
    objective: ConditionedGenerator,
    features: FeatureCache,
    condition: str | Sequence[str] | None,
    rows: Tensor | None,
    prefix: Tensor,
    prefix_mask: Tensor,
    tail: int | None,
    mode: Literal["causal", "prefix"],
    options: SearchOptions,
) -> Tensor:
    """Search with ``objective``'s decoder after per-row prefixes, conditioned as in training.

    Args:
        objective: an ``lm`` or ``mgc`` objective (its condition encoder, decoder and tokens).
        features: the batch's feature cache.
        condition: components to condition on; ``None``: ``objective.default_condition``.
        rows: (n,) samples (default: all).
        prefix: (n, P) or (1, P) ids every row starts with, right-padded.
        prefix_mask: like ``prefix``, 1 for real tokens.
        tail: id appended after the generated tokens and read (MGC's [MASK]), or ``None``.
        mode: ``causal``, or ``prefix`` (bidirectional over the prefix).
        options: the search options.

    Returns:
        (n, T) generated ids (`modaloom.core.generation.search`).

    Raises:
        ValueError: ``condition`` names a component the objective has no adapter for.
    """
    step, count, device = conditioned_step(
        objective, features, condition, rows, prefix, prefix_mask, tail, mode
    )
    return search(step, count, objective.tokens.search, options, device)


def conditioned_step(
    objective: ConditionedGenerator,
    features: FeatureCache,
    condition: str | Sequence[str] | None,
    rows: Tensor | None,
    prefix: Tensor,
    prefix_mask: Tensor,
    tail: int | None,
    mode: Literal["causal", "prefix"],
) -> tuple[StepFn, int, torch.device]:
    """The decoder `StepFn` of `decode` (arguments as there), with the number of samples and
    their device."""
    names = objective.default_condition if condition is None else condition
    names = [names] if isinstance(names, str) else list(names)
    unknown = [name for name in names if name not in objective.condition.adapters]
    if unknown:
        known = list(objective.condition.adapters)
        raise ValueError(f"cannot condition on {unknown}: this objective knows {known}")
    sequence = features[names[0]].sequence
    device = sequence.device
    rows = torch.arange(sequence.shape[0], device=device) if rows is None else rows.to(device)
    cond, cond_mask = objective.condition(features, names, rows)
    prefix = prefix.to(device).expand(rows.shape[0], -1)
    lengths = prefix_mask.to(device).expand(rows.shape[0], -1).sum(dim=1)
    decoder = decoder_of(features, objective.config.decoder)
    combine: CrossAttention = getattr(objective.config, "cross_attention", "concat")  # mgc's
    layout = objective.condition.layout(features, names, combine)
    step = decoder_step(
        decoder,
        prefix,
        lengths,
        cond,
        cond_mask,
        tail=tail,
        mode=mode,
        pad=objective.tokens.pad,
        layout=layout,
    )
    return step, rows.shape[0], device


def score_answers(
    objective: ConditionedGenerator,
    features: FeatureCache,
    condition: str | Sequence[str] | None,
    rows: Tensor,
    prefix: tuple[Tensor, Tensor],
    answers: tuple[Tensor, Tensor],
    tail: int | None,
    mode: Literal["causal", "prefix"],
) -> Tensor:
    """(Q, C) summed log-probabilities of every candidate answer after every question's prefix,
    read as `decode` generates (`modaloom.core.generation.sequence_log_probs`).

    Args:
        objective, features, condition, tail, mode: as for `decode`.
        rows: (Q,) the sample of each question.
        prefix: ``(ids (Q, P), mask (Q, P))`` of each question's prefix.
        answers: ``(ids (C, L), mask (C, L))`` of the candidates, each ending with [SEP].
    """
    step, count, device = conditioned_step(
        objective, features, condition, rows, prefix[0], prefix[1], tail, mode
    )
    ids, mask = (tensor.to(device) for tensor in answers)
    chunk = max(1, ANSWER_ROWS // max(count, 1))  # (question, answer) rows scored at once
    parts = []
    for start in range(0, ids.shape[0], chunk):
        part, part_mask = ids[start : start + chunk], mask[start : start + chunk]
        origin = torch.arange(count, device=device).repeat_interleave(part.shape[0])
        scores = sequence_log_probs(
            step, origin, part.repeat(count, 1), part_mask.repeat(count, 1), objective.tokens.search
        )
        parts.append(scores.view(count, part.shape[0]))
    return torch.cat(parts, dim=1)
