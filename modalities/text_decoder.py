"""BERT decoder with cross-attention that shares parameters with a BERT text encoder.

VALOR (SPEC §A2) inserts a randomly initialised cross-attention into every block of the text
encoder's BERT and shares everything else (``sharing: all_but_cross_attention``). OmniVL/BLIP
(SPEC §A1) shares everything except self-attention between the alignment decoder and the
generation decoder (``sharing: all_but_self_attention``). Sharing is done by assigning the very
same submodules of the target's `BertModel` into this decoder, so ``model.parameters()`` yields
each shared tensor once and both components train the same weights.

What each ``sharing`` takes from the ``share_with`` target (a ``bert`` encoder or another
``bert_decoder``):

* ``all_but_cross_attention``: embeddings, and per layer self-attention and feed-forward.
* ``all_but_self_attention``: embeddings, per layer feed-forward and, when the target has them
  (a ``bert_decoder``), cross-attention and the condition adapter.
* ``none``: nothing (``share_with`` must then be left out).

A ``bert_decoder`` target also lends its LM head (except with ``none``).

OmniVL's three text modules as a composition::

    text:  {type: bert}                               # unimodal text encoder, [CLS]
    align: {type: bert_decoder, share_with: text, sharing: all_but_cross_attention}
    gen:   {type: bert_decoder, share_with: align, sharing: all_but_self_attention}

``align`` run with ``mode="bidirectional"``, the [ENC] id as first token and the visual tokens
as ``condition`` is the alignment decoder (ITM on ``hidden[:, 0]``); with ``condition=None`` it
computes exactly what ``text`` computes (`BertTextDecoder.encode_text`), i.e. BLIP's text encoder
with its cross-attention switched off. ``gen`` with ``mode="causal"`` and [DEC] first is the
generation decoder: its own self-attention, everything else shared with ``align``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from transformers import BertConfig

from modaloom.core.compose import BuildContext
from modaloom.core.errors import ExportError, SpecError
from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import ConditionLayout, DecoderMode, DecoderOutput, EncoderOutput
from modaloom.core.registry import Registry
from modaloom.modalities.cross_attention import layered, split_condition
from modaloom.modalities.hf import (
    HFEncoderSpec,
    component_path,
    load_hf_model,
    save_hf_config,
    save_hf_model,
)
from modaloom.modalities.hf_checkpoint import quiet_transformers
from modaloom.modalities.text import refuse_another_vocabulary, text_vocab_size

if TYPE_CHECKING:
    from transformers import BertLMHeadModel, BertModel
    from transformers.models.bert.modeling_bert import BertOnlyMLMHead

__all__ = [
    "BertDecoderSpec",
    "BertTextDecoder",
    "DecoderOutput",
    "bidirectional_mask",
    "causal_mask",
    "prefix_causal_mask",
    "self_attention_mask",
    "tie_decoder",
    "to_additive_mask",
]


Sharing = Literal["all_but_cross_attention", "all_but_self_attention", "none"]


def causal_mask(length: int, device: torch.device | str | None = None) -> Tensor:
    """(L, L) bool: query i may attend to keys j <= i (True = allowed, as SDPA takes it)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def prefix_causal_mask(prefix_lengths: Tensor, length: int) -> Tensor:
    """Prefix-bidirectional, then causal (VALOR QA, SPEC B6).

    Query i attends to key j when ``j <= i`` or both lie in the prefix: the question tokens see
    each other, the answer tokens see the question and the answer so far.

    Args:
        prefix_lengths: (B,) number of prefix (question) tokens per row.
        length: L.

    Returns:
        (B, L, L) bool.
    """
    positions = torch.arange(length, device=prefix_lengths.device)
    in_prefix = positions[None, :] < prefix_lengths[:, None]  # (B, L)
    both_in_prefix = in_prefix[:, :, None] & in_prefix[:, None, :]
    return causal_mask(length, prefix_lengths.device)[None] | both_in_prefix


def bidirectional_mask(key_mask: Tensor) -> Tensor:
    """(B, L, L) bool from a (B, L) 0/1 key-padding mask: every query sees every real key.

    Combine with the others by ``&``: ``causal_mask(L) & bidirectional_mask(attention_mask)``.
    """
    keys = key_mask.bool()[:, None, :]
    return keys.expand(key_mask.shape[0], key_mask.shape[1], key_mask.shape[1])


