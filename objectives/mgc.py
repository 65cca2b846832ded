"""VALOR's masked generation over modality groups (SPEC §B6), registered as ``mgc``.

Like ``lm`` (`modaloom.objectives.lm`) it runs a ``bert_decoder`` component with cross-attention
to the per-modality mapped token sequences of a group (`ConditionEncoder`, with a linear map for
every modality as in VALOR).

Per group, 60% of the caption tokens (never [CLS]/[PAD], [SEP] included, at least one per
caption) become [MASK] (`mask_tokens_for_mlm`); causal self-attention; the LM head predicts the
originals at the masked positions only (``P(T_m | T_<m, F_x)``: a masked position sees itself as
[MASK]). A group drops the samples lacking one of its modalities, is left out when no sample has
them all, and the loss is the mean over the groups present. Masks are drawn independently per
group [I].

QA variant (``qa: true``, VALOR): ``batch["text"]`` holds question and answer, the pair
encoding ``[CLS] question [SEP] answer [SEP]`` that the text processor makes of a
``{"question", "answer"}`` value, and ``batch[qa_field]["answer_start"]`` (B,) is the index of
the first answer token; with ``qa_field: text`` it is the text batch's own ``answer_start``
(-1 for a plain caption: such samples are left out of the QA loss). Only answer tokens (the
final [SEP] included) are masked, with probability ``mask_prob`` and at least one; attention
is bidirectional over the question prefix and causal over the answer (``mode="prefix"``).

Inference (`modaloom.core.generation`): ``generate`` captions from rows
``[CLS] w_1..w_t [MASK]`` (the [MASK] is read, causal mask); ``answer`` feeds
``[CLS] question [SEP] a_1..a_t [MASK]`` with the prefix mask (VALOR, no vocabulary
restriction). Both return generated ids only (see `generation.search`). ``score_answers``
reads given candidate answers the way ``answer`` decodes (answer-list QA).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from modaloom.core.compose import BuildContext, FeatureCache
from modaloom.core.features import Group, default_groups, group_members, group_name, present_rows
from modaloom.core.generation import SearchOptions
from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import Objective
from modaloom.core.registry import Registry
from modaloom.core.spec_models import ObjectiveSpec, Reference, group_list_references
from modaloom.objectives.conditioning import (
    ConditionEncoder,
    CrossAttention,
    TextTokens,
    check_decoder,
    condition_dims,
    decode,
    decoder_of,
    score_answers,
    text_tokens,
)
from modaloom.objectives.losses import zero_loss_like
from modaloom.objectives.masking import mask_tokens_for_mlm

__all__ = ["MGC", "MGCSpec", "make_mgc"]


class MGCSpec(ObjectiveSpec):
    """VALOR's masked generation over modality groups (SPEC §B6)."""

    type: Literal["mgc"] = "mgc"
    decoder: str = "decoder"
    """The multimodal decoder component (a ``bert_decoder``)."""
    groups: list[Group] = Field(default_factory=default_groups, min_length=1)
    """Modality groups, e.g. ``[[text, vision], [text, audio], [text, [vision, audio]]]``; the
    first element is the text component (its field carries the caption)."""
    mask_prob: float = Field(0.6, gt=0.0, le=1.0)
    """Probability of masking each caption token (VALOR: 0.6)."""
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    """Label-smoothing epsilon of the masked-token loss."""
    qa: bool = False
    """QA variant: mask only the answer span, prefix-bidirectional attention."""
    cross_attention: CrossAttention = "concat"
    """How the decoder attends to a group of several modalities (VALOR's Tab. 11): one
    attention over their concatenated sequences (``concat``, VALOR's), or each layer's
    cross-attention applied to one modality after the other in the group's order
    (``sequential``: ``[text, [vision, audio]]`` is v-a, ``[text, [audio, vision]]`` a-v) or to
    each from the same input with the outputs averaged (``parallel``); the same weights serve
    every modality [I]. Generation follows it."""
    qa_field: str = "qa"
    """Batch key of ``{"answer_start": (B,) long}`` for the QA variant; ``text`` reads the text
    batch's own ``answer_start``, which the text processor fills for ``{question, answer}``
    values (the digits-av ``part: qa`` source)."""

    def references(self) -> list[Reference]:
        """``decoder`` names a decoder component, ``groups`` components."""
        return [
            Reference("decoder", self.decoder, "decoder"),
            *group_list_references("groups", self.groups),
        ]

    @model_validator(mode="after")
    def _distinct_groups(self) -> MGCSpec:
        names = [group_name(g) for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"groups must be distinct, got {names}")
        return self


