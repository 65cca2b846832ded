"""VALOR's MGC (SPEC §B6), with its QA variant, on a tiny BERT decoder."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.testing import assert_close

from modaloom.core.compose import FeatureCache, LoomModel
from modaloom.core.interfaces import ConditionLayout
from modaloom.modalities.text_decoder import BertTextDecoder
from modaloom.objectives.masking import mask_tokens_for_mlm
from modaloom.objectives.mgc import MGC
from modaloom.tests.objectives.captioning_models import GROUPS, PROCESSOR, batch, build


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


@pytest.mark.parametrize("combine", ["sequential", "parallel"])
def test_mgc_cross_attention_variants_reach_the_decoder_and_generation(
    combine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """VALOR Tab. 11: the AV group's modalities attended one at a time, in training and in
    generation; groups of one modality and the default (concat) pass no layout."""
    model = mgc_model(
        cross_attention=combine, groups=[["text", "vision"], ["text", ["audio", "vision"]]]
    )
    calls = record(model, monkeypatch)
    data = batch("video", "audio")
    out = model(data)
    assert torch.isfinite(out.loss)
    features = FeatureCache(model, data)
    audio, vision = (features[name].sequence.shape[1] for name in ("audio", "vision"))
    layouts = [call["args"][6] for call in calls]
    assert layouts == [None, ConditionLayout((audio, vision), combine)]  # a-v for sequential
    out.loss.backward()
    mgc = model.objectives[0]
    assert isinstance(mgc, MGC)
    calls.clear()
    with torch.no_grad():
        ids = mgc.generate(FeatureCache(model, data), ["audio", "vision"], max_length=3)
    assert ids.shape[0] == data["text"]["input_ids"].shape[0]
    assert calls and all(c["args"][6] == ConditionLayout((audio, vision), combine) for c in calls)


def test_mgc_default_cross_attention_is_concat(monkeypatch: pytest.MonkeyPatch) -> None:
    model = mgc_model()
    calls = record(model, monkeypatch)
    model(batch("video", "audio"))
    assert [call["args"][6] for call in calls] == [None, None, None]
