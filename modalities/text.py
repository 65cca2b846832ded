"""Text modality: the text processor (its tokenizers are in `modaloom.modalities.text_tokenizer`)
and the BERT encoder."""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator
from torch import Tensor
from transformers import BertConfig, PreTrainedTokenizerFast

from modaloom.core.compose import BuildContext
from modaloom.core.errors import MediaDecodeError, SpecError
from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import (
    DataContext,
    Encoder,
    EncoderOutput,
    Processor,
)
from modaloom.core.registry import Registry
from modaloom.core.spec_models import Spec
from modaloom.modalities.hf import (
    HFEncoderSpec,
    Pooling,
    component_path,
    load_hf_model,
    pool_tokens,
    save_hf_config,
    save_hf_model,
)
from modaloom.modalities.hf_checkpoint import TOKENIZER_FILES, checkpoint_location_problem
from modaloom.modalities.text_tokenizer import (
    SPECIAL_TOKENS,
    checkpoint_tokenizer,
    load_tokenizer,
    train_wordpiece,
)

if TYPE_CHECKING:
    from transformers import BertModel

BERT_UNUSED = (r"(bert\.)?pooler\.", r"cls\.")
"""Checkpoint tensors a ``bert`` encoder leaves out: the pooler and the pre-training heads
(a `BertForPreTraining` checkpoint such as bert-base-uncased)."""

TOKENIZER_DIRNAME = "tokenizer"


