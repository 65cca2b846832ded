"""Shared pieces of the text-generating objectives (LM, MGC, ITM, MVLM, MGA): modality groups,
special token ids, the decoder lookup and the per-modality condition encoder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, cast

import torch
from torch import Tensor, nn

from modaloom.core.compose import BuildContext, FeatureCache
from modaloom.core.errors import SpecError
from modaloom.modalities.text import TextProcessor
from modaloom.modalities.text_decoder import BertTextDecoder
from modaloom.objectives.generation import SearchTokens

Group = tuple[str, str | list[str]]
"""A modality group: ``(text component, other component or list of components)``."""


def default_groups() -> list[Group]:
    """The default single group: text with vision."""
    return [("text", "vision")]


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
    if not isinstance(processor, TextProcessor):
        raise SpecError([(where, "needs the text tokenizer (data.text) for its special tokens")])
    cls, sep, mask, enc, dec = (
        processor.token_id(t) for t in ("[CLS]", "[SEP]", "[MASK]", "[ENC]", "[DEC]")
    )
    return TextTokens(processor.pad_id, cls, sep, mask, enc, dec, processor.vocab_size)


def group_members(group: Group) -> list[str]:
    """The non-text components of a group, as a list."""
    other = group[1]
    return [other] if isinstance(other, str) else list(other)


def group_name(group: Group) -> str:
    """A metric-friendly name such as ``text-vision+audio``."""
    return f"{group[0]}-{'+'.join(group_members(group))}"


def check_decoder(ctx: BuildContext, name: str, where: str) -> BertTextDecoder:
    """The decoder component ``name``, which must be a `BertTextDecoder` (``bert_decoder``)."""
    decoder = ctx.component(name)
    if not isinstance(decoder, BertTextDecoder):
        raise SpecError([(where, f"component {name!r} is not a bert_decoder")])
    return decoder


def decoder_of(features: FeatureCache, name: str) -> BertTextDecoder:
    """The decoder component ``name`` of this model (checked when the objective was built)."""
    return cast(BertTextDecoder, features.components[name])


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


def present_rows(features: FeatureCache, names: Sequence[str]) -> Tensor:
    """(b,) indices of the samples carrying every component of ``names``.

    Empty when the batch lacks one of their fields altogether (e.g. audio in an image batch).
    """
    keep: Tensor | None = None
    for name in names:
        try:
            present = features.present(name)
        except KeyError:
            return torch.zeros(0, dtype=torch.long)
        keep = present if keep is None else keep & present
    assert keep is not None
    return keep.nonzero()[:, 0]
