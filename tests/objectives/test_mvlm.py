"""COTS's MVLM (SPEC §B8): CMLM, CMVM with the patch hook, the k-means visual tokenizer."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch.testing import assert_close
from transformers import ViTModel

from modaloom.core.compose import FeatureCache, LoomModel, build_model
from modaloom.core.errors import SpecError
from modaloom.core.interfaces import Batch
from modaloom.core.plugins import load_plugins
from modaloom.core.spec import load_spec
from modaloom.modalities.text import TextProcessor, train_wordpiece
from modaloom.objectives.cots import AMF_KEEP_KEY
from modaloom.objectives.masking import block_mask_patches, mask_tokens_for_mlm
from modaloom.objectives.mvlm import MVLM, MVLMSpec
from modaloom.objectives.visual_tokenizer import KMeansPatchTokenizer, patchify
from modaloom.tests.tiny import TINY_BERT, TINY_VIT

REGISTRY = load_plugins(entry_points=False)
CAPTIONS = ["a red square", "a blue circle on the left", "two green triangles", "a yellow circle"]
PROCESSOR = TextProcessor(train_wordpiece(CAPTIONS * 4, vocab_size=120), max_length=16)
B = len(CAPTIONS)


def build(vision: str = "vit", **fields: Any) -> LoomModel:
    torch.manual_seed(0)
    specs = {
        "vision": {"type": vision, "config": TINY_VIT},
        "text": {"type": "bert", "config": TINY_BERT},
    }
    components = {}
    for name, spec in specs.items():
        config = REGISTRY.get("encoder", spec["type"]).config
        assert config is not None
        components[name] = config.model_validate(spec)
    objective = MVLMSpec.model_validate({"visual_tokenizer": {"codes": 8}, **fields})
    model_spec = SimpleNamespace(components=components, objectives=[objective])
    return build_model(model_spec, REGISTRY, {"text": PROCESSOR}).eval()


def batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    items = [PROCESSOR.process(c, key="k", train=False, rng=random.Random(0)) for c in CAPTIONS]
    image = {"pixel_values": torch.randn(B, 3, 32, 32, generator=g), "present": torch.ones(B)}
    return {"text": PROCESSOR.collate(list(items)), "image": image}


def mvlm_of(model: LoomModel) -> MVLM:
    objective = model.objectives[0]
    assert isinstance(objective, MVLM)
    return objective


def test_cmlm_is_masked_token_ce_with_the_image_feature() -> None:
    model = build(cmvm=False)
    mvlm = mvlm_of(model)
    data = batch()
    features = FeatureCache(model, data)
    torch.manual_seed(4)
    loss = mvlm(features)["cmlm_loss"]
    torch.manual_seed(4)
    text, tokens = data["text"], mvlm.tokens
    masked, labels = mask_tokens_for_mlm(
        text["input_ids"],
        text["attention_mask"],
        tokens.mask,
        tokens.vocab_size,
        0.15,
        tokens.special,
        replace_strategy="bert_80_10_10",
    )
    hidden = model.components["text"](
        {"input_ids": masked, "attention_mask": text["attention_mask"]}
    )
    states = hidden.sequence + mvlm.image_to_text(features["vision"].pooled)[:, None]
    chosen = labels != -100
    assert chosen.any(dim=1).all()  # one or more words per caption
    assert_close(loss, F.cross_entropy(mvlm.mlm_head(states[chosen]), labels[chosen]))


def _stream_grads(model: LoomModel, component: str, term: str) -> list[bool]:
    """Which of ``component``'s parameters get a non-zero gradient from ``term`` alone."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    mvlm_of(model)(FeatureCache(model, batch()))[term].backward()
    return [
        p.grad is not None and bool(p.grad.any()) for p in model.components[component].parameters()
    ]


@pytest.mark.parametrize(("term", "other"), [("cmlm_loss", "vision"), ("cmvm_loss", "text")])
def test_the_other_stream_gets_the_gradient_unless_detached(term: str, other: str) -> None:
    """COTS Eq. 1-3 state no stop-gradient: g reaches the other stream by default (issue 16)."""
    assert any(_stream_grads(build(), other, term))
    assert not any(_stream_grads(build(detach_other_stream=True), other, term))


def test_cmvm_hook_masks_patches_exactly_like_hf_bool_masked_pos() -> None:
    model = build(cmlm=False)
    mvlm = mvlm_of(model)
    data = batch()
    features = FeatureCache(model, data)
    torch.manual_seed(7)
    loss = mvlm(features)["cmvm_loss"]
    torch.manual_seed(7)
    mask = block_mask_patches(B, 4, 4, 0.4)
    assert mask.sum(dim=1).tolist() == [6] * B  # round(0.4 * 16)
    vit = model.components["vision"].vit
    reference = ViTModel(vit.config, add_pooling_layer=False, use_mask_token=True).eval()
    reference.load_state_dict(vit.state_dict(), strict=False)
    with torch.no_grad():
        reference.embeddings.mask_token.copy_(mvlm.mask_embedding)
    pixels = data["image"]["pixel_values"]
    hidden = reference(pixels, bool_masked_pos=mask, interpolate_pos_encoding=True)
    states = hidden.last_hidden_state[:, 1:] + mvlm.text_to_image(features["text"].pooled)[:, None]
    targets = mvlm.tokenizer.assign(patchify(pixels, 8).flatten(0, 1)).view(B, 16)
    assert_close(loss, F.cross_entropy(mvlm.mvm_head(states[mask]), targets[mask]))
    assert len(vit.embeddings.patch_embeddings._forward_hooks) == 0  # the hook is gone


