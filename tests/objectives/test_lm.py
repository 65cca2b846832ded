"""OmniVL's teacher-forced captioning LM (SPEC §B5) on a tiny BERT decoder."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.testing import assert_close

from modaloom.core.compose import FeatureCache
from modaloom.objectives import lm as lm_module
from modaloom.objectives.lm import LanguageModeling
from modaloom.tests.objectives.captioning_models import PROCESSOR, B, batch, build


def smoothed_ce(logits: Tensor, labels: Tensor, eps: float) -> Tensor:
    """Label-smoothed token cross-entropy, transcribed: mean over labels != -100."""
    logp = F.log_softmax(logits, dim=-1)
    keep = labels != -100
    nll = -logp[keep].gather(1, labels[keep][:, None]).squeeze(1)
    return ((1 - eps) * nll + eps * -logp[keep].mean(dim=1)).mean()


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


def test_lm_on_qa_pairs_puts_loss_on_answer_tokens_only() -> None:
    spec = {"type": "lm", "decoder": "decoder", "condition": "image", "prompt": "a picture of"}
    model = build({**spec, "qa": True}, ("text", "decoder", "image"))
    lm = model.objectives[0]
    assert isinstance(lm, LanguageModeling) and lm.answers_questions
    pairs = [{"question": "what is it", "answer": c} for c in ("a dog", "two cats", "a bird", "x")]
    items = [PROCESSOR.process(p, key="k", train=False, rng=random.Random(0)) for p in pairs]
    data = batch("image")
    data["text"] = PROCESSOR.collate(items)
    captured: list[Tensor] = []
    original = lm_module.label_smoothed_lm_loss

    def spy(logits: Tensor, labels: Tensor, smoothing: float = 0.0) -> Tensor:
        captured.append(labels)
        return original(logits, labels, smoothing)

    lm_module.label_smoothed_lm_loss = spy  # type: ignore[assignment]
    try:
        lm(FeatureCache(model, data))
    finally:
        lm_module.label_smoothed_lm_loss = original  # type: ignore[assignment]
    text, prompt = data["text"], lm.prompt_ids.numel()
    for row, start in enumerate(text["answer_start"].tolist()):
        kept = (captured[0][row] != -100).nonzero().flatten() + 1  # labels are shifted by one
        length = int(text["attention_mask"][row].sum())
        assert kept.tolist() == list(range(start + prompt, length + prompt))
        assert torch.equal(
            captured[0][row, kept - 1], text["input_ids"][row, start:length]
        )  # the answer and its [SEP]
