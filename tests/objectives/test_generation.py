"""Decoder-driven generation steps of the LM and MGC objectives."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor

from modaloom.core.compose import FeatureCache, LoomModel, build_model
from modaloom.core.interfaces import Batch
from modaloom.core.plugins import load_plugins
from modaloom.modalities.text import SPECIAL_TOKENS, TextProcessor, train_wordpiece
from modaloom.objectives.lm import LanguageModeling
from modaloom.objectives.mgc import MGC
from modaloom.tests.tiny import TINY_BERT, TINY_VIT

REGISTRY = load_plugins(entry_points=False)
CAPTIONS = ["a red square", "a blue circle on the left", "two green triangles", "a yellow circle"]
PROCESSOR = TextProcessor(train_wordpiece(CAPTIONS * 4, vocab_size=120), max_length=16)
N = len(CAPTIONS)
COMPONENTS: dict[str, dict[str, Any]] = {
    "text": {"type": "bert", "config": TINY_BERT},
    "decoder": {"type": "bert_decoder", "share_with": "text"},
    "image": {"type": "vit", "config": TINY_VIT},
}
LM_SPEC = {"type": "lm", "decoder": "decoder", "condition": "image", "prompt": "a picture of"}
MGC_SPEC = {"type": "mgc", "groups": [["text", "image"]]}


def build(objective: dict[str, Any]) -> tuple[LoomModel, FeatureCache]:
    torch.manual_seed(0)
    specs = {}
    for name, fields in COMPONENTS.items():
        kind = "decoder" if fields["type"] == "bert_decoder" else "encoder"
        config = REGISTRY.get(kind, fields["type"]).config
        assert config is not None
        specs[name] = config.model_validate(fields)
    objective_config = REGISTRY.get("objective", objective["type"]).config
    assert objective_config is not None
    model_spec = SimpleNamespace(
        components=specs, objectives=[objective_config.model_validate(objective)]
    )
    model = build_model(model_spec, REGISTRY, {"text": PROCESSOR}).eval()
    rng = random.Random(0)
    items = [PROCESSOR.process(c, key="k", train=False, rng=rng) for c in CAPTIONS]
    pixels = torch.randn(N, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    batch: Batch = {
        "text": PROCESSOR.collate(list(items)),
        "image": {"pixel_values": pixels, "present": torch.ones(N, dtype=torch.bool)},
    }
    return model, FeatureCache(model, batch)


def questions() -> tuple[Tensor, Tensor]:
    """``[CLS] question [SEP]`` rows of different lengths, right-padded."""
    texts = ["a red", "two green triangles on the left", "circle", "a blue square"]
    ids = [PROCESSOR.tokenizer(t)["input_ids"] for t in texts]
    batch = PROCESSOR.collate([{"input_ids": torch.tensor(i)} for i in ids])
    return batch["input_ids"], batch["attention_mask"]


def banned_argmax(logits: Tensor) -> Tensor:
    """Argmax over the tokens generation may emit at the first position ([SEP] held back)."""
    tokens = (PROCESSOR.pad_id, *(PROCESSOR.token_id(t) for t in SPECIAL_TOKENS[2:]))
    logits = logits.clone()
    logits[:, list(tokens)] = float("-inf")
    return logits.argmax(dim=-1)


def test_lm_first_token_reads_the_last_position_after_dec_and_prompt() -> None:
    model, features = build(LM_SPEC)
    lm = model.objectives[0]
    assert isinstance(lm, LanguageModeling)
    dec = PROCESSOR.token_id("[DEC]")
    ids = torch.tensor([[dec, *lm.prompt_ids.tolist()]]).expand(N, -1)
    decoder = model.components["decoder"]
    logits = decoder(ids, torch.ones_like(ids), features["image"].sequence, None, "causal").logits
    first = lm.generate(features, max_length=1)
    assert torch.equal(first[:, 0], banned_argmax(logits[:, -1]))


def test_mgc_first_token_reads_the_mask_after_cls_with_the_training_condition() -> None:
    model, features = build(MGC_SPEC)
    mgc = model.objectives[0]
    assert isinstance(mgc, MGC)
    ids = torch.tensor([[PROCESSOR.token_id("[CLS]"), PROCESSOR.token_id("[MASK]")]] * N)
    condition = mgc.condition.adapters["image"](features["image"].sequence)
    decoder = model.components["decoder"]
    hidden = decoder.hidden_states(ids, torch.ones_like(ids), condition, None, "causal")
    first = mgc.generate(features, ["image"], max_length=1)
    assert torch.equal(first[:, 0], banned_argmax(decoder.lm_logits(hidden[:, -1])))


def test_mgc_answer_reads_the_mask_after_the_question_with_a_prefix_mask() -> None:
    model, features = build({**MGC_SPEC, "qa": True})
    mgc = model.objectives[0]
    assert isinstance(mgc, MGC)
    ids, mask = questions()
    rows = torch.tensor([3, 0, 0, 2])
    answers = mgc.answer(features, ids, mask, rows, max_length=1)
    decoder = model.components["decoder"]
    condition = mgc.condition.adapters["image"](features["image"].sequence)
    for q in range(len(rows)):
        length = int(mask[q].sum())
        row = torch.cat([ids[q, :length], torch.tensor([PROCESSOR.token_id("[MASK]")])])[None]
        hidden = decoder.hidden_states(
            row,
            torch.ones_like(row),
            condition[rows[q]][None],
            None,
            "prefix",
            torch.tensor([length]),
        )
        assert answers[q, 0] == banned_argmax(decoder.lm_logits(hidden[:, -1]))[0]


@pytest.mark.parametrize("spec", [LM_SPEC, MGC_SPEC], ids=["lm", "mgc"])
def test_batched_generation_equals_one_sample_at_a_time(spec: dict[str, Any]) -> None:
    model, features = build(spec)
    objective = model.objectives[0]
    assert isinstance(objective, LanguageModeling | MGC)
    ids, mask = questions()
    for beams in (1, 3):
        together = objective.generate(features, num_beams=beams, max_length=5, min_length=2)
        answers = objective.answer(features, ids, mask, torch.arange(N), max_length=4)
        for i in range(N):
            rows = torch.tensor([i])
            alone = objective.generate(
                features, rows=rows, num_beams=beams, max_length=5, min_length=2
            )
            assert together[i].tolist()[: alone.shape[1]] == alone[0].tolist()
            answer = objective.answer(features, ids[i : i + 1], mask[i : i + 1], rows, max_length=4)
            assert answers[i].tolist()[: answer.shape[1]] == answer[0].tolist()
    with pytest.raises(ValueError, match=r"cannot condition on \['audio'\]"):
        objective.generate(features, ["audio"])