def to_additive_mask(allowed: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Boolean allowed-attention mask -> additive float mask (0 allowed, dtype min elsewhere)."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def self_attention_mask(
    attention_mask: Tensor, mode: DecoderMode, prefix_lengths: Tensor | None = None
) -> Tensor:
    """Which keys each query may attend to, padding included.

    Args:
        attention_mask: (B, L) 1 for real tokens, 0 for padding.
        mode: ``causal`` (j <= i), ``bidirectional`` (all real keys) or ``prefix`` (the first
            ``prefix_lengths`` tokens see each other, the rest is causal: VALOR QA).
        prefix_lengths: (B,) prefix sizes, required by ``prefix``.

    Returns:
        (B, L, L) bool, True = allowed.
    """
    keys = bidirectional_mask(attention_mask)
    length = attention_mask.shape[1]
    if mode == "bidirectional":
        return keys
    if mode == "causal":
        return keys & causal_mask(length, attention_mask.device)[None]
    if mode == "prefix":
        if prefix_lengths is None:
            raise ValueError("mode='prefix' needs prefix_lengths (B,)")
        return keys & prefix_causal_mask(prefix_lengths.to(attention_mask.device), length)
    raise ValueError(f"mode must be 'causal', 'bidirectional' or 'prefix', got {mode!r}")


def _attention_bias(allowed: Tensor, dtype: torch.dtype, implementation: str) -> Tensor:
    """(B, Lq, Lk) bool -> the (B, 1, Lq, Lk) mask BERT's attention takes, as is.

    Rows with no allowed key (a query over an absent sample) may attend everywhere, so SDPA
    never sees an all-masked row (NaN); those rows are padding and their outputs are unused.
    SDPA gets a boolean mask (True = attend); other implementations an additive float mask.
    """
    allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
    allowed = allowed[:, None]
    return allowed if implementation == "sdpa" else to_additive_mask(allowed, dtype)


class BertTextDecoder(nn.Module):
    """BERT with cross-attention in every layer and an LM head tied to its word embeddings.

    Args:
        bert: a `BertModel` built with ``is_decoder=True, add_cross_attention=True``.
        head: the LM head.
        condition_dim: width of the condition; a linear adapter maps it to the hidden size when
            it differs (``None`` = the hidden size).

    Attributes:
        output_dim: D.
        vocab_size: V.
        condition_dim: the condition width it accepts.
    """

    def __init__(
        self, bert: BertModel, head: BertOnlyMLMHead, condition_dim: int | None = None
    ) -> None:
        super().__init__()
        self.bert = bert
        self.head = head
        self.output_dim = int(bert.config.hidden_size)
        self.vocab_size = int(bert.config.vocab_size)
        self.condition_dim = condition_dim or self.output_dim
        self.condition_proj: nn.Module = (
            nn.Identity()
            if self.condition_dim == self.output_dim
            else nn.Linear(self.condition_dim, self.output_dim)
        )
        self.tie_lm_head()

    def tie_lm_head(self) -> None:
        """Point the LM head's output matrix at the (possibly shared) word embeddings."""
        self.head.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def hidden_states(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        condition: Tensor | None = None,
        condition_mask: Tensor | None = None,
        mode: DecoderMode = "causal",
        prefix_lengths: Tensor | None = None,
        layout: ConditionLayout | None = None,
    ) -> Tensor:
        """The last hidden states, without the LM head (arguments as in `forward`): (B, L, D).

        ``layout`` (several modalities in ``condition``): every layer's cross-attention attends
        to them one at a time, ``sequential`` or ``parallel`` (`modaloom.modalities.
        cross_attention`); ``None``: one attention over the whole condition (VALOR's concat).
        """
        dtype = self.bert.embeddings.word_embeddings.weight.dtype
        implementation = self.bert.config._attn_implementation
        allowed = self_attention_mask(attention_mask, mode, prefix_lengths)
        self_bias = _attention_bias(allowed, dtype, implementation)
        states, cross_bias = None, None
        if condition is not None:
            states = self.condition_proj(condition.to(dtype))
            if condition_mask is not None:
                keys = condition_mask.bool()[:, None, :].expand(-1, input_ids.shape[1], -1)
                cross_bias = _attention_bias(keys, dtype, implementation)
        others: list[tuple[Tensor, Tensor | None]] = []
        if states is not None and layout is not None and len(layout.segments) > 1:
            (states, cross_bias), *others = split_condition(states, cross_bias, layout.segments)
        modules = [layer.crossattention for layer in self.bert.encoder.layer] if others else []
        with layered(modules, others, layout.combine if layout is not None else "sequential"):
            output = self.bert(
                input_ids=input_ids,
                attention_mask=self_bias,
                encoder_hidden_states=states,
                encoder_attention_mask=cross_bias,
                use_cache=False,
            )
        return output.last_hidden_state  # type: ignore[no-any-return]

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        condition: Tensor | None = None,
        condition_mask: Tensor | None = None,
        mode: DecoderMode = "causal",
        prefix_lengths: Tensor | None = None,
    ) -> DecoderOutput:
        """Decode text, attending to a condition sequence.

        Args:
            input_ids: (B, L) token ids ([CLS]/[DEC]/[ENC] first, by the caller's choice).
            attention_mask: (B, L) 1 for real tokens, 0 for padding.
            condition: (B, N, D_c) tokens to cross-attend to (visual, audio, or both
                concatenated); ``None`` skips cross-attention (the unimodal text path).
            condition_mask: (B, N) 1 for valid condition tokens; ``None`` = all valid.
            mode: self-attention pattern: ``causal``, ``bidirectional`` or ``prefix``.
            prefix_lengths: (B,) bidirectional prefix sizes for ``mode="prefix"``.

        Returns:
            `DecoderOutput` with hidden (B, L, D) and logits (B, L, V).
        """
        hidden = self.hidden_states(
            input_ids, attention_mask, condition, condition_mask, mode, prefix_lengths
        )
        return DecoderOutput(hidden, self.lm_logits(hidden))

    def lm_logits(self, hidden: Tensor) -> Tensor:
        """LM head on any (..., D) hidden states -> (..., V) (e.g. only masked positions)."""
        return self.head(hidden)  # type: ignore[no-any-return]

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> EncoderOutput:
        """The unimodal text path: bidirectional, no cross-attention; pooled = first token."""
        hidden = self.hidden_states(input_ids, attention_mask, mode="bidirectional")
        return EncoderOutput(hidden, hidden[:, 0], attention_mask)

    export_class = "BertLMHeadModel"

    def save_config(self, directory: Path) -> None:
        """Its `BertConfig` (a decoder's, with cross-attention), without weights."""
        save_hf_config(self.bert, directory)

    def export_pretrained(self, directory: Path) -> None:
        """As a `BertLMHeadModel` with cross-attention: its BERT (shared modules included) and
        LM head.

        Raises:
            ExportError: it has a condition adapter (``condition_dim`` differs from the hidden
                size), which a `BertLMHeadModel` has no place for.
        """
        if not isinstance(self.condition_proj, nn.Identity):
            raise ExportError(
                f"its condition adapter ({self.condition_dim} -> {self.output_dim}) has no place "
                "in a BertLMHeadModel"
            )
        from transformers import BertLMHeadModel  # lazily, as in load_bert_lm

        with quiet_transformers():
            lm = BertLMHeadModel(self.bert.config)
        lm.bert, lm.cls = self.bert, self.head
        save_hf_model(lm, directory)