class TextSpec(Spec):
    """Text processing (``data.text``)."""

    tokenizer: str | None = None
    """Directory of a Hugging Face tokenizer; when omitted, the tokenizer of a pretrained text
    component's checkpoint, else a WordPiece vocabulary trained from the captions."""
    vocab_size: int = Field(8000, ge=len(SPECIAL_TOKENS) + 1)
    """Vocabulary size when training a tokenizer from the captions."""
    max_texts: int | None = Field(200_000, gt=0)
    """Captions read to train a tokenizer (``null`` reads all)."""
    max_length: int = Field(30, ge=4)
    """Tokens per text, [CLS] and [SEP] included; longer texts are truncated."""
    lowercase: bool = True
    """Lowercase before WordPiece (a trained tokenizer only)."""

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer_is_here(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A local path must exist; a name must be in the Hugging Face cache (unless the run
        being rebuilt kept the tokenizer: `modaloom.core.portable`)."""
        problem = (
            None if value is None else checkpoint_location_problem(value, TOKENIZER_FILES, info)
        )
        if problem is not None:
            raise ValueError(problem)
        return value


class TextProcessor(Processor):
    """Tokenizes captions and QA pairs.

    A value is a caption (str), a QA pair ``{"question": q, "answer": a}`` (VALOR's generative
    QA: the pair encoding ``[CLS] q [SEP] a [SEP]`` plus ``answer_start``, the index of the
    answer's first token), or a list of either, from which training picks one at random and
    evaluation the first. Collated batches carry ``answer_start`` (B,), -1 for captions.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_id = int(tokenizer.pad_token_id)
        self.vocab_size = len(tokenizer)

    def token_id(self, token: str) -> int:
        """Id of a special token such as ``[MASK]``, ``[ENC]`` or ``[DEC]``."""
        return int(self.tokenizer.convert_tokens_to_ids(token))  # type: ignore[arg-type]

    def encode_words(self, text: str) -> list[int]:
        """Ids of ``text`` without special tokens (a prompt, a question)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def process(
        self, value: Any, *, key: str, train: bool, rng: random.Random
    ) -> dict[str, Tensor]:
        if isinstance(value, list | tuple):
            if not value:
                raise MediaDecodeError(key, "empty list of captions")
            value = rng.choice(list(value)) if train else value[0]
        if isinstance(value, dict):
            return self.encode_pair(value, key)
        if not isinstance(value, str):
            raise MediaDecodeError(key, f"text must be a string, got {type(value).__name__}")
        ids = self.tokenizer(value, truncation=True, max_length=self.max_length)["input_ids"]
        return {"input_ids": torch.tensor(ids, dtype=torch.long)}

    def encode_pair(self, pair: dict[str, Any], key: str) -> dict[str, Tensor]:
        """``[CLS] question [SEP] answer [SEP]`` within ``max_length``, the question cut first.

        Returns:
            ``{"input_ids": (L,), "answer_start": ()}``.

        Raises:
            MediaDecodeError: the pair lacks a string ``question`` or ``answer``.
        """
        question, answer = pair.get("question"), pair.get("answer")
        if not isinstance(question, str) or not isinstance(answer, str):
            raise MediaDecodeError(key, "a QA pair needs string 'question' and 'answer' fields")
        budget = self.max_length - 3
        encode = self.tokenizer
        answer_ids = encode(answer, add_special_tokens=False)["input_ids"][:budget]
        question_ids = encode(question, add_special_tokens=False)["input_ids"]
        question_ids = question_ids[: budget - len(answer_ids)]
        cls, sep = self.token_id("[CLS]"), self.token_id("[SEP]")
        ids = [cls, *question_ids, sep, *answer_ids, sep]
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "answer_start": torch.tensor(len(question_ids) + 2),
        }

    def collate(self, items: list[dict[str, Tensor] | None]) -> dict[str, Tensor]:
        length = max(len(item["input_ids"]) for item in items if item is not None)
        ids = torch.full((len(items), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), length), dtype=torch.long)
        for row, item in enumerate(items):
            if item is not None:
                n = len(item["input_ids"])
                ids[row, :n], mask[row, :n] = item["input_ids"], 1
        present = torch.tensor([item is not None for item in items])
        starts = [-1 if item is None else int(item.get("answer_start", -1)) for item in items]
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "present": present,
            "answer_start": torch.tensor(starts, dtype=torch.long),
        }

    def decode(self, ids: Tensor) -> list[str]:
        """Token ids (B, L) back to strings, special tokens dropped."""
        return list(self.tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True))

    def save(self, directory: Path) -> None:
        self.tokenizer.save_pretrained(str(directory / TOKENIZER_DIRNAME))

    def export(self, directory: Path) -> list[str]:
        """The tokenizer's files, beside the model (``AutoTokenizer`` loads them)."""
        return [Path(name).name for name in self.tokenizer.save_pretrained(str(directory))]


def make_text_processor(config: TextSpec, ctx: DataContext) -> TextProcessor:
    """Reuse the tokenizer the run saved (so a run never reads ``data.text.tokenizer`` again),
    else load the configured tokenizer, the one of a pretrained text component's checkpoint,
    or train one from the captions."""
    saved = ctx.artifact_dir / TOKENIZER_DIRNAME if ctx.artifact_dir is not None else None
    checkpoint = ctx.pretrained.get("text")
    if saved is not None and (saved / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(saved)  # the run's own, even where data.text.tokenizer is set
    elif config.tokenizer is not None:
        tokenizer = load_tokenizer(config.tokenizer)
    elif checkpoint is not None:
        tokenizer = checkpoint_tokenizer(checkpoint)
    else:
        texts = ctx.texts()
        if config.max_texts is not None:
            texts = (text for index, text in enumerate(texts) if index < config.max_texts)
        tokenizer = train_wordpiece(texts, config.vocab_size, config.lowercase)
    return TextProcessor(tokenizer, config.max_length)


# ------------------------------------------------------------------------------ encoder


class BertEncoderSpec(HFEncoderSpec):
    """A BERT text encoder: `transformers`' `BertModel` and `BertConfig` (``model.components.*``).

    A random init takes its vocabulary size from the tokenizer. A checkpoint needs its own
    tokenizer (loaded from its directory when ``data.text.tokenizer`` is unset); special tokens
    the tokenizer adds ([ENC], [DEC]) get new rows of token embeddings.
    """

    type: Literal["bert"] = "bert"
    hf_config = BertConfig
    pooling: Pooling = "cls"
    """Global feature: the [CLS] token or the mean of valid tokens."""


class BertTextEncoder(Encoder):
    """BERT over ``{"input_ids": (B, L), "attention_mask": (B, L)}``.

    Returns an `EncoderOutput` with sequence (B, L, D), pooled (B, D) and mask (B, L).
    """

    modality = "text"

    def __init__(self, bert: BertModel, pooling: str = "cls") -> None:
        super().__init__()
        self.bert = bert
        self.pooling = pooling
        self.output_dim = int(bert.config.hidden_size)

    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        mask = inputs["attention_mask"]
        sequence = self.bert(input_ids=inputs["input_ids"], attention_mask=mask).last_hidden_state
        return EncoderOutput(sequence, pool_tokens(sequence, self.pooling, skip=0, mask=mask), mask)

    export_class = "BertModel"

    def save_config(self, directory: Path) -> None:
        save_hf_config(self.bert, directory)

    def export_pretrained(self, directory: Path) -> None:
        """The `BertModel` (without the pooler it does not use)."""
        save_hf_model(self.bert, directory)


def text_vocab_size(ctx: BuildContext) -> int | None:
    """Vocabulary size of the data's text processor, if there is one."""
    processor = ctx.processors.get("text")
    return processor.vocab_size if isinstance(processor, TextProcessor) else None


def refuse_another_vocabulary(config: HFEncoderSpec, ctx: BuildContext, embeddings: int) -> None:
    """Refuse a tokenizer whose ids do not index a pretrained checkpoint's word embeddings.

    The tokenizer fits when it has as many tokens as the checkpoint has word embeddings, or when
    its base vocabulary has and the rest are added special tokens ([ENC], [DEC], as BLIP adds
    to bert-base-uncased's), whose rows the caller appends (``resize_token_embeddings``).

    Args:
        config: a text component's spec with ``pretrained``.
        ctx: the build context (the data's text processor, if any).
        embeddings: the checkpoint's number of word embeddings (``config.vocab_size``).

    Raises:
        SpecError: at ``model.components.<name>.pretrained``, with both sizes.
    """
    processor = ctx.processors.get("text")
    if not isinstance(processor, TextProcessor):
        return
    tokens, base = len(processor.tokenizer), int(processor.tokenizer.vocab_size)
    if embeddings in (tokens, base):
        return
    problem = (
        f"checkpoint {config.pretrained!r} has {embeddings} word embeddings but the tokenizer has "
        f"{tokens} tokens; a pretrained text component needs its checkpoint's tokenizer: leave "
        "data.text.tokenizer unset to load it from the checkpoint, or set it to that tokenizer"
    )
    raise SpecError([(f"{component_path(config, ctx)}.pretrained", problem)])


def load_bert(config: BertEncoderSpec, ctx: BuildContext) -> BertModel:
    """A `BertModel` from ``pretrained`` or from a config sized to the tokenizer (a checkpoint
    must fit the tokenizer: `refuse_another_vocabulary`)."""
    from transformers import BertModel  # lazily: only a spec that uses it loads it

    vocab = text_vocab_size(ctx)
    bert = load_hf_model(
        BertModel,
        BertConfig,
        config,
        ctx,
        defaults={"vocab_size": vocab or 30522},
        model_kwargs={"add_pooling_layer": False},
        unused=BERT_UNUSED,
    )
    if config.pretrained is not None:
        refuse_another_vocabulary(config, ctx, bert.config.vocab_size)
        if vocab is not None and vocab > bert.config.vocab_size:
            bert.resize_token_embeddings(vocab)
    return bert


def make_bert_encoder(config: BertEncoderSpec, ctx: BuildContext) -> BertTextEncoder:
    """Registry factory of the ``bert`` encoder."""
    return BertTextEncoder(load_bert(config, ctx), config.pooling)


@hookimpl
def modaloom_register_modalities(registry: Registry) -> None:
    """Register the text modality and the BERT encoder."""
    registry.add_modality(
        "text",
        make_text_processor,
        TextSpec,
        description="WordPiece tokenization (loaded or trained from captions)",
    )
    registry.add_encoder(
        make_bert_encoder,
        BertEncoderSpec,
        description="BERT text encoder (transformers)",
        modality="text",
    )
