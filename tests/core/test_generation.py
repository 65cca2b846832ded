"""Greedy and beam search (`modaloom.core.generation`) on hand-made step functions."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from modaloom.core.generation import (
    SearchOptions,
    SearchTokens,
    StepFn,
    beam_search,
    greedy_search,
    search,
    splice,
)

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