# ------------------------------------------------------------------------------ sharing


def _target_bert(target: nn.Module) -> BertModel:
    from transformers import BertModel  # lazily, as in load_bert_lm

    bert = getattr(target, "bert", None)
    if not isinstance(bert, BertModel):
        raise TypeError(f"{type(target).__name__} holds no BertModel to share with")
    return bert


def tie_decoder(decoder: BertTextDecoder, target: nn.Module, sharing: Sharing) -> None:
    """Make ``decoder`` use ``target``'s modules, per ``sharing`` (see the module docstring).

    Args:
        decoder: the decoder; its replaced modules are dropped.
        target: a ``bert`` encoder (`BertTextEncoder`) or another `BertTextDecoder`.
        sharing: what to share.

    Raises:
        ValueError: the two BERTs differ in width, depth or vocabulary.
    """
    if sharing == "none":
        return
    source = _target_bert(target)
    mine, theirs = decoder.bert.config, source.config
    for field in ("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size"):
        if getattr(mine, field) != getattr(theirs, field):
            raise ValueError(
                f"cannot share parameters: {field} is {getattr(mine, field)} in the decoder and "
                f"{getattr(theirs, field)} in the component it shares with; leave the decoder's "
                "config empty to copy the shared BERT's"
            )
    decoder.bert.embeddings = source.embeddings
    names = ["intermediate", "output"]
    names.append("attention" if sharing == "all_but_cross_attention" else "crossattention")
    for own, other in zip(decoder.bert.encoder.layer, source.encoder.layer, strict=True):
        for name in names:
            if hasattr(other, name):
                setattr(own, name, getattr(other, name))
    if isinstance(target, BertTextDecoder):
        decoder.head = target.head
        if sharing == "all_but_self_attention":
            if target.condition_dim != decoder.condition_dim:
                raise ValueError(
                    f"cannot share cross-attention: condition_dim is {decoder.condition_dim} "
                    f"here and {target.condition_dim} in the component it shares with"
                )
            decoder.condition_proj = target.condition_proj
    decoder.tie_lm_head()


# ------------------------------------------------------------------------------ registration


