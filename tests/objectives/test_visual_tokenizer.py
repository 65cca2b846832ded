"""Every registered visual tokenizer, from the registry: codes of the ViT's patch grid.

A tokenizer's spec fields come from ``tests/tiny.py`` (`VISUAL_TOKENIZERS`) or its registered
``tiny={...}``; a ``dvae`` gets random weights saved in its layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from modaloom.core.interfaces import PixelGrid, VisualTokenizer
from modaloom.core.plugins import load_plugins
from modaloom.core.registry import Component
from modaloom.objectives.dvae import DALLEEncoder
from modaloom.objectives.visual_tokenizer import build_visual_tokenizer, tokenizer_view
from modaloom.tests.tiny import tiny_entry

REGISTRY = load_plugins(entry_points=False)
TOKENIZERS = REGISTRY.of_kind("visual_tokenizer")


def tiny_fields(component: Component, tmp_path: Path) -> dict[str, Any]:
    fields = {"type": component.name, **(tiny_entry(component) or {})}
    if component.name == "dvae":
        encoder = DALLEEncoder(fields["codes"], fields["hidden"], fields["blocks_per_group"])
        fields["path"] = str(tmp_path / "dvae.safetensors")
        save_file(encoder.state_dict(), fields["path"])
    return fields


def test_the_built_in_tokenizers_are_registered_each_with_a_tiny_entry() -> None:
    assert {"kmeans", "dvae", "vq"} <= {c.name for c in TOKENIZERS}
    assert [c.name for c in TOKENIZERS if tiny_entry(c) is None] == []


@pytest.mark.parametrize("component", TOKENIZERS, ids=lambda c: c.name)
def test_tokenizer_gives_one_code_per_patch(component: Component, tmp_path: Path) -> None:
    assert component.config is not None
    config = component.config.model_validate(tiny_fields(component, tmp_path))
    tokenizer = build_visual_tokenizer(config, PixelGrid(patch=8), REGISTRY)  # type: ignore[arg-type]
    assert isinstance(tokenizer, VisualTokenizer) and tokenizer.codes == config.codes  # type: ignore[attr-defined]
    pixels = torch.randn(2, 3, 32, 32, requires_grad=True)
    codes = tokenizer.train()(pixels, (4, 4))
    assert codes.shape == (2, 16) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < tokenizer.codes
    assert not codes.requires_grad
    assert torch.equal(tokenizer.eval()(pixels, (4, 4)), tokenizer(pixels, (4, 4)))


def test_the_view_is_the_patch_grid_times_the_factor() -> None:
    pixels = torch.randn(1, 3, 32, 32)
    assert tokenizer_view(pixels, (4, 4), 8) is pixels
    assert tokenizer_view(pixels, (4, 4), 4).shape == (1, 3, 16, 16)
