"""The ``vq`` visual tokenizer (a VQ-VAE) and the ``vq_tokenizer`` objective that trains it."""

from __future__ import annotations

import logging
import random
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch.testing import assert_close

from modaloom.core.compose import LoomModel, build_model
from modaloom.core.interfaces import Batch, PixelGrid
from modaloom.core.plugins import load_plugins
from modaloom.core.spec import load_spec
from modaloom.modalities.text import TextProcessor, train_wordpiece
from modaloom.objectives.mvlm import MVLM
from modaloom.objectives.vq_tokenizer import VQVAE, VQTokenizer, VQTokenizerSpec, vq_losses
from modaloom.tests.tiny import TINY_BERT, TINY_VIT

REGISTRY = load_plugins(entry_points=False)
CAPTIONS = ["a red square", "a blue circle on the left", "two green triangles", "a yellow circle"]
PROCESSOR = TextProcessor(train_wordpiece(CAPTIONS * 4, vocab_size=120), max_length=16)
VQ: dict[str, Any] = {"type": "vq", "codes": 8, "dim": 4, "hidden": 8, "downsample": 2}


def test_quantise_picks_the_nearest_code_and_passes_gradients_straight_through() -> None:
    torch.manual_seed(0)
    vqvae = VQVAE(codes=4, dim=2, hidden=4, downsample=2, channels=3)
    with torch.no_grad():
        vqvae.codebook.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]))
    latent = torch.tensor([[0.9, 0.1], [0.1, 0.2], [4.0, 6.0]]).T.reshape(1, 2, 1, 3)
    codes, quantised = vqvae.quantise(latent)
    assert codes.tolist() == [[[1, 0, 3]]]
    assert_close(quantised, vqvae.codebook.weight[[1, 0, 3]].T.reshape(1, 2, 1, 3))
    pixels = torch.randn(2, 3, 8, 8)
    out = vqvae(pixels)
    assert out.codes.shape == (2, 4, 4) and out.reconstruction.shape == pixels.shape
    out.reconstruction.sum().backward()
    assert vqvae.encoder[0].weight.grad is not None  # straight through the quantiser
    assert vqvae.codebook.weight.grad is None  # the decoder does not move the codebook


def test_losses_are_reconstruction_codebook_and_weighted_commitment() -> None:
    torch.manual_seed(1)
    vqvae = VQVAE(codes=8, dim=4, hidden=8, downsample=2, channels=3)
    pixels = torch.randn(2, 3, 8, 8)
    out = vqvae(pixels)
    losses = vq_losses(pixels, out, commitment=0.25)
    assert_close(losses["vq_recon_loss"], F.mse_loss(out.reconstruction, pixels))
    assert_close(losses["vq_codebook_loss"], (out.quantised - out.latent).pow(2).mean())
    assert_close(losses["vq_commit_loss"], 0.25 * (out.quantised - out.latent).pow(2).mean())
    losses["vq_codebook_loss"].backward()
    assert vqvae.codebook.weight.grad is not None and vqvae.encoder[0].weight.grad is None


def build() -> LoomModel:
    torch.manual_seed(0)
    components = {
        "vision": REGISTRY.get("encoder", "vit").config.model_validate(  # type: ignore[union-attr]
            {"type": "vit", "config": TINY_VIT}
        ),
        "text": REGISTRY.get("encoder", "bert").config.model_validate(  # type: ignore[union-attr]
            {"type": "bert", "config": TINY_BERT}
        ),
    }
    objectives = [
        REGISTRY.get("objective", name).config.model_validate(fields)  # type: ignore[union-attr]
        for name, fields in (
            ("mvlm", {"type": "mvlm", "visual_tokenizer": VQ}),
            ("vq_tokenizer", {"type": "vq_tokenizer"}),
        )
    ]
    model_spec = SimpleNamespace(components=components, objectives=objectives)
    return build_model(model_spec, REGISTRY, {"text": PROCESSOR})


