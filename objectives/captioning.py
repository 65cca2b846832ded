"""Captioning objectives: teacher-forced LM (OmniVL, SPEC §B5) and MGC (VALOR, SPEC §B6).

Both run a ``bert_decoder`` component (`BertTextDecoder`) with cross-attention to a condition:
the concatenated token sequences of one or more components, each mapped to the decoder's
``condition_dim`` by a per-modality linear layer (`ConditionEncoder`). Also here, because every
text-generating objective needs it: `TextTokens`, the special token ids read from the data's
text processor.

``lm``: [DEC] replaces [CLS] as BOS; causal self-attention; ``logits[:, t]`` predicts token
``t + 1``; padding, the BOS and the optional ``prompt`` are ignored (-100); label smoothing 0.1
as in BLIP. The prompt ("a picture of") is inserted by the objective after [DEC], so the data
stays prompt-free; evaluators read ``prompt_ids`` to decode with the same prefix.

``mgc``: per group, 60% of the caption tokens (never [CLS]/[PAD], [SEP] included, at least one
per caption) become [MASK]; causal self-attention; the LM head predicts the originals at the
masked positions only (``P(T_m | T_<m, F_x)``: a masked position sees itself as [MASK]). A group
drops the samples lacking one of its modalities, is left out when no sample has them all, and the
loss is the mean over the groups present. Masks are drawn independently per group [I].

QA variant (``qa: true``, VALOR): ``batch["text"]`` holds question and answer, the pair
encoding ``[CLS] question [SEP] answer [SEP]`` that the text processor makes of a
``{"question", "answer"}`` value, and ``batch[qa_field]["answer_start"]`` (B,) is the index of
the first answer token; with ``qa_field: text`` it is the text batch's own ``answer_start``
(-1 for a plain caption: such samples are left out of the QA loss). Only answer tokens (the
final [SEP] included) are masked, with probability ``mask_prob`` and at least one; attention
is bidirectional over the question prefix and causal over the answer (``mode="prefix"``).

Inference (`modaloom.core.generation`): ``generate`` captions with greedy or beam search,
building the condition with the same `ConditionEncoder` as training; LM rows are
``[DEC] prompt w_1..w_t`` (the last position is read), MGC rows ``[CLS] w_1..w_t [MASK]`` (the
[MASK] is read, causal mask). ``answer`` decodes an answer greedily after a question: MGC feeds
``[CLS] question [SEP] a_1..a_t [MASK]`` with the prefix mask (VALOR, no vocabulary
restriction), LM ``[DEC] prompt question [SEP] a_1..a_t`` (causal), which is what LM training on
QA pair encodings teaches. Both return generated ids only (see `generation.search`).
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
from modaloom.core.generation import SearchOptions, decoder_step, search
from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import Objective, TextCodec
from modaloom.core.registry import Registry
from modaloom.core.spec_models import ObjectiveSpec
from modaloom.objectives.conditioning import (
    ConditionEncoder,
    TextTokens,
    check_decoder,
    decoder_of,
    text_tokens,
)
from modaloom.objectives.functional import (
    label_smoothed_lm_loss,
    mask_tokens_for_mlm,
    zero_loss_like,
)

# ------------------------------------------------------------------------------ LM (B5)


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

    answers_questions = False
    """Not trained on QA pairs by construction (`answer` works once it is)."""

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


def _condition_dims(ctx: BuildContext, names: Sequence[str]) -> dict[str, int]:
    return {name: ctx.output_dim(name) for name in dict.fromkeys(names)}


def make_lm(config: LMSpec, ctx: BuildContext) -> LanguageModeling:
    """Registry factory of ``lm``."""
    where = "model.objectives.lm"
    decoder = check_decoder(ctx, config.decoder, where)
    names = [config.condition] if isinstance(config.condition, str) else config.condition
    condition = ConditionEncoder(_condition_dims(ctx, names), decoder.condition_dim, False)
    tokens = text_tokens(ctx, where)
    prompt_ids = torch.zeros(0, dtype=torch.long)
    if config.prompt:
        processor = ctx.processors["text"]
        assert isinstance(processor, TextCodec)
        encoded = processor.encode_words(config.prompt)
        prompt_ids = torch.tensor(encoded, dtype=torch.long)
    return LanguageModeling(config, condition, tokens, prompt_ids)


# ------------------------------------------------------------------------------ MGC (B6)


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
    qa_field: str = "qa"
    """Batch key of ``{"answer_start": (B,) long}`` for the QA variant; ``text`` reads the text
    batch's own ``answer_start``, which the text processor fills for ``{question, answer}``
    values (the digits-av ``part: qa`` source)."""

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
        condition, condition_mask = self.condition(features, group_members(group), rows)
        mode: Literal["prefix", "causal"] = "prefix" if cfg.qa else "causal"
        hidden = decoder.hidden_states(masked, mask, condition, condition_mask, mode, prefix)
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

        Arguments and result as `LanguageModeling.generate` (ids without [CLS]); ``condition``
        defaults to the last group's components, e.g. ``["vision", "audio"]``.
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

        Arguments and result as `LanguageModeling.answer`.
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


def make_mgc(config: MGCSpec, ctx: BuildContext) -> MGC:
    """Registry factory of ``mgc``."""
    where = "model.objectives.mgc"
    decoder = check_decoder(ctx, config.decoder, where)
    for group in config.groups:
        ctx.component(group[0])
    names = [name for group in config.groups for name in group_members(group)]
    condition = ConditionEncoder(_condition_dims(ctx, names), decoder.condition_dim, True)
    return MGC(config, condition, text_tokens(ctx, where))


# ------------------------------------------------------------------------------ generation


def decode(
    objective: LanguageModeling | MGC,
    features: FeatureCache,
    condition: str | Sequence[str] | None,
    rows: Tensor | None,
    prefix: Tensor,
    prefix_mask: Tensor,
    tail: int | None,
    mode: Literal["causal", "prefix"],
    options: SearchOptions,
) -> Tensor:
    """Search with ``objective``'s decoder after per-row prefixes, conditioned as in training.

    Args:
        objective: an ``lm`` or ``mgc`` objective (its condition encoder, decoder and tokens).
        features: the batch's feature cache.
        condition: components to condition on; ``None``: ``objective.default_condition``.
        rows: (n,) samples (default: all).
        prefix: (n, P) or (1, P) ids every row starts with, right-padded.
        prefix_mask: like ``prefix``, 1 for real tokens.
        tail: id appended after the generated tokens and read (MGC's [MASK]), or ``None``.
        mode: ``causal``, or ``prefix`` (bidirectional over the prefix).
        options: the search options.

    Returns:
        (n, T) generated ids (`modaloom.core.generation.search`).

    Raises:
        ValueError: ``condition`` names a component the objective has no adapter for.
    """
    names = objective.default_condition if condition is None else condition
    names = [names] if isinstance(names, str) else list(names)
    unknown = [name for name in names if name not in objective.condition.adapters]
    if unknown:
        known = list(objective.condition.adapters)
        raise ValueError(f"cannot condition on {unknown}: this objective knows {known}")
    sequence = features[names[0]].sequence
    device = sequence.device
    rows = torch.arange(sequence.shape[0], device=device) if rows is None else rows.to(device)
    cond, cond_mask = objective.condition(features, names, rows)
    prefix = prefix.to(device).expand(rows.shape[0], -1)
    lengths = prefix_mask.to(device).expand(rows.shape[0], -1).sum(dim=1)
    decoder = decoder_of(features, objective.config.decoder)
    tokens = objective.tokens
    step = decoder_step(
        decoder, prefix, lengths, cond, cond_mask, tail=tail, mode=mode, pad=tokens.pad
    )
    return search(step, rows.shape[0], tokens.search, options, device)




@hookimpl
def modaloom_register_objectives(registry: Registry) -> None:
    """Register ``lm`` and ``mgc``."""
    registry.add(
        "objective",
        "lm",
        make_lm,
        LMSpec,
        description="teacher-forced captioning LM with [DEC] BOS and label smoothing (OmniVL)",
    )
    registry.add(
        "objective",
        "mgc",
        make_mgc,
        MGCSpec,
        description="VALOR masked generation over modality groups (causal MLM, 60% masking)",
    )
