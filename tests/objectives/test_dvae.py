"""DALL-E's dVAE encoder (``dvae`` visual tokenizer) and scripts/convert_dalle_encoder.py."""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.testing import assert_close

from modaloom.core.errors import SpecError
from modaloom.core.interfaces import PixelGrid
from modaloom.objectives.dvae import DALLEEncoder, DVAETokenizer, DVAETokenizerSpec, make_dvae

ROOT = Path(__file__).resolve().parents[2]


def convert_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "convert_dalle_encoder", ROOT / "scripts" / "convert_dalle_encoder.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dalle_state(encoder: DALLEEncoder) -> OrderedDict[str, torch.Tensor]:
    """``encoder``'s tensors under the published encoder.pkl's names (``.w`` / ``.b``)."""
    return OrderedDict(
        (
            k.removesuffix(".weight") + ".w"
            if k.endswith(".weight")
            else k.removesuffix(".bias") + ".b",
            v,
        )
        for k, v in encoder.state_dict().items()
    )


def test_the_architecture_is_dalles() -> None:
    encoder = DALLEEncoder()  # the published sizes
    state = encoder.state_dict()
    assert state["blocks.input.weight"].shape == (256, 3, 7, 7)
    assert state["blocks.group_2.block_1.id_path.weight"].shape == (512, 256, 1, 1)
    assert "blocks.group_1.block_1.id_path.weight" not in state  # same width: identity
    assert state["blocks.group_4.block_2.res_path.conv_4.weight"].shape == (2048, 512, 1, 1)
    assert state["blocks.output.conv.weight"].shape == (8192, 2048, 1, 1)
    assert encoder.blocks.group_1.block_1.post_gain == 1 / 64
    small = DALLEEncoder(codes=16, hidden=8, blocks_per_group=1)
    assert small(torch.randn(1, 3, 32, 32)).shape == (1, 16, 4, 4)  # 8x downsampled


def test_a_residual_block_is_id_plus_scaled_res_path() -> None:
    block = DALLEEncoder(codes=16, hidden=8, blocks_per_group=1).blocks.group_2.block_1
    x = torch.randn(1, 8, 4, 4)
    res = x
    for index in range(1, 5):
        conv = getattr(block.res_path, f"conv_{index}")
        res = conv(F.relu(res))
    assert_close(block(x), block.id_path(x) + res / 16)


def test_codes_are_the_argmax_of_the_mapped_unnormalised_view(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = DALLEEncoder(codes=16, hidden=8, blocks_per_group=1)
    grid = PixelGrid(patch=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    tokenizer = DVAETokenizer(encoder, grid)
    pixels = torch.randn(2, 3, 64, 64)  # 4 x 4 patches of 16 -> the dVAE sees 32 x 32
    unit = (pixels * 0.25 + 0.5).clamp(0, 1)
    view = F.interpolate(unit, size=(32, 32), mode="bilinear", antialias=True)
    expected = encoder(0.8 * view + 0.1).argmax(dim=1).flatten(1)
    assert torch.equal(tokenizer(pixels, (4, 4)), expected)
    assert not any(p.requires_grad for p in tokenizer.parameters())  # frozen
    assert not tokenizer.train().encoder.training


def test_random_weights_in_the_layout_load_exactly(tmp_path: Path) -> None:
    torch.manual_seed(1)
    saved = DALLEEncoder(codes=16, hidden=8, blocks_per_group=1)
    path = tmp_path / "dvae.safetensors"
    save_file(saved.state_dict(), str(path))
    config = DVAETokenizerSpec(path=str(path), codes=16, hidden=8, blocks_per_group=1)
    tokenizer = make_dvae(config, PixelGrid(patch=8))
    for key, value in saved.state_dict().items():
        assert torch.equal(tokenizer.encoder.state_dict()[key], value)


def test_other_keys_or_shapes_are_refused_with_the_way_out(tmp_path: Path) -> None:
    saved = DALLEEncoder(codes=16, hidden=8, blocks_per_group=1).state_dict()
    path = tmp_path / "dvae.safetensors"
    save_file(dalle_state(DALLEEncoder(codes=16, hidden=8, blocks_per_group=1)), str(path))
    config = DVAETokenizerSpec(path=str(path), codes=16, hidden=8, blocks_per_group=1)
    with pytest.raises(SpecError) as info:
        make_dvae(config, PixelGrid(patch=8))
    assert info.value.problems == [
        (
            "visual_tokenizer.path",
            f"{path} does not hold a DALL-E dVAE encoder in modaloom's layout (missing keys "
            "['blocks.group_1.block_1.res_path.conv_1.bias', "
            "'blocks.group_1.block_1.res_path.conv_1.weight', "
            "'blocks.group_1.block_1.res_path.conv_2.bias'] ..., unexpected keys "
            "['blocks.group_1.block_1.res_path.conv_1.b', "
            "'blocks.group_1.block_1.res_path.conv_1.w', "
            "'blocks.group_1.block_1.res_path.conv_2.b'] ...); convert DALL-E's encoder.pkl "
            "with scripts/convert_dalle_encoder.py, and set codes, hidden and blocks_per_group "
            "to the encoder's",
        )
    ]
    save_file(saved, str(path))
    wider = DVAETokenizerSpec(path=str(path), codes=32, hidden=8, blocks_per_group=1)
    with pytest.raises(SpecError) as info:
        make_dvae(wider, PixelGrid(patch=8))
    assert info.value.problems == [
        (
            "visual_tokenizer.path",
            f"{path}: blocks.output.conv.weight has shape [16, 64, 1, 1], the encoder "
            "[32, 64, 1, 1] (2 tensors differ); set codes, hidden and blocks_per_group to the "
            "encoder's",
        )
    ]


def test_the_conversion_script_renames_dalles_tensors(tmp_path: Path) -> None:
    torch.manual_seed(2)
    encoder = DALLEEncoder(codes=16, hidden=8, blocks_per_group=2)
    source = tmp_path / "encoder.pt"
    torch.save(dalle_state(encoder), source)  # what encoder.pkl's module.state_dict() holds
    output = tmp_path / "dvae.safetensors"
    script = convert_script()
    assert script.main([str(source), "--output", str(output), "--state-dict"]) == 0
    converted = load_file(str(output))
    assert converted.keys() == encoder.state_dict().keys()
    config = DVAETokenizerSpec(path=str(output), codes=16, hidden=8, blocks_per_group=2)
    pixels = torch.rand(1, 3, 32, 32)
    loaded = make_dvae(config, PixelGrid(patch=8, mean=(0, 0, 0), std=(1, 1, 1)))
    assert torch.equal(loaded.encoder(pixels), encoder(pixels))
    assert script.encoder_sizes(converted) == {
        "codes": 16,
        "hidden": 8,
        "blocks_per_group": 2,
        "channels": 3,
    }


def test_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="must be a multiple of 4, got 6"):
        DVAETokenizerSpec(path=str(path), hidden=6)
