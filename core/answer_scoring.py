"""Scoring given answers by likelihood: answer-list QA (OmniVL/BLIP rank a fixed candidate list
instead of generating freely).

`sequence_log_probs` reads a `modaloom.core.generation.StepFn` token by token exactly as
`modaloom.core.generation.search` does (banned ids excluded from the softmax), so a candidate's
score is the log-probability greedy or beam search would assign to it (with ``min_length=1``,
their default: an empty answer scores -inf). `AnswerScorer` is what
an objective (``lm``, ``mgc``) offers the ``qa`` evaluator for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor

from modaloom.core.generation import SearchTokens, StepFn, allowed_log_probs

if TYPE_CHECKING:
    from modaloom.core.compose import FeatureCache


@runtime_checkable
class AnswerScorer(Protocol):
    """An objective that scores candidate answers to questions about samples."""

    def score_answers(
        self,
        features: FeatureCache,
        questions: Tensor,
        question_mask: Tensor,
        rows: Tensor,
        answers: Tensor,
        answer_mask: Tensor,
        condition: str | Sequence[str] | None = None,
    ) -> Tensor:
        """(Q, C) summed log-probabilities of each candidate answer to each question.

        Args:
            features: the batch's feature cache.
            questions: (Q, Lq) ``[CLS] question [SEP]`` ids, right-padded.
            question_mask: (Q, Lq) 1 for real tokens.
            rows: (Q,) the sample each question is about.
            answers: (C, La) candidate answer ids ending with [SEP], right-padded.
            answer_mask: (C, La) 1 for real tokens.
            condition: components to condition on (default: the objective's).
        """


def sequence_log_probs(
    step: StepFn, origin: Tensor, continuations: Tensor, mask: Tensor, tokens: SearchTokens
) -> Tensor:
    """Summed log-probability of each row's continuation under ``step``, (R,).

    Args:
        step: the `StepFn` of a decoder and its per-sample prefixes.
        origin: (R,) the sample each row continues.
        continuations: (R, L) token ids to score (e.g. an answer and its [SEP]), right-padded.
        mask: (R, L) 1 for the tokens to score (a prefix of each row).
        tokens: the special ids (`modaloom.core.generation.allowed_log_probs`).
    """
    total = torch.zeros(continuations.shape[0], device=continuations.device)
    for position in range(continuations.shape[1]):
        live = mask[:, position].bool()
        if not bool(live.any()):
            break
        logits = step(continuations[live, :position], origin[live])
        log_probs = allowed_log_probs(logits, tokens, position, min_length=1)
        total[live] += log_probs.gather(1, continuations[live, position : position + 1])[:, 0]
    return total


def pad_answers(rows: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    """Token lists (each ending with [SEP]) as ``(ids (C, L), mask (C, L))``, right-padded."""
    width = max([1, *map(len, rows)])
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[index, : len(row)] = 1
    return ids, mask
