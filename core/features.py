"""The per-batch feature cache objectives read, and modality groups over it.

A modality group (VALOR's T-V, T-A, T-AV) is data, not code: ``(text component, other
component or list of components)``. Objectives loop over their groups; evaluators pick a group's
samples with `present_rows`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from modaloom.core.interfaces import Batch, EncoderOutput

if TYPE_CHECKING:
    from modaloom.core.compose import LoomModel

Group = tuple[str, str | list[str]]
"""A modality group: ``(text component, other component or list of components)``."""


class FeatureCache:
    """Encodes each component's input at most once per batch.

    Objectives read ``features["text"]`` (an `EncoderOutput`), ``features.batch`` and
    ``features.components``. ``features.shared`` carries per-batch results from one objective to
    the ones after it in the spec (for example COTS's AMF keep-mask, read by MVLM).
    """

    def __init__(self, model: LoomModel, batch: Batch) -> None:
        self.model = model
        self.batch = batch
        self.components = model.components
        self.shared: dict[str, Any] = {}
        self._cache: dict[str, EncoderOutput] = {}

    def __getitem__(self, name: str) -> EncoderOutput:
        if name not in self._cache:
            self._cache[name] = self.model.encode(name, self.batch)
        return self._cache[name]

    def present(self, name: str) -> Tensor:
        """(B,) bool: which samples carry the field that component ``name`` reads."""
        return self.batch[self.model.input_field(name, self.batch)]["present"].bool()


def default_groups() -> list[Group]:
    """The default single group: text with vision."""
    return [("text", "vision")]


def group_members(group: Group) -> list[str]:
    """The non-text components of a group, as a list."""
    other = group[1]
    return [other] if isinstance(other, str) else list(other)


def group_name(group: Group) -> str:
    """A metric-friendly name such as ``text-vision+audio``."""
    return f"{group[0]}-{'+'.join(group_members(group))}"


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
