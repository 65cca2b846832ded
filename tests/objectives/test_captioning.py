"""LM captioning (SPEC §B5) and VALOR's MGC (SPEC §B6) on tiny BERT decoders."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.testing import assert_close

from modaloom.core.compose import FeatureCache, LoomModel, build_model
from modaloom.core.interfaces import Batch
from modaloom.core.plugins import load_plugins
from modaloom.modalities.text import TextProcessor, train_wordpiece
from modaloom.modalities.text_decoder import BertTextDecoder
from modaloom.objectives.captioning import MGC, LanguageModeling
from modaloom.objectives.functional import mask_tokens_for_mlm
from modaloom.tests.tiny import TINY_AST, TINY_BERT, TINY_VIT

REGISTRY = load_plugins(entry_points=False)
CAPTIONS = ["a red square", "a blue circle on the left", "two green triangles", "a yellow circle"]
PROCESSOR = TextProcessor(train_wordpiece(CAPTIONS * 4, vocab_size=120), max_length=16)
B = len(CAPTIONS)
GROUPS = [["text", "vision"], ["text", "audio"], ["text", ["vision", "audio"]]]
COMPONENTS: dict[str, Any] = {
    "text": {"type": "bert", "config": TINY_BERT},
    "decoder": {"type": "bert_decoder", "share_with": "text"},
    "image": {"type": "vit", "config": TINY_VIT},
    "vision": {"type": "timesformer", "config": TINY_VIT, "num_frames": 2},
    "audio": {"type": "ast", "config": TINY_AST},
}


def build(objective: dict[str, Any], components: tuple[str, ...]) -> LoomModel:
    torch.manual_seed(0)
    specs = {}
    for name in components:
        fields = COMPONENTS[name]
        kind = "decoder" if fields["type"] == "bert_decoder" else "encoder"
        config = REGISTRY.get(kind, fields["type"]).config
        assert config is not None
        specs[name] = config.model_validate(fields)
    objective_config = REGISTRY.get("objective", objective["type"]).config
    assert objective_config is not None
    model_spec = SimpleNamespace(
        components=specs, objectives=[objective_config.model_validate(objective)]
    )
    return build_model(model_spec, REGISTRY, {"text": PROCESSOR}).eval()


def batch(*fields: str, missing_audio: int | None = None) -> Batch:
    g = torch.Generator().manual_seed(0)
    items = [PROCESSOR.process(c, key="k", train=False, rng=random.Random(0)) for c in CAPTIONS]
    out: Batch = {"text": PROCESSOR.collate(list(items))}
    ones = torch.ones(B, dtype=torch.bool)
    if "image" in fields:
        out["image"] = {"pixel_values": torch.randn(B, 3, 32, 32, generator=g), "present": ones}
    if "video" in fields:
        video = torch.randn(B, 2, 3, 32, 32, generator=g)
        out["video"] = {"pixel_values": video, "present": ones.clone()}
    if "audio" in fields:
        present = ones.clone()
        if missing_audio is not None:
            present[missing_audio] = False
        spectrogram = torch.randn(B, 1, 64, 128, generator=g)
        out["audio"] = {"spectrogram": spectrogram, "present": present}
    return out


def record(model: LoomModel, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record every call of the decoder's ``hidden_states`` (``forward`` goes through it)."""
    decoder = model.components["decoder"]
    assert isinstance(decoder, BertTextDecoder)
    calls: list[dict[str, Any]] = []
    original = decoder.hidden_states

    def recording(*args: Any, **kwargs: Any) -> Tensor:
        calls.append({"args": args, "kwargs": kwargs})
        return original(*args, **kwargs)

    monkeypatch.setattr(decoder, "hidden_states", recording)
    return calls


def smoothed_ce(logits: Tensor, labels: Tensor, eps: float) -> Tensor:
    """Label-smoothed token cross-entropy, transcribed: mean over labels != -100."""
    logp = F.log_softmax(logits, dim=-1)
    keep = labels != -100
    nll = -logp[keep].gather(1, labels[keep][:, None]).squeeze(1)
    return ((1 - eps) * nll + eps * -logp[keep].mean(dim=1)).mean()


# ------------------------------------------------------------------------------ LM


def test_lm_is_teacher_forced_with_dec_bos_prompt_excluded_and_pads_ignored() -> None:
    model = build(
        {"type": "lm", "decoder": "decoder", "condition": "image", "prompt": "a picture of"},
        ("text", "decoder", "image"),
    )
    lm = model.objectives[0]
    assert isinstance(lm, LanguageModeling)
    data = batch("image")
    features = FeatureCache(model, data)
    out = lm(features)
    prompt = PROCESSOR.tokenizer("a picture of", add_special_tokens=False)["input_ids"]
    assert lm.prompt_ids.tolist() == prompt and len(prompt) > 0
    text = data["text"]
    ids, mask = text["input_ids"].clone(), text["attention_mask"]
    ids[:, 0] = PROCESSOR.token_id("[DEC]")
    p = torch.tensor(prompt).expand(B, -1)
    ids = torch.cat([ids[:, :1], p, ids[:, 1:]], 1)
    mask = torch.cat([mask[:, :1], torch.ones_like(p), mask[:, 1:]], 1)
    decoder = model.components["decoder"]
    logits = decoder(ids, mask, features["image"].sequence, None, mode="causal").logits
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    targets[:, : len(prompt)] = -100  # the prompt is never a target
    assert_close(out["lm_loss"], smoothed_ce(logits[:, :-1], targets, 0.1))
    assert (text["attention_mask"] == 0).any()  # the batch does hold padding


