"""Teacher-forced captioning LM of OmniVL/BLIP (SPEC §B5), registered as ``lm``.

The objective runs a ``bert_decoder`` component (a `Decoder`) with cross-attention to a
condition: the concatenated token sequences of one or more components, each mapped to the
decoder's ``condition_dim`` by a per-modality linear layer (`ConditionEncoder`, shared with
``mgc`` in `modaloom.objectives.conditioning`).

[DEC] replaces [CLS] as BOS; causal self-attention; ``logits[:, t]`` predicts token ``t + 1``;
padding, the BOS and the optional ``prompt`` are ignored (-100); label smoothing 0.1 as in BLIP
(`label_smoothed_lm_loss`). The prompt ("a picture of") is inserted by the objective after
[DEC], so the data stays prompt-free; evaluators read ``prompt_ids`` to decode with the same
prefix.

Inference (`modaloom.core.generation`): ``generate`` captions with greedy or beam search,
building the condition with the same `ConditionEncoder` as training, from rows
``[DEC] prompt w_1..w_t`` (the last position is read). ``answer`` decodes an answer greedily
after ``[DEC] prompt question [SEP] a_1..a_t`` (causal), which is what LM training on QA pair
encodings teaches. Both return generated ids only (see `generation.search`). ``score_answers``
reads given candidate answers the way ``answer`` decodes (answer-list QA).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from modaloom.core.compose import BuildContext, FeatureCache
from modaloom.core.features import present_rows
from modaloom.core.generation import SearchOptions
from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import Objective, TextCodec
from modaloom.core.registry import Registry
from modaloom.core.spec_models import ObjectiveSpec, Reference, component_references
from modaloom.objectives.conditioning import (
    ConditionEncoder,
    TextTokens,
    check_decoder,
    condition_dims,
    decode,
    decoder_of,
    score_answers,
    text_tokens,
)
from modaloom.objectives.losses import zero_loss_like

__all__ = ["LMSpec", "LanguageModeling", "label_smoothed_lm_loss", "make_lm"]


def label_smoothed_lm_loss(logits: Tensor, labels: Tensor, smoothing: float = 0.0) -> Tensor:
    """Token cross-entropy with label smoothing, ignoring -100 labels (SPEC B5, B6).

    No shift is applied: ``logits[:, t]`` must already predict ``labels[:, t]``.

    Args:
        logits: (B, L, V).
        labels: (B, L) target ids, -100 where ignored (padding, prompt, unmasked tokens).
        smoothing: label-smoothing epsilon in [0, 1).

    Returns:
        Scalar mean over the non-ignored tokens; a zero with a graph when there are none.
    """
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1)
    total = F.cross_entropy(
        flat_logits, flat_labels, ignore_index=-100, label_smoothing=smoothing, reduction="sum"
    )
    return total / (flat_labels != -100).sum().clamp(min=1)


class LMSpec(ObjectiveSpec):
    """Teacher-forced captioning loss with [DEC] as BOS (OmniVL/BLIP, SPEC §B5)."""

    type: Literal["lm"] = "lm"
    decoder: str = "gen"
    """The generation decoder component (a ``bert_decoder``)."""
    condition: str | list[str] = "vision"
    """Component(s) whose token sequences the decoder cross-attends to (concatenated)."""
    prompt: str | None = None
    """Text inserted after [DEC] and excluded from the loss (BLIP captioning: "a picture of")."""
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    """Label-smoothing epsilon (BLIP: 0.1)."""
    qa: bool = False
    """Trained on QA pairs (``{"question", "answer"}`` text values), so the ``qa`` evaluator may
    use it to answer. Whatever this says, a QA pair's question is never a target: the loss is on
    its answer tokens only (the text batch's ``answer_start``)."""

    def references(self) -> list[Reference]:
        """``decoder`` names a decoder component, ``condition`` components."""
        return [
            Reference("decoder", self.decoder, "decoder"),
            *component_references("condition", self.condition),
        ]


class LanguageModeling(Objective):
    """OmniVL's LM loss. Returns ``{"lm_loss"}``.

    Args:
        config: the spec.
        condition: maps the condition components to the decoder's width.
        tokens: special ids ([DEC]).
        prompt_ids: (P,) token ids of the prompt (no special tokens), possibly empty.
    """

    prompt_ids: Tensor

    def __init__(
        self,
        config: LMSpec,
        condition: ConditionEncoder,
        tokens: TextTokens,
        prompt_ids: Tensor,
    ) -> None:
        super().__init__()
        self.config = config
        self.condition = condition
        self.tokens = tokens
        self.names = [config.condition] if isinstance(config.condition, str) else config.condition
        self.register_buffer("prompt_ids", prompt_ids.long(), persistent=False)

    @property
    def answers_questions(self) -> bool:
        """Whether it is trained on QA pairs (``qa: true``)."""
        return self.config.qa

    @property
    def default_condition(self) -> list[str]:
        """The components generation conditions on by default: ``condition``."""
        return list(self.names)

    def bos_prefix(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Replace the first token ([CLS]) of ids and mask (n, L) by ``[DEC] prompt``.

        Returns:
            ``(ids, mask)``, each (n, L + P).
        """
        prompt = self.prompt_ids.to(ids.device).expand(ids.shape[0], -1)
        head = torch.cat([torch.full_like(ids[:, :1], self.tokens.dec), prompt], dim=1)
        ids = torch.cat([head, ids[:, 1:]], dim=1)
        return ids, torch.cat([torch.ones_like(head), mask[:, 1:]], dim=1)

    def mask_questions(self, labels: Tensor, answer_start: Tensor | None, rows: Tensor) -> Tensor:
        """Ignore the question of QA pair rows: labels (b, L + P) before the answer become -100.

        Args:
            labels: (b, L + P) targets of the ``[DEC] prompt ...`` rows.
            answer_start: (B,) first answer token index in the unprefixed ids, -1 for captions
                (the text processor's), or None when the batch holds no QA pair.
            rows: (b,) the samples ``labels`` belong to.
        """
        if answer_start is None:
            return labels
        start = torch.as_tensor(answer_start).to(labels.device)[rows]  # (b,)
        start = torch.where(start >= 0, start + self.prompt_ids.numel(), 0)
        positions = torch.arange(labels.shape[1], device=labels.device)
        return labels.masked_fill(positions[None, :] < start[:, None], -100)

    def forward(self, features: FeatureCache) -> dict[str, Tensor]:
        cfg = self.config
        decoder = decoder_of(features, cfg.decoder)
        text = features.batch[features.model.input_field(cfg.decoder, features.batch)]
        rows = present_rows(features, [cfg.decoder, *self.names])
        if rows.numel() == 0:
            return {"lm_loss": zero_loss_like(*self.parameters(), *decoder.parameters())}
        ids, mask = self.bos_prefix(text["input_ids"][rows], text["attention_mask"][rows])
        skip = 1 + self.prompt_ids.numel()
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :skip] = -100
        labels = self.mask_questions(labels, text.get("answer_start"), rows)
        condition, condition_mask = self.condition(features, self.names, rows)
        logits = decoder(ids, mask, condition, condition_mask, mode="causal").logits
        loss = label_smoothed_lm_loss(logits[:, :-1], labels[:, 1:], cfg.label_smoothing)
        return {"lm_loss": loss}

    def generate(
        self,
        features: FeatureCache,
        condition: str | Sequence[str] | None = None,
        *,
        rows: Tensor | None = None,
        num_beams: int = 1,
        max_length: int = 20,
        min_length: int = 1,
        length_penalty: float = 1.0,
    ) -> Tensor:
        """Caption samples: decode after ``[DEC] prompt`` with causal attention.

        Args:
            features: the batch's feature cache.
            condition: components to condition on (default: `default_condition`).
            rows: (n,) samples to caption (default: all).
            num_beams: 1 = greedy search.
            max_length: generated tokens at most, [SEP] included.
            min_length: tokens before [SEP] at least.
            length_penalty: beam scores are ``sum log p / length ** length_penalty``.

        Returns:
            (n, T) generated ids without [DEC] or prompt, ending with [SEP] where the caption
            stopped, right-padded with [PAD] (`TextCodec.decode` turns them into text).
        """
        start = torch.full((1, 1), self.tokens.cls, dtype=torch.long, device=self.prompt_ids.device)
        prefix, prefix_mask = self.bos_prefix(start, torch.ones_like(start))
        options = SearchOptions(num_beams, max_length, min_length, length_penalty)
        return decode(self, features, condition, rows, prefix, prefix_mask, None, "causal", options)

    def answer(
        self,
        features: FeatureCache,
        questions: Tensor,
        question_mask: Tensor,
        rows: Tensor,
        condition: str | Sequence[str] | None = None,
        *,
        max_length: int = 5,
    ) -> Tensor:
        """Greedy answers after ``[DEC] prompt question [SEP]`` (causal).

        Args:
            features: the batch's feature cache.
            questions: (Q, Lq) ``[CLS] question [SEP]`` ids, right-padded.
            question_mask: (Q, Lq) 1 for real tokens.
            rows: (Q,) the sample each question is about.
            condition: components to condition on (default: `default_condition`).
            max_length: answer tokens at most, [SEP] included.

        Returns:
            (Q, T) answer ids, as `generate` returns them.
        """
        prefix, prefix_mask = self.bos_prefix(questions, question_mask)
        options = SearchOptions(max_length=max_length)
        return decode(self, features, condition, rows, prefix, prefix_mask, None, "causal", options)

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
        """(Q, C) log-likelihood of each candidate answer after ``[DEC] prompt question [SEP]``
        (causal), as `answer` decodes (`modaloom.core.answer_scoring.AnswerScorer`)."""
        prefix = self.bos_prefix(questions, question_mask)
        scored = (answers, answer_mask)
        return score_answers(self, features, condition, rows, prefix, scored, None, "causal")


def make_lm(config: LMSpec, ctx: BuildContext) -> LanguageModeling:
    """Registry factory of ``lm``."""
    where = "model.objectives.lm"
    decoder = check_decoder(ctx, config.decoder, where)
    names = [config.condition] if isinstance(config.condition, str) else config.condition
    condition = ConditionEncoder(condition_dims(ctx, names), decoder.condition_dim, False)
    tokens = text_tokens(ctx, where)
    prompt_ids = torch.zeros(0, dtype=torch.long)
    if config.prompt:
        processor = ctx.processors["text"]
        assert isinstance(processor, TextCodec)
        encoded = processor.encode_words(config.prompt)
        prompt_ids = torch.tensor(encoded, dtype=torch.long)
    return LanguageModeling(config, condition, tokens, prompt_ids)


@hookimpl
def modaloom_register_objectives(registry: Registry) -> None:
    """Register ``lm``."""
    registry.add_objective(
        make_lm,
        LMSpec,
        description="teacher-forced captioning LM with [DEC] BOS and label smoothing (OmniVL)",
    )
