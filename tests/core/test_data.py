"""`batch_from_values` and `process_values`: raw values to an evaluation batch."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from torch import Tensor

from modaloom.core.data import batch_from_values, process_values
from modaloom.core.errors import MediaDecodeError
from modaloom.core.interfaces import Processor


class Recording(Processor):
    """Encodes a string as its length plus one random draw; records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    def process(
        self, value: Any, *, key: str, train: bool, rng: random.Random
    ) -> dict[str, Tensor]:
        self.calls.append((key, train))
        if not isinstance(value, str):
            raise MediaDecodeError(key, "not a string")
        return {"x": torch.tensor([len(value), rng.randrange(1000)])}

    def collate(self, items: list[dict[str, Tensor] | None]) -> dict[str, Tensor]:
        return {"x": torch.stack([item["x"] for item in items if item is not None])}


def test_fields_are_processed_in_eval_mode_with_one_shared_rng() -> None:
    text, image = Recording(), Recording()
    batch = batch_from_values(
        {"text": text, "image": image}, {"text": ["ab", "c"], "image": ["xyz"] * 2}
    )
    draws = random.Random(0)
    expected = [[2, draws.randrange(1000)], [1, draws.randrange(1000)]]
    assert batch["text"]["x"].tolist() == expected
    assert batch["image"]["x"][:, 0].tolist() == [3, 3]
    assert batch["__keys__"] == [] and batch["__meta__"] == []
    assert text.calls == [("text0", False), ("text1", False)]
    assert image.calls == [("image0", False), ("image1", False)]


def test_keys_name_the_samples_and_errors() -> None:
    processor = Recording()
    batch = batch_from_values({"text": processor}, {"text": ["a", "b"]}, keys=["k1", "k2"])
    assert batch["__keys__"] == ["k1", "k2"]
    with pytest.raises(MediaDecodeError, match="cannot decode sample 'bad'"):
        process_values(processor, ["ok", 3], ["good", "bad"], random.Random(0))