def test_amf_keep_mask_selects_the_samples() -> None:
    model = build(visual_tokenizer={"codes": 8, "fit_steps": 0})
    mvlm = mvlm_of(model)
    data = batch()
    features = FeatureCache(model, data)
    features.shared[AMF_KEEP_KEY] = torch.tensor([True, False, True, False])
    torch.manual_seed(1)
    kept = mvlm(features)
    sub = {field: {k: v[[0, 2]] for k, v in data[field].items()} for field in ("text", "image")}
    torch.manual_seed(1)
    direct = mvlm(FeatureCache(model, sub))
    assert_close(kept["cmlm_loss"], direct["cmlm_loss"])
    assert_close(kept["cmvm_loss"], direct["cmvm_loss"])
    features.shared[AMF_KEEP_KEY] = torch.zeros(B, dtype=torch.bool)
    empty = mvlm(features)
    assert empty["cmlm_loss"].item() == 0.0 and empty["cmlm_loss"].requires_grad


def test_a_caption_without_maskable_tokens_adds_no_cmlm_term() -> None:
    model = build(cmvm=False)
    data = batch()
    text = data["text"]
    text["input_ids"] = text["input_ids"][:, :2].clone()
    text["input_ids"][:, 1] = PROCESSOR.token_id("[SEP]")
    text["attention_mask"] = torch.ones_like(text["input_ids"])  # only [CLS] [SEP]
    loss = mvlm_of(model)(FeatureCache(model, data))["cmlm_loss"]
    assert loss.item() == 0.0 and loss.requires_grad


def test_kmeans_tokenizer_assigns_nearest_centroid_and_updates_by_count() -> None:
    tokenizer = KMeansPatchTokenizer(codes=2, patch=1, channels=2, fit_steps=2)
    tokenizer.centroids.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    tokenizer.counts.copy_(torch.tensor([2.0, 0.0]))
    tokenizer.steps.fill_(1)  # already initialised
    patches = torch.tensor([[1.0, 1.0], [3.0, 1.0], [9.0, 9.0]])
    assert tokenizer.assign(patches).tolist() == [0, 0, 1]
    tokenizer.fit_step(patches)
    # centroid 0: 2 new hits, count 4, rate 1/2 towards their mean (2, 1)
    assert_close(tokenizer.centroids, torch.tensor([[1.0, 0.5], [9.0, 9.0]]))
    assert tokenizer.counts.tolist() == [4.0, 1.0]
    frozen = tokenizer.centroids.clone()
    tokenizer.train()(torch.randn(1, 2, 2, 2), (2, 2))  # steps 2 == fit_steps: no change
    assert torch.equal(tokenizer.centroids, frozen)


def test_kmeans_first_call_initialises_from_the_batch_patches() -> None:
    tokenizer = KMeansPatchTokenizer(codes=4, patch=2, channels=3, fit_steps=1, seed=0)
    pixels = torch.randn(2, 3, 4, 4)
    codes = tokenizer(pixels, (2, 2))
    assert codes.shape == (2, 4) and int(tokenizer.steps) == 1
    patches = patchify(pixels, 2).flatten(0, 1)
    nearest = torch.cdist(tokenizer.centroids, patches).min(dim=1).values
    assert (nearest < torch.cdist(patches, patches).max()).all()  # centroids live among patches


def test_a_dvae_tokenizer_without_its_weights_is_refused_with_the_way_out() -> None:
    with pytest.raises(SpecError) as info:
        load_spec("cots-tiny", ["model.objectives.1.visual_tokenizer={type: dvae}"], REGISTRY)
    assert info.value.problems == [
        ("model.objectives.1.visual_tokenizer.path", "required field is missing; add it.")
    ]
    with pytest.raises(SpecError) as info:
        load_spec(
            "cots-tiny",
            ["model.objectives.1.visual_tokenizer={type: dvae, path: /no/such.safetensors}"],
            REGISTRY,
        )
    assert info.value.problems == [
        (
            "model.objectives.1.visual_tokenizer.path",
            "/no/such.safetensors is not a file; convert DALL-E's encoder.pkl with "
            "scripts/convert_dalle_encoder.py",
        )
    ]


def test_an_unknown_visual_tokenizer_names_the_registered_ones() -> None:
    with pytest.raises(SpecError) as info:
        load_spec("cots-tiny", ["model.objectives.1.visual_tokenizer={type: dvea}"], REGISTRY)
    assert info.value.problems == [
        (
            "model.objectives.1.visual_tokenizer.type",
            "unknown visual tokenizer 'dvea'. Did you mean 'dvae'? Available: dvae, kmeans, vq.",
        )
    ]


def test_config_errors() -> None:
    with pytest.raises(ValidationError, match="enable cmlm, cmvm or both"):
        MVLMSpec(cmlm=False, cmvm=False)
    with pytest.raises(SpecError, match="cmvm needs a vit component"):
        build(vision="frame_mean")
    assert isinstance(mvlm_of(build(vision="frame_mean", cmvm=False)), MVLM)