def test_lm_drops_samples_without_the_condition() -> None:
    spec = {"type": "lm", "decoder": "decoder", "condition": "image", "label_smoothing": 0.0}
    model = build(spec, ("text", "decoder", "image"))
    data = batch("image")
    data["image"]["present"] = torch.tensor([True, False, True, True])
    full = model(data).terms["lm/lm_loss"]
    sub = batch("image")
    for field in ("text", "image"):
        sub[field] = {k: v[[0, 2, 3]] for k, v in sub[field].items()}
    sub_loss = model(sub).terms["lm/lm_loss"]
    assert_close(full, sub_loss)


# ------------------------------------------------------------------------------ MGC


def mgc_model(**fields: Any) -> LoomModel:
    spec = {"type": "mgc", "groups": GROUPS, **fields}
    return build(spec, ("text", "decoder", "vision", "audio"))


def test_mgc_masks_caption_tokens_and_sep_never_cls_or_pad(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = mgc_model(mask_prob=1.0, groups=[["text", "vision"]])
    calls = record(model, monkeypatch)
    data = batch("video")
    model(data)
    masked = calls[0]["args"][0]
    ids, mask = data["text"]["input_ids"], data["text"]["attention_mask"].bool()
    mask_id, sep = PROCESSOR.token_id("[MASK]"), PROCESSOR.token_id("[SEP]")
    assert torch.equal(masked[:, 0], ids[:, 0])  # [CLS] kept
    assert (masked[mask][ids[mask] == sep] == mask_id).all()  # [SEP] masked
    assert (masked[~mask] == PROCESSOR.pad_id).all()  # padding kept
    assert calls[0]["args"][4] == "causal"


def test_mgc_loss_is_masked_token_ce_under_causal_cross_attention() -> None:
    model = mgc_model(groups=[["text", "vision"]])
    mgc = model.objectives[0]
    assert isinstance(mgc, MGC)
    data = batch("video")
    features = FeatureCache(model, data)
    torch.manual_seed(3)
    out = mgc(features)
    torch.manual_seed(3)
    tokens = mgc.tokens
    text = data["text"]
    masked, labels = mask_tokens_for_mlm(
        text["input_ids"],
        text["attention_mask"],
        tokens.mask,
        tokens.vocab_size,
        0.6,
        tokens.special,
        maskable_special_ids=(tokens.sep,),
    )
    condition = mgc.condition.adapters["vision"](features["vision"].sequence)
    decoder = model.components["decoder"]
    hidden = decoder.hidden_states(masked, text["attention_mask"], condition, None, "causal")
    chosen = labels != -100
    assert chosen.sum(dim=1).min() >= 1  # at least one masked token per caption
    expected = F.cross_entropy(decoder.lm_logits(hidden[chosen]), labels[chosen])
    assert_close(out["mgc_loss"], expected)


def test_mgc_groups_drop_samples_without_audio_and_average(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = mgc_model()
    calls = record(model, monkeypatch)
    out = model.objectives[0](FeatureCache(model, batch("video", "audio", missing_audio=1)))
    sizes = [call["args"][0].shape[0] for call in calls]
    assert sizes == [4, 3, 3]
    conditions = [call["args"][2].shape[1] for call in calls]
    assert conditions[2] == conditions[0] + conditions[1]  # T-AV concatenates V and A
    groups = [out["text-vision"], out["text-audio"], out["text-vision+audio"]]
    assert_close(out["mgc_loss"], torch.stack(groups).mean())


def test_mgc_without_audio_in_the_batch_uses_the_vision_group_only() -> None:
    model = mgc_model()
    out = model.objectives[0](FeatureCache(model, batch("video")))
    assert set(out) == {"text-vision", "mgc_loss"}
    assert_close(out["mgc_loss"], out["text-vision"])


def test_mgc_qa_masks_only_the_answer_with_a_prefix_mask(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = mgc_model(qa=True, mask_prob=0.5, groups=[["text", "vision"]])
    calls = record(model, monkeypatch)
    data = batch("video")
    answer_start = torch.tensor([2, 3, 2, 1])
    data["qa"] = {"answer_start": answer_start}
    model(data)
    masked, mode, prefix = calls[0]["args"][0], calls[0]["args"][4], calls[0]["args"][5]
    changed = masked != data["text"]["input_ids"]
    positions = torch.arange(masked.shape[1])[None]
    assert mode == "prefix" and torch.equal(prefix, answer_start)
    assert not changed[positions < answer_start[:, None]].any()
    assert changed.any(dim=1).all()
    with pytest.raises(KeyError, match="answer_start"):
        model(batch("video"))
