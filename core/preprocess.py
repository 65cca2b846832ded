"""A trained run's processors as plain callables, for a user's own DataLoader
(``modaloom.load(run).processors``, as open_clip's ``create_model_and_transforms`` gives its
``preprocess``)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from modaloom.core.interfaces import Processor


@dataclass(frozen=True)
class Preprocess:
    """One modality's evaluation transform: ``value -> {name: tensor}`` and ``collate``.

    ``preprocess(value)`` takes what `Pipeline` methods take (text; bytes, paths, PIL images,
    numpy arrays, tensors, ``(waveform, sample_rate)``) and returns one sample's tensors without
    augmentation, e.g. ``{"pixel_values": (3, S, S)}`` for an image or ``{"input_ids": (L,)}``
    for text. ``collate`` stacks (or pads) them into a batch with its masks, e.g.
    ``{"pixel_values": (B, 3, S, S), "present": (B,)}``, for `Pipeline.embed_processed`.

    Attributes:
        processor: the run's processor of this modality.
        modality: its name (``image``, ``text``, ...), the key in error messages.
    """

    processor: Processor
    modality: str

    def __call__(self, value: Any) -> dict[str, Tensor]:
        """One sample's tensors (no augmentation).

        Raises:
            MediaDecodeError: the value cannot be decoded or converted.
        """
        return self.processor.process(value, key=self.modality, train=False, rng=random.Random(0))

    def collate(self, items: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Samples from `__call__` as one batch (usable as a DataLoader's ``collate_fn``)."""
        return self.processor.collate(list(items))