class MGC(Objective):
    """VALOR's MGC. Returns ``{"mgc_loss"}`` plus each present group's loss as a metric.

    Args:
        config: the spec.
        condition: per-modality linear maps to the decoder width.
        tokens: special ids ([MASK], [SEP], ...).
    """

    def __init__(self, config: MGCSpec, condition: ConditionEncoder, tokens: TextTokens) -> None:
        super().__init__()
        self.config = config
        self.condition = condition
        self.tokens = tokens

    @property
    def answers_questions(self) -> bool:
        """Whether this is the QA variant (``qa: true``)."""
        return self.config.qa

    @property
    def default_condition(self) -> list[str]:
        """The components generation conditions on by default: the last group's."""
        return group_members(self.config.groups[-1])

    def answer_start(self, features: FeatureCache, rows: Tensor) -> Tensor:
        """(b,) first answer position of the selected samples (QA variant)."""
        qa = features.batch.get(self.config.qa_field)
        if qa is None or "answer_start" not in qa:
            raise KeyError(
                f"mgc with qa: true reads batch[{self.config.qa_field!r}]['answer_start'] (B,); "
                "the batch has none"
            )
        return torch.as_tensor(qa["answer_start"]).to(rows.device)[rows]

    def group_loss(self, features: FeatureCache, group: Group, rows: Tensor) -> Tensor | None:
        """The masked-token loss of one group on its samples; ``None`` if nothing is masked."""
        cfg, tokens = self.config, self.tokens
        decoder = decoder_of(features, cfg.decoder)
        text = features.batch[features.model.input_field(group[0], features.batch)]
        ids, mask = text["input_ids"][rows], text["attention_mask"][rows]
        maskable, prefix = mask, None
        if cfg.qa:
            prefix = self.answer_start(features, rows)
            positions = torch.arange(ids.shape[1], device=ids.device)
            maskable = mask * (positions[None, :] >= prefix[:, None])
        masked, labels = mask_tokens_for_mlm(
            ids,
            maskable,
            tokens.mask,
            tokens.vocab_size,
            cfg.mask_prob,
            tokens.special,
            maskable_special_ids=(tokens.sep,),
        )
        chosen = labels != -100
        if not bool(chosen.any()):
            return None
        members = group_members(group)
        condition, condition_mask = self.condition(features, members, rows)
        layout = self.condition.layout(features, members, cfg.cross_attention)
        mode: Literal["prefix", "causal"] = "prefix" if cfg.qa else "causal"
        hidden = decoder.hidden_states(
            masked, mask, condition, condition_mask, mode, prefix, layout
        )
        logits = decoder.lm_logits(hidden[chosen])
        return F.cross_entropy(logits, labels[chosen], label_smoothing=cfg.label_smoothing)

    def forward(self, features: FeatureCache) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        losses = []
        for group in self.config.groups:
            rows = present_rows(features, [group[0], *group_members(group)])
            if self.config.qa and rows.numel():
                rows = rows[self.answer_start(features, rows) >= 0]  # plain captions: no answer
            if rows.numel() == 0:
                continue
            loss = self.group_loss(features, group, rows)
            if loss is not None:
                losses.append(loss)
                out[group_name(group)] = loss.detach()
        if losses:
            out["mgc_loss"] = torch.stack(losses).mean()
        else:
            out["mgc_loss"] = zero_loss_like(*self.parameters())
        return out

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
        """Caption samples VALOR's way: feed ``[CLS] w_1..w_t [MASK]``, read the [MASK] (causal).

        Arguments and result as `modaloom.objectives.lm.LanguageModeling.generate` (ids without
        [CLS]); ``condition`` defaults to the last group's components, e.g.
        ``["vision", "audio"]``.
        """
        start = torch.full((1, 1), self.tokens.cls, dtype=torch.long)
        options = SearchOptions(num_beams, max_length, min_length, length_penalty)
        ones, mask = torch.ones_like(start), self.tokens.mask
        return decode(self, features, condition, rows, start, ones, mask, "causal", options)

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
        """Greedy open-vocabulary answers (VALOR QA): ``[CLS] question [SEP] a_1..a_t [MASK]``,
        attention bidirectional over the question and causal over the answer.

        Arguments and result as `modaloom.objectives.lm.LanguageModeling.answer`.
        """
        options = SearchOptions(max_length=max_length)
        return decode(
            self,
            features,
            condition,
            rows,
            questions,
            question_mask,
            self.tokens.mask,
            "prefix",
            options,
        )

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
        """(Q, C) log-likelihood of each candidate answer, each token read at a [MASK] after
        ``[CLS] question [SEP] a_<t`` as `answer` decodes
        (`modaloom.core.answer_scoring.AnswerScorer`)."""
        prefix, scored = (questions, question_mask), (answers, answer_mask)
        mask = self.tokens.mask
        return score_answers(self, features, condition, rows, prefix, scored, mask, "prefix")


def make_mgc(config: MGCSpec, ctx: BuildContext) -> MGC:
    """Registry factory of ``mgc``."""
    where = "model.objectives.mgc"
    decoder = check_decoder(ctx, config.decoder, where)
    for group in config.groups:
        ctx.component(group[0])
    names = [name for group in config.groups for name in group_members(group)]
    condition = ConditionEncoder(condition_dims(ctx, names), decoder.condition_dim, True)
    return MGC(config, condition, text_tokens(ctx, where))


@hookimpl
def modaloom_register_objectives(registry: Registry) -> None:
    """Register ``mgc``."""
    registry.add_objective(
        make_mgc,
        MGCSpec,
        description="VALOR masked generation over modality groups (causal MLM, 60% masking)",
    )