def batch(objectives: list[str]) -> Batch:
    g = torch.Generator().manual_seed(0)
    items = [PROCESSOR.process(c, key="k", train=False, rng=random.Random(0)) for c in CAPTIONS]
    image = {"pixel_values": torch.randn(4, 3, 32, 32, generator=g), "present": torch.ones(4)}
    return {"text": PROCESSOR.collate(list(items)), "image": image, "__objectives__": objectives}


def test_a_stage_trains_the_vq_and_the_next_uses_its_frozen_codes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = build()
    mvlm = model.objectives[0]
    assert isinstance(mvlm, MVLM) and isinstance(mvlm.tokenizer, VQTokenizer)
    vq_params = list(mvlm.tokenizer.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(3):  # stage 1: the source lists only vq_tokenizer
        optimizer.zero_grad(set_to_none=True)
        output = model(batch(["vq_tokenizer"]))
        assert set(output.terms) == {
            "vq_tokenizer/vq_recon_loss",
            "vq_tokenizer/vq_codebook_loss",
            "vq_tokenizer/vq_commit_loss",
        }
        first = output.loss.item() if first is None else first
        output.loss.backward()
        assert all(p.grad is not None for p in vq_params)
        optimizer.step()
    assert int(mvlm.tokenizer.trained_steps) == 3
    pixels = batch([])["image"]["pixel_values"]
    codes = mvlm.tokenizer(pixels, (4, 4))
    frozen = [p.detach().clone() for p in vq_params]
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # stage 2: CMVM with the trained codes
            optimizer.zero_grad(set_to_none=True)
            output = model(batch(["mvlm"]))
            output.loss.backward()
            assert all(p.grad is None for p in vq_params)  # no gradient reaches the VQ-VAE
            optimizer.step()
    assert "untrained" not in caplog.text
    assert all(torch.equal(p, q) for p, q in zip(vq_params, frozen, strict=True))
    assert torch.equal(mvlm.tokenizer(pixels, (4, 4)), codes)


def test_cmvm_with_a_vq_that_never_trained_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    model = build()
    with caplog.at_level(logging.WARNING):
        model(batch(["mvlm"]))
        model(batch(["mvlm"]))
    warnings = [r.getMessage() for r in caplog.records if "untrained" in r.getMessage()]
    assert warnings == [
        "cmvm uses the codes of an untrained vq visual tokenizer; train it first in a stage "
        "whose source has objectives: [vq_tokenizer]"
    ]


def test_the_tokenizer_sees_the_patch_grid_times_its_downsampling() -> None:
    tokenizer = VQTokenizer(VQTokenizerSpec(codes=8, dim=4, hidden=8, downsample=4), PixelGrid(8))
    assert tokenizer(torch.randn(2, 3, 32, 32), (4, 4)).shape == (2, 16)  # 16 x 16 view


def test_a_two_stage_cots_spec_validates() -> None:
    spec = load_spec(
        {
            "base": "cots-tiny",
            "model": {
                "objectives": [
                    {"type": "cots_contrastive", "a": "vision", "b": "text", "embed_dim": 16},
                    {"type": "mvlm", "visual_tokenizer": {"type": "vq", "codes": 64}},
                    {"type": "vq_tokenizer"},
                ]
            },
            "data": {
                "sources": {
                    "vq_images": {
                        "type": "digits_av",
                        "part": "labels",
                        "objectives": ["vq_tokenizer"],
                    },
                    "images": {
                        "type": "digits_av",
                        "part": "labels",
                        "objectives": ["cots_contrastive", "mvlm"],
                    },
                }
            },
            "train": {
                "steps": None,
                "stages": [
                    {"name": "tokenizer", "steps": 10, "sources": ["vq_images"]},
                    {"name": "cots", "steps": 10, "sources": ["images"]},
                ],
            },
        },
        registry=REGISTRY,
    )
    assert spec.model.objectives[1].visual_tokenizer.type == "vq"  # type: ignore[attr-defined]


def test_config_errors() -> None:
    with pytest.raises(ValidationError, match="must be a power of 2"):
        VQTokenizerSpec(downsample=6)
