"""Greedy and beam search on hand-made step functions, and the decoder-driven steps."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor

from modaloom.core.compose import FeatureCache, LoomModel, build_model
from modaloom.core.generation import (
    SearchOptions,
    SearchTokens,
    StepFn,
    beam_search,
    greedy_search,
    search,
    splice,
)
from modaloom.core.interfaces import Batch
from modaloom.core.plugins import load_plugins
from modaloom.modalities.text import SPECIAL_TOKENS, TextProcessor, train_wordpiece
from modaloom.objectives.lm import LanguageModeling
from modaloom.objectives.mgc import MGC
from modaloom.tests.tiny import TINY_BERT, TINY_VIT

PAD, CLS, SEP, MASK, A, B, C, D = range(8)
V = 8
TOKENS = SearchTokens(sep=SEP, pad=PAD, banned=(PAD, CLS, MASK))
Table = dict[int | None, dict[int, float]]


def markov_step(table: Table) -> StepFn:
    """A step whose next-token probabilities depend only on the last token (None = start);
    tokens without an entry end the sequence."""

    def step(generated: Tensor, origin: Tensor) -> Tensor:
        rows = []
        for sequence in generated.tolist():
            probs = table.get(sequence[-1] if sequence else None, {SEP: 1.0})
            rows.append([math.log(probs.get(token, 1e-9)) for token in range(V)])
        return torch.tensor(rows)

    return step


# Greedy takes A (0.5) then C (0.36) then [SEP]: p = 0.18. The best sequence is B [SEP]: 0.36.
TABLE: Table = {
    None: {A: 0.5, B: 0.4, C: 0.1},
    A: {C: 0.36, D: 0.34, SEP: 0.3},
    B: {SEP: 0.9, C: 0.1},
    C: {SEP: 1.0},
    D: {SEP: 1.0},
}


def test_beam_search_finds_the_best_sequence_that_greedy_misses() -> None:
    step = markov_step(TABLE)
    greedy = greedy_search(step, 1, TOKENS, max_length=5)
    assert greedy.tolist() == [[A, C, SEP]]
    for penalty in (0.0, 1.0):
        beams = beam_search(step, 1, TOKENS, 2, 5, 1, penalty)
        assert beams.tolist() == [[B, SEP]]


def random_step(batch: int, seed: int) -> StepFn:
    """Logits depending on the sample, the length and the last token, with [MASK] favoured."""
    generator = torch.Generator().manual_seed(seed)
    by_last = torch.randn(V, V, generator=generator) * 3
    by_sample = torch.randn(batch, V, generator=generator)
    by_length = torch.randn(8, V, generator=generator)

    def step(generated: Tensor, origin: Tensor) -> Tensor:
        last = generated[:, -1] if generated.shape[1] else torch.full_like(origin, CLS)
        logits = by_last[last] + by_sample[origin] + by_length[generated.shape[1]]
        logits[:, MASK] = 100.0  # banned: must never be chosen
        return logits

    return step


@pytest.mark.parametrize("seed", range(5))
def test_greedy_equals_beam_search_with_one_beam(seed: int) -> None:
    step = random_step(6, seed)
    for min_length in (0, 2):
        greedy = greedy_search(step, 6, TOKENS, 7, min_length)
        beam = beam_search(step, 6, TOKENS, 1, 7, min_length, 1.0)
        assert torch.equal(greedy, beam)
        assert not torch.isin(greedy, torch.tensor([CLS, MASK])).any()


def test_stops_at_sep_and_pads_after_it() -> None:
    table: Table = {None: {SEP: 0.6, A: 0.4}, A: {SEP: 0.9, B: 0.1}, B: {SEP: 1.0}}
    step = markov_step(table)  # [SEP] first is likeliest: the empty caption
    for beams in (1, 3):
        out = search(step, 2, TOKENS, SearchOptions(beams, 10, 0))
        assert out.tolist() == [[SEP], [SEP]]


def test_min_length_holds_sep_back() -> None:
    table: Table = {
        None: {SEP: 0.6, A: 0.4},
        A: {SEP: 0.9, B: 0.1},
        B: {SEP: 0.8, C: 0.2},
        C: {SEP: 1.0},
    }
    step = markov_step(table)
    for beams in (1, 3):
        one = search(step, 1, TOKENS, SearchOptions(beams, 10, 1))
        assert one.tolist() == [[A, SEP]]
        two = search(step, 1, TOKENS, SearchOptions(beams, 10, 2))
        assert two.tolist() == [[A, B, SEP]]


def test_max_length_cuts_without_sep_and_rows_are_padded() -> None:
    table: Table = {None: {A: 0.9, SEP: 0.1}, A: {A: 0.9, SEP: 0.1}}
    step = markov_step(table)
    for beams in (1, 2):
        out = search(step, 1, TOKENS, SearchOptions(beams, 3, 1))
        assert out.tolist() == [[A, A, A]]

    def mixed(generated: Tensor, origin: Tensor) -> Tensor:  # sample 0 stops at once
        logits = torch.full((len(origin), V), -10.0)
        logits[:, A] = 0.0
        logits[origin == 0, SEP] = 5.0
        return logits

    out = greedy_search(mixed, 2, TOKENS, max_length=3, min_length=0)
    assert out.tolist() == [[SEP, PAD, PAD], [A, A, A]]


def test_steps_see_only_unfinished_rows_with_their_origin() -> None:
    calls: list[list[int]] = []

    def step(generated: Tensor, origin: Tensor) -> Tensor:
        calls.append(origin.tolist())
        logits = torch.zeros(len(origin), V)
        logits[:, SEP] = torch.where(origin == 1, 10.0, -10.0)
        return logits

    greedy_search(step, 3, TOKENS, max_length=3, min_length=0)
    assert calls == [[0, 1, 2], [0, 2], [0, 2]]
    calls.clear()
    beam_search(step, 3, TOKENS, 2, 2, 0)
    assert calls[0] == [0, 0, 1, 1, 2, 2]  # expanded per beam


def test_splice_places_prefix_generated_and_tail() -> None:
    prefix = torch.tensor([[CLS, 10, 11, SEP], [CLS, 12, SEP, PAD]])
    ids, mask, read = splice(prefix, torch.tensor([4, 3]), torch.tensor([[A], [B]]), MASK, PAD)
    assert ids.tolist() == [[CLS, 10, 11, SEP, A, MASK], [CLS, 12, SEP, B, MASK, PAD]]
    assert mask.tolist() == [[1] * 6, [1] * 5 + [0]]
    assert read.tolist() == [5, 4]
    ids, _, read = splice(prefix[:, :1], torch.tensor([1, 1]), torch.zeros(2, 0).long(), None, 0)
    assert ids.tolist() == [[CLS], [CLS]] and read.tolist() == [0, 0]


# ------------------------------------------------------------------------------ LM and MGC

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