class BertDecoderSpec(HFEncoderSpec):
    """A BERT decoder with cross-attention and an LM head (``model.components.<name>``).

    ``pretrained`` and ``config`` refer to `transformers`' `BertLMHeadModel` and `BertConfig`
    (a BERT checkpoint with its MLM head works too, such as bert-base-uncased's
    `BertForPreTraining`; the cross-attention it lacks is randomly initialised, a checkpoint
    without the head is refused). With ``share_with`` and no ``pretrained``, the shared BERT's
    config is copied and ``config`` overrides it; otherwise a random init takes its vocabulary
    size from the tokenizer.
    """

    type: Literal["bert_decoder"] = "bert_decoder"
    hf_config = BertConfig
    sharing: Sharing = "all_but_cross_attention"
    """What is shared with ``share_with``: VALOR shares all but cross-attention, OmniVL/BLIP
    all but self-attention (see `modaloom.modalities.text_decoder`)."""
    condition_dim: int | None = Field(None, gt=0)
    """Width of the condition sequence; a linear adapter maps it to the hidden size when it
    differs (default: the hidden size)."""

    @model_validator(mode="after")
    def _sharing_needs_target(self) -> BertDecoderSpec:
        if self.sharing == "none" and self.share_with is not None:
            raise ValueError(
                "sharing: none shares nothing, so share_with has no effect; remove share_with "
                "or choose all_but_cross_attention / all_but_self_attention"
            )
        return self


DECODER_FIELDS: dict[str, Any] = {"is_decoder": True, "add_cross_attention": True}
"""`BertConfig` fields every decoder has, over the spec's ``config``."""


def _shared_config(target: nn.Module) -> Callable[..., BertConfig]:
    """A config factory for `load_hf_model`: a copy of ``target``'s BERT config, fields set."""

    def make(attn_implementation: str, **fields: Any) -> BertConfig:
        bert_config = copy.deepcopy(_target_bert(target).config)
        for key, value in fields.items():
            setattr(bert_config, key, value)
        bert_config._attn_implementation = attn_implementation
        return bert_config

    return make


def load_bert_lm(
    config: BertDecoderSpec, ctx: BuildContext, target: nn.Module | None
) -> BertLMHeadModel:
    """A `BertLMHeadModel` with cross-attention, from ``pretrained`` or a config: the shared
    BERT's (copied) or one sized to the tokenizer. Gradient checkpointing is not enabled here
    (`make_bert_decoder` enables it once the modules are shared)."""
    from transformers import BertLMHeadModel  # lazily: only a spec that uses it loads it

    vocab = text_vocab_size(ctx)
    config_class: Callable[..., BertConfig] = BertConfig
    defaults: dict[str, Any] = {"vocab_size": vocab or 30522}
    if target is not None and config.sharing != "none":
        config_class, defaults = _shared_config(target), {}
    lm = load_hf_model(
        BertLMHeadModel,
        config_class,
        config,
        ctx,
        defaults=defaults,
        fixed=DECODER_FIELDS,
        gradient_checkpointing=False,
        unused=(r"bert\.pooler\.", r"cls\.seq_relationship\."),
        uninitialised=(r"\.crossattention\.",),
    )
    if config.pretrained is not None:
        refuse_another_vocabulary(config, ctx, lm.config.vocab_size)
    resize = config.pretrained is not None and target is None
    if resize and vocab is not None and vocab > lm.config.vocab_size:
        lm.resize_token_embeddings(vocab)
    return lm


def make_bert_decoder(config: BertDecoderSpec, ctx: BuildContext) -> BertTextDecoder:
    """Registry factory of the ``bert_decoder`` decoder (``partial_sharing``: ties itself)."""
    target = None
    if config.share_with is not None:
        if config.share_with not in ctx.components:
            path = f"{component_path(config, ctx)}.share_with"
            problem = (
                f"component {config.share_with!r} is not built; built: {sorted(ctx.components)}"
            )
            raise SpecError([(path, problem)])
        target = ctx.components[config.share_with]
    lm = load_bert_lm(config, ctx, target)
    decoder = BertTextDecoder(lm.bert, lm.cls, config.condition_dim)
    if target is not None:
        try:
            tie_decoder(decoder, target, config.sharing)
        except (TypeError, ValueError) as exc:
            path = f"{component_path(config, ctx)}.share_with"
            raise SpecError([(path, str(exc))]) from None
    if config.gradient_checkpointing:
        decoder.bert.activation_checkpointing_enable()
    return decoder


@hookimpl
def modaloom_register_modalities(registry: Registry) -> None:
    """Register the ``bert_decoder`` decoder."""
    registry.add_decoder(
        make_bert_decoder,
        BertDecoderSpec,
        description="BERT with cross-attention and LM head; shares with a BERT encoder",
        modality="text",
        partial_sharing=True,
    )
